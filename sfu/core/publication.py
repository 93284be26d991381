"""What a publisher sends: a publication (one track) and its source streams (one per layer).

A video publication with simulcast has up to three source streams, one per rid, each its own
SSRC with its own sequence numbers; a single-layer or audio publication has one. A source
stream keeps what the SFU needs about what it received: extended sequence numbers, the
retransmission cache that answers subscribers' NACKs, the NACK generator for uplink losses,
receive statistics for Receiver Reports, a bitrate meter for the allocator and when it last
carried a keyframe. A keyframe request toward the publisher is sent at most once per
``KEYFRAME_REQUEST_INTERVAL`` per source stream, however many subscribers ask (PLI storms from
many subscribers are collapsed into one).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from sfu._fastpath.values import (
    AUDIO,
    AV1,
    H264,
    MAX_SPATIAL_LAYERS,
    OTHER_VIDEO,
    VP8,
    VP9,
    PacketInfo,
)
from sfu.codecs.av1 import DependencyTracker
from sfu.codecs.vp9 import parse_vp9
from sfu.core.layer_rates import LayerRates
from sfu.core.nack import NackGenerator
from sfu.core.rtcp_stats import ReceiveStats
from sfu.negotiation import NegotiatedCodec
from sfu.packet.errors import ParseError
from sfu.packet.extensions import DEPENDENCY_DESCRIPTOR_URI
from sfu.packet.rtp import payload_offset

if TYPE_CHECKING:
    from sfu.core.kernels import Kernels, RetransmissionBuffer, SequenceUnwrapper
    from sfu.transport.transport import WebRtcTransport

__all__ = [
    "KEYFRAME_ANSWER_FRAME",
    "KEYFRAME_REQUEST_INTERVAL",
    "SOURCES",
    "BitrateMeter",
    "Publication",
    "SourceStream",
    "Subscriber",
    "new_id",
    "new_ssrc",
]

#: At most one PLI per source stream this often (the issue's "one per 500 ms").
KEYFRAME_REQUEST_INTERVAL: Final = 0.5
#: A publisher answers a PLI with its next frame: one round trip plus up to one frame interval
#: (15 fps, the slowest a camera layer runs) before a request can have been answered, so a
#: request is never repeated sooner than that on a slow path.
KEYFRAME_ANSWER_FRAME: Final = 1 / 15
#: A layer that sent nothing for this long counts as stopped (the publisher's encoder dropped
#: it for bandwidth or CPU); subscribers fall back to a layer still being sent.
LAYER_TIMEOUT: Final = 1.5
#: Retransmission cache per video source stream: packets and their largest size.
VIDEO_CACHE_PACKETS: Final = 512
AUDIO_CACHE_PACKETS: Final = 64
#: Video codecs whose payload descriptor ingest reads, by SDP encoding name.
_VIDEO_KINDS: Final = {"vp8": VP8, "h264": H264, "vp9": VP9, "av1": AV1}

#: What a track shows, as its publisher declares it (the room protocol's ``source``): a
#: screen share outranks every camera when a subscriber's bandwidth is shared out.
SOURCES: Final = frozenset({"camera", "microphone", "screen", "screen_audio"})


def new_id(prefix: str) -> str:
    """A random, unguessable id such as ``TR_3kZ...`` (never derived from personal data)."""
    return f"{prefix}_{secrets.token_urlsafe(9)}"


def new_ssrc(taken: set[int]) -> int:
    """A random nonzero SSRC not in ``taken`` (RFC 3550 §8.1), added to ``taken``."""
    while True:
        ssrc = secrets.randbits(32)
        if ssrc and ssrc not in taken:
            taken.add(ssrc)
            return ssrc


class BitrateMeter:
    """Bits per second over the last second, in ten 100 ms buckets (for the allocator)."""

    __slots__ = ("_buckets", "_epoch")

    def __init__(self) -> None:
        self._buckets = [0] * 10
        self._epoch = 0

    def add(self, size: int, now: float) -> None:
        """Count ``size`` bytes received at ``now``."""
        epoch = int(now * 10)
        if epoch != self._epoch:
            self._advance(epoch)
        self._buckets[epoch % 10] += size

    def _advance(self, epoch: int) -> None:
        gap = epoch - self._epoch
        if gap >= 10 or gap < 0:
            self._buckets = [0] * 10
        else:
            for e in range(self._epoch + 1, epoch + 1):
                self._buckets[e % 10] = 0
        self._epoch = epoch

    def bps(self, now: float) -> int:
        """The bitrate over the last second (a reading at an earlier ``now`` than the newest
        count changes nothing: reading never discards what was counted)."""
        epoch = int(now * 10)
        if epoch > self._epoch:
            self._advance(epoch)
        return sum(self._buckets) * 8


@dataclass(eq=False, slots=True)
class SourceStream:
    """One RTP stream a publisher sends (one simulcast layer, or the only one); its
    unwrapper and cache come from ``kernels`` (those of its publication)."""

    ssrc: int
    #: Spatial layer index, 0 = lowest (the rid's position in the offer's simulcast list).
    layer: int
    rid: str | None
    clock_rate: int
    video: bool
    rtx_ssrc: int | None = None
    _: KW_ONLY
    kernels: InitVar[Kernels]
    #: The payload types its packets may carry (every format the answer accepted for the
    #: publication's codec); empty accepts any. Ingest refuses and counts any other (no
    #: subscriber's munger could map it).
    payload_types: frozenset[int] = frozenset()
    #: AV1: the stream's newest Dependency Descriptor structure (None for other codecs).
    dependency: DependencyTracker | None = None
    unwrapper: SequenceUnwrapper = field(init=False)
    cache: RetransmissionBuffer = field(init=False)
    nacks: NackGenerator | None = field(init=False)
    stats: ReceiveStats = field(init=False)
    meter: BitrateMeter = field(default_factory=BitrateMeter)
    last_packet_at: float | None = None
    last_keyframe_at: float | None = None
    #: Extended sequence number of the newest keyframe's first packet (-1: none yet): a lost
    #: packet older than it is worthless to a subscriber that got the keyframe.
    last_keyframe_seq: int = -1
    last_keyframe_request_at: float | None = None
    keyframe_requests: int = 0
    packets: int = 0

    def __post_init__(self, kernels: Kernels) -> None:
        self.unwrapper = kernels.SequenceUnwrapper()
        self.cache = kernels.RetransmissionBuffer(
            VIDEO_CACHE_PACKETS if self.video else AUDIO_CACHE_PACKETS
        )
        self.nacks = NackGenerator() if self.video else None
        self.stats = ReceiveStats(self.ssrc, self.clock_rate)

    def active(self, now: float) -> bool:
        """Whether the publisher still sends this layer."""
        return self.last_packet_at is not None and now - self.last_packet_at < LAYER_TIMEOUT

    def should_request_keyframe(
        self, now: float, interval: float = KEYFRAME_REQUEST_INTERVAL
    ) -> bool:
        """Whether a keyframe request may go upstream now (and record it if so): at most one
        per ``interval`` (the caller widens it to what the publisher needs to answer)."""
        last = self.last_keyframe_request_at
        if last is not None and now - last < interval:
            return False
        self.last_keyframe_request_at = now
        self.keyframe_requests += 1
        return True


class Subscriber(Protocol):
    """What the packet path and the room service use of a fan-out entry.

    :class:`~sfu.core.subscription.Subscription` is the one implementation; naming only what
    is used here keeps this module from importing that one (which imports this one).
    """

    subscriber_id: str
    mid: str
    #: Holds the rewritten copy of the last packet :meth:`forward` accepted.
    buf: bytearray

    def forward(
        self,
        stream: SourceStream,
        packet: bytes,
        ext_seq: int,
        timestamp: int,
        info: PacketInfo,
        now: float,
        abs_send_time: int,
    ) -> int:
        """Rewrite ``packet`` into :attr:`buf`; returns its length, or 0 to send nothing."""
        ...

    def skip(self, stream: SourceStream, ext_seq: int) -> None:
        """Source packet ``ext_seq`` of ``stream`` carries nothing to forward (padding)."""
        ...

    def set_held(self, held: bool) -> None:
        """Stop (or resume) forwarding regardless of the subscriber's own preferences."""
        ...


