"""Plain-integer counters of the media port, read by the metrics collector at scrape time.

Nothing here takes a lock or allocates per packet once a reason has been seen: the hot path
increments dict entries keyed by short fixed strings (never by anything a peer chose).
"""

from __future__ import annotations

from collections import defaultdict


class DropCounters:
    """Datagrams received by kind and datagrams dropped by reason."""

    __slots__ = ("drops", "received")

    def __init__(self) -> None:
        self.received: defaultdict[str, int] = defaultdict(int)
        self.drops: defaultdict[str, int] = defaultdict(int)

    def drop(self, reason: str) -> None:
        """Count one dropped datagram; ``reason`` must come from a fixed set of strings."""
        self.drops[reason] += 1

    def total_drops(self) -> int:
        """All drops, whatever the reason."""
        return sum(self.drops.values())
