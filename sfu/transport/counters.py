"""Plain-integer counters of the media port, read by the metrics collector at scrape time.

Nothing here takes a lock or allocates per packet once a key has been seen: the hot path
increments dict entries keyed by short fixed strings (never by anything a peer chose).
"""

from __future__ import annotations

from collections import defaultdict

from sfu.histogram import HANDSHAKE_BUCKETS_S, PlainHistogram

#: Candidate types of a transport's selected address (metric label values): the client
#: reached us directly over UDP, over ICE-TCP, through a TURN relay, or never at all.
CANDIDATE_TYPES = ("udp", "tcp", "relay", "none")


class DropCounters:
    """Datagrams and bytes in and out by kind, drops by reason, and handshake outcomes."""

    __slots__ = (
        "connected_by_type",
        "drops",
        "dtls_handshake",
        "failed_by_type",
        "handshake_failures",
        "ice_handshake",
        "received",
        "received_bytes",
        "relay_hosts",
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
        #: Transports that connected, and that failed, by candidate type (CANDIDATE_TYPES).
        self.connected_by_type: defaultdict[str, int] = defaultdict(int)
        self.failed_by_type: defaultdict[str, int] = defaultdict(int)
        #: IP addresses of the TURN servers' relays (``turn.urls`` hosts): a peer address
        #: among them is a relayed candidate.
        self.relay_hosts: frozenset[str] = frozenset()

    def drop(self, reason: str) -> None:
        """Count one dropped datagram; ``reason`` must come from a fixed set of strings."""
        self.drops[reason] += 1

    def total_drops(self) -> int:
        """All drops, whatever the reason."""
        return sum(self.drops.values())
