"""geostore.codec."""
