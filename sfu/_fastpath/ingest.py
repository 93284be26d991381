"""Ingest of one RTP packet of a bound source stream: the one definition every path shares.

The reference forwarder (``_forward_py``) runs it for established media, and the Python slow
path (``sfu.core.router``) runs it for everything else (streams not registered with the data
plane, RTX repairs, codecs the forwarder leaves alone); the compiled forwarder
(``_forward.pyx``) is its C twin, proven equal by the differential tests. It unwraps the
sequence number, writes the retransmission cache, reads the payload descriptor, then hands the
packet to every route of the fan-out snapshot (decide and rewrite: ``Subscription.forward``)
and emits what they produced. What the receive bookkeeping needs is returned as one
:data:`~sfu._fastpath.values.LogRecord`, which the forwarders log and the slow path replays at
once, so both paths account a packet through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sfu._fastpath.values import (
    AUDIO,
    AUDIO_INFO,
    AV1,
    F_HEADER_BAD,
    F_KEYFRAME,
    F_LEVEL,
    F_MALFORMED_EXT,
    F_MALFORMED_PAYLOAD,
    F_PADDING,
    F_REASON_SHIFT,
    F_RTX,
    F_STRUCTURE,
    F_TWCC,
    F_VAD,
    H264,
    REFUSED_DESCRIPTOR,
    REFUSED_PAYLOAD_TYPE,
    VP8,
    VP9,
    LogRecord,
    PacketInfo,
)
from sfu.codecs.av1 import DependencyTracker, element_offset
from sfu.codecs.h264 import parse_h264
from sfu.codecs.vp8 import parse_vp8
from sfu.codecs.vp9 import parse_vp9
from sfu.packet.errors import ParseError
from sfu.packet.extensions import abs_send_time_from_seconds
from sfu.packet.rtp import (
    RTP_DEFECT_EXT_ELEMENT,
    RTP_DEFECT_HEADER,
    RTP_DEFECT_NO_PAYLOAD,
    RTP_DEFECT_NONE,
    Extensions,
    peek_rtp_header,
    rtp_defect,
)

__all__ = ["Emit", "Ready", "Route", "Source", "describe", "ingest"]


class _Unwrapper(Protocol):
    def unwrap(self, seq: int) -> int: ...


class _Cache(Protocol):
    hits: int
    misses: int

    def put(self, packet: bytes, ext_seq: int, now: float) -> None: ...
    def get(self, ext_seq: int, now: float) -> Any: ...


class Source(Protocol):
    """What ingest needs of a source stream (``sfu.core.publication.SourceStream``)."""

    @property
    def ssrc(self) -> int: ...
    @property
    def layer(self) -> int: ...
    @property
    def unwrapper(self) -> _Unwrapper: ...
    @property
    def cache(self) -> _Cache: ...
    @property
    def payload_types(self) -> frozenset[int]: ...
    @property
    def dependency(self) -> DependencyTracker | None: ...


class Route(Protocol):
    """What ingest needs of a route's subscription (``sfu.core.subscription.Subscription``)."""

    @property
    def buf(self) -> bytearray: ...

    def forward(
        self,
        stream: Any,
        packet: bytes,
        ext_seq: int,
        timestamp: int,
        info: PacketInfo,
        now: float,
        abs_send_time: int,
    ) -> int: ...

    def skip(self, stream: Any, ext_seq: int) -> None: ...


#: Sends the ``n`` bytes a route rewrote into its ``buf`` on the route's transport; returns
#: whether the packet counts as forwarded.
Emit = Callable[[Any, Any, int], bool]
#: Whether a route's transport (the second item of a route) can send now: it has SRTP keys.
#: A route that cannot is left untouched (no layer decision, no sequence number, not counted):
#: a keyframe decided on while the subscriber's DTLS handshake runs would be lost to it.
Ready = Callable[[Any], bool]


