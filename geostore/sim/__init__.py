"""geostore.sim."""
