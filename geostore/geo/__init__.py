"""geostore.geo."""
