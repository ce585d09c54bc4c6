"""geostore.runtime."""
