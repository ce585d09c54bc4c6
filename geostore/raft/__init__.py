"""geostore.raft."""
