"""geostore benchmarks: scripts that print a human table and JSON through bench.results."""
