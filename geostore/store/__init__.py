"""geostore.store."""