def describe(kind: int, packet: bytes, offset: int) -> PacketInfo:
    """Keyframe / frame start / temporal layer from the payload descriptor (ParseError if bad)."""
    if kind == VP8:
        d = parse_vp8(packet, offset)
        return PacketInfo(
            d.is_keyframe,
            d.is_start_of_frame,
            d.temporal_id,
            d.layer_sync or not d.temporal_id,
            d,
            offset,
        )
    if kind == H264:
        h = parse_h264(packet, offset)
        return PacketInfo(h.is_keyframe, h.is_start_of_frame, offset=offset)
    if kind == VP9:
        v = parse_vp9(packet, offset)
        return PacketInfo(
            v.is_keyframe,
            v.is_start_of_frame,
            v.temporal_id,
            v.switching_up_point or not v.temporal_id,
            offset=offset,
            spatial_id=v.spatial_id or 0,
            end_of_frame=v.is_end_of_frame,
            switch_point=not v.inter_picture_predicted,
            has_structure=v.scalability_structure is not None,
        )
    return PacketInfo(True, True, offset=offset)


def describe_av1(
    tracker: DependencyTracker, packet: bytes, offset: int, ext_seq: int = -1
) -> PacketInfo:
    """Layer, frame boundaries and switch points of an AV1 packet from its Dependency
    Descriptor (AV1 RTP spec A.8), read against (and updating) the stream's ``tracker``.
    ParseError when the descriptor is missing, malformed, or refers to no known template
    (such a packet cannot be placed in any layer, so it is refused like a bad descriptor)."""
    if not tracker.ext_id:
        return _describe_av1_payload(packet, offset)
    pos, length = element_offset(packet, tracker.ext_id)
    if pos < 0:
        raise ParseError("AV1 packet without a dependency descriptor")
    dd = tracker.read(packet[pos : pos + length], ext_seq)
    template = dd.template
    dtis = dd.frame_dtis
    spatial = template.spatial_id
    temporal = template.temporal_id
    switches = tracker.temporal_switches(dtis)
    return PacketInfo(
        dd.is_keyframe,
        dd.start_of_frame,
        temporal,
        not temporal or bool(switches >> temporal & 1),
        offset=offset,
        spatial_id=spatial,
        end_of_frame=dd.end_of_frame,
        switch_point=tracker.spatial_switch(spatial, dtis, dd.frame_fdiffs),
        has_structure=dd.structure is not None,
        frame_number=dd.frame_number,
        dd_offset=pos,
        temporal_switches=switches,
    )


def _describe_av1_payload(packet: bytes, offset: int) -> PacketInfo:
    """An AV1 stream whose publisher negotiated no Dependency Descriptor is one layer: frame
    starts and key frames come from the aggregation header (AV1 RTP spec §4.4: Z, the first
    OBU element continues one from the previous packet; N, the packet starts a new coded video
    sequence, i.e. a key frame)."""
    if offset >= len(packet):
        raise ParseError("AV1 packet without an aggregation header")
    header = packet[offset]
    start = not header & 0x80
    return PacketInfo(
        bool(header & 0x08) and start,
        start,
        offset=offset,
        end_of_frame=bool(packet[1] & 0x80),
        switch_point=True,
    )


