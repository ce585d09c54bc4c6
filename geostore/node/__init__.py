"""geostore.node."""
