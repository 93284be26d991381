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
from sfu._fastpath.values import AV1, VP8, VP9
from sfu.codecs.av1 import DependencyTracker, element_offset, parse_dependency_descriptor
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
    "layer_shares",
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
#: VP8's TID field has two bits (RFC 7741 §4.2); VP9's three, but no scalability mode a
#: browser offers has more than three temporal layers.
MAX_TEMPORAL_LAYERS: Final = 4
#: Stream kinds whose payload descriptor names temporal (and, for VP9, spatial) layers; AV1's
#: Dependency Descriptor names both, through the stream's template structure.
_LAYERED_KINDS: Final = frozenset({VP8, VP9, AV1})


class _Meter(Protocol):
    def bps(self, now: float) -> int: ...


class MeteredStream(Protocol):
    """What is read of a source stream (:class:`~sfu.core.publication.SourceStream`)."""

    @property
    def cache(self) -> RetransmissionBuffer: ...
    @property
    def meter(self) -> _Meter: ...
    @property
    def dependency(self) -> DependencyTracker | None: ...
    def active(self, now: float) -> bool: ...


class MeteredPublication(Protocol):
    """What is read of a publication (:class:`~sfu.core.publication.Publication`, which
    imports this module)."""

    @property
    def layers(self) -> Mapping[int, MeteredStream]: ...
    @property
    def stream_kind(self) -> int: ...
    @property
    def svc_spatial(self) -> int: ...


def temporal_shares(stream: MeteredStream, kind: int, now: float) -> tuple[float, ...]:
    """Cumulative share of ``stream``'s bytes up to each temporal layer seen, e.g.
    ``(0.4, 0.6, 1.0)``; ``(1.0,)`` when the stream carries no temporal ids."""
    return layer_shares(stream, kind, now, 1)[0]


def _layer_of(kind: int, head: bytes, tracker: DependencyTracker | None) -> tuple[int, int]:
    """(temporal id, spatial id) of a cached packet from its first bytes; ParseError if they
    do not tell. AV1 is read against the stream's newest structure, leaving it as found."""
    if kind == AV1:
        if tracker is None or tracker.structure is None:
            raise ParseError("no dependency structure")
        pos, length = element_offset(head, tracker.ext_id)
        if pos < 0 or pos + length > len(head):
            raise ParseError("no dependency descriptor in the sampled bytes")
        template = parse_dependency_descriptor(head[pos : pos + length], tracker.structure).template
        return template.temporal_id, template.spatial_id
    info = describe(kind, head, payload_offset(head))
    return info.temporal_id or 0, info.spatial_id


def layer_shares(
    stream: MeteredStream, kind: int, now: float, num_spatial: int
) -> tuple[tuple[float, ...], ...]:
    """Per spatial layer ``s`` of an SVC stream (``num_spatial`` 1: the stream is one layer),
    the cumulative share of ``stream``'s bytes in layer frames of spatial layer ``<= s`` up to
    each temporal layer seen: what forwarding up to (``s``, ``t``) costs, as a share of the
    stream. The top spatial layer's last share is 1.0; every share is 1.0 when nothing could
    be sampled (an unmeasured layer is priced as the whole stream)."""
    unmeasured = ((1.0,),) * num_spatial
    if kind not in _LAYERED_KINDS:
        return unmeasured
    cache = stream.cache
    newest = cache.newest
    if newest is None:
        return unmeasured
    hits, misses = cache.hits, cache.misses
    sizes = [[0] * MAX_TEMPORAL_LAYERS for _ in range(num_spatial)]
    seen = -1
    try:
        for seq in range(newest, max(-1, newest - SAMPLE_PACKETS), -1):
            cached = cache.get(seq, now)
            if cached is None:
                continue
            try:
                tid, sid = _layer_of(kind, bytes(cached[:_HEADER_BYTES]), stream.dependency)
            except ParseError:
                continue
            layer = min(tid, MAX_TEMPORAL_LAYERS - 1)
            spatial = min(sid, num_spatial - 1)
            sizes[spatial][layer] += len(cached)
            seen = max(seen, layer)
    finally:
        cache.hits, cache.misses = hits, misses
    total = sum(sum(row) for row in sizes)
    if total == 0:
        return unmeasured
    seen = max(seen, 0)
    shares: list[tuple[float, ...]] = []
    below = 0  # bytes of the lower spatial layers, all temporal layers
    for row in sizes:
        running = below
        cumulative: list[float] = []
        for layer in range(seen + 1):
            running += row[layer]
            cumulative.append(running / total)
        below += sum(row)
        shares.append(tuple(cumulative))
    top = shares[-1]
    shares[-1] = (*top[:-1], 1.0)
    return tuple(shares)


class LayerRates:
    """One publication's measured layer bitrates, refreshed at most every ``SAMPLE_INTERVAL``."""

    __slots__ = ("_at", "_peaks", "_rates", "_shares")

    def __init__(self) -> None:
        self._at = float("-inf")
        self._rates: dict[int, tuple[float, ...]] = {}
        #: Stream's layer -> (when sampled, cumulative temporal shares per spatial layer it
        #: carries: one for a simulcast stream, every one for an SVC stream).
        self._shares: dict[int, tuple[float, tuple[tuple[float, ...], ...]]] = {}
        #: Spatial layer -> (decaying peak rate, when it was last updated).
        self._peaks: dict[int, tuple[float, float]] = {}

    def measure(self, publication: MeteredPublication, now: float) -> dict[int, tuple[float, ...]]:
        """Spatial layer -> cumulative bits per second up to each of its temporal layers
        (one entry when it has none), for the layers the publisher is sending now."""
        if now - self._at < SAMPLE_INTERVAL and now >= self._at:
            return self._rates
        rates: dict[int, tuple[float, ...]] = {}
        # An SVC stream (the only one, layer 0) carries every spatial layer.
        svc = publication.svc_spatial
        for layer, stream in sorted(publication.layers.items()):
            if not stream.active(now):
                continue
            bps = float(stream.meter.bps(now))
            peak, at = self._peaks.get(layer, (0.0, now))
            peak *= 0.5 ** (max(now - at, 0.0) / PEAK_HALF_LIFE)
            self._peaks[layer] = (max(peak, bps), now)
            bps = max(bps, PEAK_FLOOR * peak)
            sampled = self._shares.get(layer)
            if (
                sampled is None
                or not 0 <= now - sampled[0] < SHARES_INTERVAL
                or len(sampled[1]) != svc
            ):
                shares = layer_shares(stream, publication.stream_kind, now, svc)
                sampled = (now, shares)
                self._shares[layer] = sampled
            for spatial, cumulative in enumerate(sampled[1]):
                rates[layer + spatial] = tuple(bps * share for share in cumulative)
        self._rates = rates
        self._at = now
        return rates

    def invalidate(self) -> None:
        """Forget the samples (the next :meth:`measure` takes new ones)."""
        self._at = float("-inf")
        self._shares.clear()
