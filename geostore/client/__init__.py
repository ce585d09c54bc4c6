"""geostore.client."""
