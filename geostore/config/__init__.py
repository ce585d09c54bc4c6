"""geostore.config."""
