"""Thin asyncio adapters around the sans-I/O cores."""
