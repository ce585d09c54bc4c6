"""geostore.transport."""