@dataclass(eq=False, slots=True)
class Publication:
    """One published track: its source streams and what identifies it on the wire.

    ``kernels`` builds its source streams' per-packet objects (the data plane's bundle).
    """

    id: str
    participant_id: str
    kind: str
    name: str
    mid: str
    codec: NegotiatedCodec
    #: The publisher's header extension ids for this section.
    extensions: dict[int, str]
    #: Simulcast rids, lowest layer first; empty for a single stream.
    rids: tuple[str, ...] = ()
    muted: bool = False
    #: A host muted it: nothing is forwarded and the publisher cannot unmute it.
    force_muted: bool = False
    streams: dict[int, SourceStream] = field(default_factory=dict)
    #: The source stream of each layer once its SSRC is known.
    layers: dict[int, SourceStream] = field(default_factory=dict)
    #: Every subscription with the transport it sends on: an immutable snapshot the packet
    #: path iterates, replaced (never mutated) when someone subscribes or leaves.
    fanout: tuple[tuple[Subscriber, WebRtcTransport], ...] = ()
    #: Sends a keyframe request upstream (the publisher's peer); returns whether it went out.
    keyframe_requester: Callable[[SourceStream, float], bool] | None = None
    #: Told whenever :attr:`fanout` is replaced (the data plane pushes the new snapshot).
    on_fanout: Callable[[Publication], None] | None = None
    #: Told when an SVC stream's spatial layer count changes (the room re-announces the track).
    on_layers: Callable[[Publication], None] | None = None
    _: KW_ONLY
    kernels: Kernels = field(repr=False)
    #: One of :data:`SOURCES`; "camera" for video and "microphone" for audio unless declared.
    source: str = ""
    #: The top layer's picture height as the publisher declared it (None: not declared).
    height: int | None = None
    #: Measured (spatial, temporal) layer bitrates, sampled for the allocator.
    rates: LayerRates = field(default_factory=LayerRates, repr=False)
    #: Every format the answer accepted for the publication (all of ``codec``'s name; the
    #: publisher may send any of them, RFC 3264 §6.1); empty: ``codec`` alone.
    codecs: tuple[NegotiatedCodec, ...] = ()
    #: How ingest reads its packets (:mod:`sfu._fastpath.values` stream kinds), fixed by the
    #: kind and codec: computed once, not per packet.
    stream_kind: int = field(init=False)
    #: The media payload types of :attr:`codecs`.
    payload_types: frozenset[int] = field(init=False)
    #: RTX payload type -> the payload type it repairs (its ``apt``), RFC 4588 §8.6.
    rtx_apt: dict[int, int] = field(init=False)
    #: Spatial layers of its one SVC stream, from the newest VP9 scalability structure
    #: (:meth:`learn_structure`); 1 until one is seen, and for every other publication.
    svc_spatial: int = field(init=False, default=1)

    def __post_init__(self) -> None:
        if not self.source:
            self.source = "camera" if self.video else "microphone"
        if self.source not in SOURCES:
            raise ValueError(f"unknown track source {self.source!r}")
        self.stream_kind = (
            _VIDEO_KINDS.get(self.codec.name.lower(), OTHER_VIDEO) if self.video else AUDIO
        )
        if not self.codecs:
            self.codecs = (self.codec,)
        elif self.codec not in self.codecs:
            raise ValueError("codec must be one of codecs")
        name = self.codec.name.lower()
        if any(c.name.lower() != name for c in self.codecs):
            raise ValueError("a publication carries one codec (its formats may differ)")
        self.payload_types = frozenset(c.payload_type for c in self.codecs)
        self.rtx_apt = {
            c.rtx_payload_type: c.payload_type
            for c in self.codecs
            if c.rtx_payload_type is not None and c.rtx_payload_type not in self.payload_types
        }

    @property
    def num_layers(self) -> int:
        """How many spatial layers the publication has (simulcast streams, or the spatial
        layers of its one SVC stream)."""
        return max(1, len(self.rids), self.svc_spatial)

    @property
    def svc(self) -> bool:
        """Whether its spatial layers are those of one scalable stream (VP9 or AV1 without
        simulcast), selected by :class:`~sfu.core.svc.SvcSelector` rather than by stream."""
        return (self.stream_kind == VP9 or self.stream_kind == AV1) and not self.rids

    def stream_for(self, spatial: int) -> SourceStream | None:
        """The source stream that carries spatial layer ``spatial`` (an SVC stream carries
        them all)."""
        return self.layers.get(0 if self.svc else spatial)

    def layer_bps(self, spatial: int, now: float) -> float:
        """What forwarding spatial layer ``spatial`` (all its temporal layers) costs now: its
        stream's measured rate, or for an SVC stream the measured share of the layers up to
        it (0.0 when nothing carries it)."""
        stream = self.stream_for(spatial)
        if stream is None:
            return 0.0
        if self.svc and self.svc_spatial > 1:
            cumulative = self.rates.measure(self, now).get(spatial)
            if cumulative:
                return cumulative[-1]
        return float(stream.meter.bps(now))

    def learn_structure(self, packet: bytes | memoryview) -> None:
        """Read the spatial layer count of an SVC stream from a VP9 scalability structure
        (RFC 9628 §4.2.1; sent on keyframes and whenever the encoder changes its layers); a
        packet without one, or that does not parse, changes nothing."""
        if not self.svc:
            return
        if self.stream_kind == AV1:
            # The stream's tracker read the structure at ingest (AV1 RTP spec A.8.3).
            stream = self.layers.get(0)
            tracker = None if stream is None else stream.dependency
            if tracker is None or tracker.structure is None:
                return
            layers = min(tracker.structure.max_spatial_id + 1, MAX_SPATIAL_LAYERS)
        else:
            try:
                ss = parse_vp9(packet, payload_offset(packet)).scalability_structure
            except ParseError:
                return
            if ss is None:
                return
            layers = min(ss.num_spatial_layers, MAX_SPATIAL_LAYERS)
        if layers != self.svc_spatial:
            self.svc_spatial = layers
            if self.on_layers is not None:
                self.on_layers(self)

    @property
    def video(self) -> bool:
        """Whether this is a video track."""
        return self.kind == "video"

    def add_stream(self, ssrc: int, layer: int, rtx_ssrc: int | None = None) -> SourceStream:
        """Bind ``ssrc`` as the stream of ``layer`` (replacing an earlier SSRC of that layer)."""
        old = self.layers.get(layer)
        if old is not None:
            self.streams.pop(old.ssrc, None)
        rid = self.rids[layer] if layer < len(self.rids) else None
        stream = SourceStream(
            ssrc,
            layer,
            rid,
            self.codec.clock_rate,
            self.video,
            rtx_ssrc,
            kernels=self.kernels,
            payload_types=self.payload_types,
            dependency=self._dependency_tracker(),
        )
        self.streams[ssrc] = stream
        self.layers[layer] = stream
        return stream

    def _dependency_tracker(self) -> DependencyTracker | None:
        """A new stream's Dependency Descriptor tracker (AV1 only), under the publisher's
        extension id (0 when not negotiated: every packet is then refused)."""
        if self.stream_kind != AV1:
            return None
        ext_id = next(
            (i for i, uri in self.extensions.items() if uri == DEPENDENCY_DESCRIPTOR_URI), 0
        )
        return DependencyTracker(ext_id)

    def add_subscriber(self, subscription: Subscriber, transport: WebRtcTransport) -> None:
        """Start forwarding to ``subscription`` over ``transport``."""
        self.fanout = (*self.fanout, (subscription, transport))
        if self.on_fanout is not None:
            self.on_fanout(self)

    def remove_subscriber(self, subscription: Subscriber) -> None:
        """Stop forwarding to ``subscription``."""
        self.fanout = tuple(entry for entry in self.fanout if entry[0] is not subscription)
        if self.on_fanout is not None:
            self.on_fanout(self)

    def request_keyframe(self, stream: SourceStream, now: float) -> bool:
        """Ask the publisher for a keyframe on ``stream`` (rate-limited by the publisher)."""
        requester = self.keyframe_requester
        return requester(stream, now) if requester is not None else False

    def layer_names(self) -> list[str]:
        """The spatial layers as the room protocol lists them: the simulcast rids, or ``S0``,
        ``S1``... for the spatial layers of an SVC stream (empty for one layer)."""
        if self.rids:
            return list(self.rids)
        return [f"S{i}" for i in range(self.svc_spatial)] if self.svc_spatial > 1 else []

    def active_layers(self, now: float) -> frozenset[int]:
        """The layers the publisher is sending now."""
        if self.svc:
            stream = self.layers.get(0)
            active = stream is not None and stream.active(now)
            return frozenset(range(self.svc_spatial)) if active else frozenset()
        return frozenset(layer for layer, s in self.layers.items() if s.active(now))

    def describe(self) -> dict[str, object]:
        """The track as the room protocol shows it (no SSRCs, no personal data)."""
        return {
            "id": self.id,
            "participant": self.participant_id,
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "muted": self.muted,
            "force_muted": self.force_muted,
            "layers": self.layer_names(),
            **({"height": self.height} if self.height is not None else {}),
        }
