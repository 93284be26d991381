"""Bitrate of each (spatial, temporal) layer of a publication, measured for the allocator.

Each source stream's :class:`~sfu.core.publication.BitrateMeter` already counts its spatial
layer's bytes (fed by ingest replay, so the compiled forwarder runs no Python for it). The
split of that rate over temporal layers (VP8 TID) comes from a sample of the newest packets in
the stream's retransmission cache, read when the allocator asks and at most once per
``SAMPLE_INTERVAL``: a bounded amount of Python per publication per interval, nothing per
packet. The cache's hit/miss counters (they are metrics of NACK service) are left as found.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Protocol

from sfu._fastpath.ingest import describe
from sfu._fastpath.values import VP8
from sfu.packet.errors import ParseError
from sfu.packet.rtp import payload_offset

if TYPE_CHECKING:
    from sfu.core.kernels import RetransmissionBuffer

__all__ = [
    "MAX_TEMPORAL_LAYERS",
    "SAMPLE_INTERVAL",
    "SAMPLE_PACKETS",
    "LayerRates",
    "MeteredPublication",
    "MeteredStream",
    "temporal_shares",
]

#: Newest cached packets read per stream per sample: ~1 s of a 1.5 Mbit/s layer, enough for
#: the TID shares (libwebrtc's VP8 layers split 40/20/40 %) to settle within a few percent.
SAMPLE_PACKETS: Final = 128
#: Seconds a sample stays valid: the allocator's own interval.
SAMPLE_INTERVAL: Final = 0.5
#: VP8's TID field has two bits (RFC 7741 §4.2).
MAX_TEMPORAL_LAYERS: Final = 4


class _Meter(Protocol):
    def bps(self, now: float) -> int: ...


class MeteredStream(Protocol):
    """What is read of a source stream (:class:`~sfu.core.publication.SourceStream`)."""

    @property
    def cache(self) -> RetransmissionBuffer: ...
    @property
    def meter(self) -> _Meter: ...
    def active(self, now: float) -> bool: ...


class MeteredPublication(Protocol):
    """What is read of a publication (:class:`~sfu.core.publication.Publication`, which
    imports this module)."""

    @property
    def layers(self) -> Mapping[int, MeteredStream]: ...
    @property
    def stream_kind(self) -> int: ...


def temporal_shares(stream: MeteredStream, kind: int, now: float) -> tuple[float, ...]:
    """Cumulative share of ``stream``'s bytes up to each temporal layer seen, e.g.
    ``(0.4, 0.6, 1.0)``; ``(1.0,)`` when the stream carries no temporal ids."""
    if kind != VP8:
        return (1.0,)
    cache = stream.cache
    newest = cache.newest
    if newest is None:
        return (1.0,)
    hits, misses = cache.hits, cache.misses
    sizes = [0] * MAX_TEMPORAL_LAYERS
    seen = -1
    try:
        for seq in range(newest, max(-1, newest - SAMPLE_PACKETS), -1):
            cached = cache.get(seq, now)
            if cached is None:
                continue
            packet = bytes(cached)
            try:
                tid = describe(kind, packet, payload_offset(packet)).temporal_id
            except ParseError:
                continue
            layer = min(tid or 0, MAX_TEMPORAL_LAYERS - 1)
            sizes[layer] += len(packet)
            seen = max(seen, layer)
    finally:
        cache.hits, cache.misses = hits, misses
    total = sum(sizes)
    if seen <= 0 or total == 0:
        return (1.0,)
    shares: list[float] = []
    running = 0
    for layer in range(seen + 1):
        running += sizes[layer]
        shares.append(running / total)
    shares[-1] = 1.0
    return tuple(shares)


class LayerRates:
    """One publication's measured layer bitrates, refreshed at most every ``SAMPLE_INTERVAL``."""

    __slots__ = ("_at", "_rates")

    def __init__(self) -> None:
        self._at = float("-inf")
        self._rates: dict[int, tuple[float, ...]] = {}

    def measure(self, publication: MeteredPublication, now: float) -> dict[int, tuple[float, ...]]:
        """Spatial layer -> cumulative bits per second up to each of its temporal layers
        (one entry when it has none), for the layers the publisher is sending now."""
        if now - self._at < SAMPLE_INTERVAL and now >= self._at:
            return self._rates
        rates: dict[int, tuple[float, ...]] = {}
        for layer, stream in sorted(publication.layers.items()):
            if not stream.active(now):
                continue
            bps = float(stream.meter.bps(now))
            shares = temporal_shares(stream, publication.stream_kind, now)
            rates[layer] = tuple(bps * share for share in shares)
        self._rates = rates
        self._at = now
        return rates

    def invalidate(self) -> None:
        """Forget the sample (the next :meth:`measure` takes a new one)."""
        self._at = float("-inf")
