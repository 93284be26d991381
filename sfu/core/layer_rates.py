"""Bitrate of each (spatial, temporal) layer of a publication, measured for the allocator.

Each source stream's :class:`~sfu.core.publication.BitrateMeter` already counts its spatial
layer's bytes (fed by ingest replay, so the compiled forwarder runs no Python for it). The
split of that rate over temporal layers (VP8 TID) comes from a sample of the newest packets in
the stream's retransmission cache, read when the allocator asks and at most once per
``SHARES_INTERVAL`` (the split follows the encoder's fixed temporal pattern and hardly moves):
a bounded amount of Python per publication per interval, nothing per packet. The cache's
hit/miss counters (they are metrics of NACK service) are left as found.
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
    "PEAK_FLOOR",
    "PEAK_HALF_LIFE",
    "SAMPLE_INTERVAL",
    "SAMPLE_PACKETS",
    "SHARES_INTERVAL",
    "LayerRates",
    "MeteredPublication",
    "MeteredStream",
    "temporal_shares",
]

#: Newest cached packets read per stream per sample: about half a second of a 1.5 Mbit/s
#: layer, some 15 frames of every temporal layer, enough for the TID shares (libwebrtc's VP8
#: layers split 40/20/40 %) to settle within a few percent.
SAMPLE_PACKETS: Final = 64
#: Seconds the measured layer bitrates stay valid: the allocator's own interval.
SAMPLE_INTERVAL: Final = 0.5
#: Seconds the temporal shares stay valid (sampling them is the costly part).
SHARES_INTERVAL: Final = 2.0
#: A layer is never priced below this share of its recent peak rate, which halves every
#: ``PEAK_HALF_LIFE`` seconds: a publisher whose encoder stalls for a moment (a starved CPU)
#: reads as nearly free, and the allocator then chose its top layer on a 400 kbit/s link
#: (real-client test), which flooded the link when the encoder resumed.
PEAK_FLOOR: Final = 0.5
PEAK_HALF_LIFE: Final = 5.0
#: Bytes of a cached packet read to find its descriptor: RTP header, extensions, VP8 descriptor.
_HEADER_BYTES: Final = 160
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
            head = bytes(cached[:_HEADER_BYTES])
            try:
                tid = describe(kind, head, payload_offset(head)).temporal_id
            except ParseError:
                continue
            layer = min(tid or 0, MAX_TEMPORAL_LAYERS - 1)
            sizes[layer] += len(cached)
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

    __slots__ = ("_at", "_peaks", "_rates", "_shares")

    def __init__(self) -> None:
        self._at = float("-inf")
        self._rates: dict[int, tuple[float, ...]] = {}
        #: Spatial layer -> (when sampled, cumulative temporal shares).
        self._shares: dict[int, tuple[float, tuple[float, ...]]] = {}
        #: Spatial layer -> (decaying peak rate, when it was last updated).
        self._peaks: dict[int, tuple[float, float]] = {}

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
            peak, at = self._peaks.get(layer, (0.0, now))
            peak *= 0.5 ** (max(now - at, 0.0) / PEAK_HALF_LIFE)
            self._peaks[layer] = (max(peak, bps), now)
            bps = max(bps, PEAK_FLOOR * peak)
            sampled = self._shares.get(layer)
            if sampled is None or not 0 <= now - sampled[0] < SHARES_INTERVAL:
                sampled = (now, temporal_shares(stream, publication.stream_kind, now))
                self._shares[layer] = sampled
            rates[layer] = tuple(bps * share for share in sampled[1])
        self._rates = rates
        self._at = now
        return rates

    def invalidate(self) -> None:
        """Forget the samples (the next :meth:`measure` takes new ones)."""
        self._at = float("-inf")
        self._shares.clear()