def ingest(
    handle: int,
    kind: int,
    source: Source,
    routes: Sequence[tuple[Route, Any]],
    plain: bytes,
    *,
    now: float,
    twcc_id: int,
    level_id: int,
    emit: Emit,
    ready: Ready,
    rtx: bool = False,
) -> LogRecord:
    """Ingest ``plain`` (decrypted RTP of ``source``) and forward it on ``routes``.

    ``rtx`` marks a repair restored from its RTX packet (RFC 4588): it is forwarded and cached
    like the original, but reads no audio level and does not count toward the layer's bitrate.
    A packet that is refused (a malformed header, see :func:`sfu.packet.rtp.rtp_defect`, a
    payload type that is not one of the stream's, a payload descriptor that does not parse) is never
    forwarded; its record carries the reason (:func:`sfu._fastpath.values.refusal`). Those
    with a readable sequence number and nothing wrong before the payload leave no hole in any
    subscriber's outgoing sequence (as padding does). Routes whose transport is not
    ``ready`` (no SRTP context yet) are passed over entirely, skips included.
    """
    size = len(plain)
    header = peek_rtp_header(plain)
    if header is None:
        flags = F_HEADER_BAD | RTP_DEFECT_HEADER << F_REASON_SHIFT
        return (handle, flags, 0, 0, now, size, 0, 0, 0, 0)
    _, seq, timestamp, payload_type = header
    defect = rtp_defect(plain)
    if defect != RTP_DEFECT_NONE and defect != RTP_DEFECT_NO_PAYLOAD:
        flags = F_MALFORMED_EXT | defect << F_REASON_SHIFT
        return (handle, flags, 0, timestamp, now, size, 0, 0, 0, 0)
    flags = F_RTX if rtx else 0
    twcc = 0
    level = 0
    extensions = Extensions(plain)  # one pass over the extension block
    try:
        if twcc_id:
            raw = extensions.get(twcc_id)
            if raw is not None and len(raw) == 2:
                twcc = (raw[0] << 8) | raw[1]
                flags |= F_TWCC
        ext_seq = source.unwrapper.unwrap(seq)
        expected = source.payload_types
        if defect or (expected and payload_type not in expected):
            # A bare header, or a payload type no subscriber's munger maps: dropped on every
            # route as padding is, so no subscriber sees a hole where it was.
            _skip(routes, ready, source, ext_seq)
            flags |= F_PADDING | (defect or REFUSED_PAYLOAD_TYPE) << F_REASON_SHIFT
            return (handle, flags, ext_seq, timestamp, now, size, twcc, 0, 0, 0)
        if rtx and _cached(source.cache, ext_seq, now):
            # A repair of a packet already received: Chromium pads with such resends while it
            # probes. Every subscriber got (or can NACK) the original; fed to a layer
            # selector again, a stale switch point would move it (an SVC climb at an old key
            # picture's upper layer frame), so it is not forwarded at all.
            return (handle, flags, ext_seq, timestamp, now, size, twcc, 0, 0, 0)
        source.cache.put(plain, ext_seq, now)
        if kind == AUDIO:
            info = AUDIO_INFO
            if level_id and not rtx:
                raw = extensions.get(level_id)
                if raw is not None and len(raw) == 1:
                    level = raw[0] & 0x7F
                    flags |= F_LEVEL | (F_VAD if raw[0] & 0x80 else 0)
        else:
            offset = extensions.payload_offset()
            if offset >= size - (plain[-1] if plain[0] & 0x20 else 0):
                # Padding only (RFC 3550 §5.1; bandwidth probes): nothing to forward, but each
                # subscriber's outgoing sequence must not get a hole where it was.
                _skip(routes, ready, source, ext_seq)
                return (handle, flags | F_PADDING, ext_seq, timestamp, now, size, twcc, 0, 0, 0)
            try:
                if kind == AV1:
                    tracker = source.dependency
                    if tracker is None:
                        raise ParseError("no dependency descriptor negotiated")
                    info = describe_av1(tracker, plain, offset, ext_seq)
                else:
                    info = describe(kind, plain, offset)
            except ParseError:
                _skip(routes, ready, source, ext_seq)  # no subscriber sees a hole there
                flags |= F_MALFORMED_PAYLOAD | REFUSED_DESCRIPTOR << F_REASON_SHIFT
                return (handle, flags, ext_seq, timestamp, now, size, twcc, 0, 0, 0)
            if info.is_keyframe and info.is_start_of_frame:
                flags |= F_KEYFRAME
            if info.has_structure:
                flags |= F_STRUCTURE
    except ParseError:  # not reached: rtp_defect admitted the block (kept as the C twin)
        flags |= F_MALFORMED_EXT | RTP_DEFECT_EXT_ELEMENT << F_REASON_SHIFT
        return (handle, flags, 0, timestamp, now, size, twcc, 0, 0, 0)
    abs_time = abs_send_time_from_seconds(now)
    forwarded = 0
    out_bytes = 0
    for sub, out in routes:
        if not ready(out):
            continue
        n = sub.forward(source, plain, ext_seq, timestamp, info, now, abs_time)
        if n and emit(sub, out, n):
            forwarded += 1
            out_bytes += n
    return (handle, flags, ext_seq, timestamp, now, size, twcc, level, forwarded, out_bytes)


def _cached(cache: _Cache, ext_seq: int, now: float) -> bool:
    """Whether ``cache`` holds ``ext_seq``, leaving its hit/miss counters (metrics of NACK
    service) as found."""
    hits, misses = cache.hits, cache.misses
    try:
        return cache.get(ext_seq, now) is not None
    finally:
        cache.hits, cache.misses = hits, misses


def _skip(routes: Sequence[tuple[Route, Any]], ready: Ready, source: Source, ext_seq: int) -> None:
    """``skip`` on every route that can send (the others are not touched at all)."""
    for sub, out in routes:
        if ready(out):
            sub.skip(source, ext_seq)
