"""Benchmarks and (later) the load generator: `make bench`, `python -m bench`."""
