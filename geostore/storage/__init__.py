"""geostore.storage."""
