"""Forwarding workers: a supervisor that owns the HTTP port and one process per core."""
