"""Plain-integer counters of the media port, read by the metrics collector at scrape time.

Nothing here takes a lock or allocates per packet once a key has been seen: the hot path
increments dict entries keyed by short fixed strings (never by anything a peer chose).
"""

from __future__ import annotations

from collections import defaultdict

from sfu.histogram import HANDSHAKE_BUCKETS_S, PlainHistogram


class DropCounters:
    """Datagrams and bytes in and out by kind, drops by reason, and handshake outcomes."""

    __slots__ = (
        "drops",
        "dtls_handshake",
        "handshake_failures",
        "ice_handshake",
        "received",
        "received_bytes",
        "sent",
        "sent_bytes",
    )

    def __init__(self) -> None:
        self.received: defaultdict[str, int] = defaultdict(int)
        self.received_bytes: defaultdict[str, int] = defaultdict(int)
        self.sent: defaultdict[str, int] = defaultdict(int)
        self.sent_bytes: defaultdict[str, int] = defaultdict(int)
        self.drops: defaultdict[str, int] = defaultdict(int)
        #: Seconds from the answer (transport created) to the first valid ICE check.
        self.ice_handshake = PlainHistogram(HANDSHAKE_BUCKETS_S)
        #: Seconds from the first valid ICE check to DTLS-SRTP keys.
        self.dtls_handshake = PlainHistogram(HANDSHAKE_BUCKETS_S)
        #: Transports that never connected, by (stage, reason) from a fixed set.
        self.handshake_failures: defaultdict[tuple[str, str], int] = defaultdict(int)

    def drop(self, reason: str) -> None:
        """Count one dropped datagram; ``reason`` must come from a fixed set of strings."""
        self.drops[reason] += 1

    def total_drops(self) -> int:
        """All drops, whatever the reason."""
        return sum(self.drops.values())
