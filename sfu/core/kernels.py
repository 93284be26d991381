"""The per-packet classes the forwarding path uses, as one bundle passed where objects are built.

Each kernel exists twice with one Python contract: a pure-Python reference and a Cython twin
whose state lives in C, so that the compiled forwarder (``sfu._fastpath._forward``) can run the
whole per-packet path without the GIL. The compiled forwarder reads the C state of the routes
and streams it is given, so it only works with compiled objects: a :class:`Kernels` bundle keeps
the classes of one kind together. Nothing picks a class at import time; the composition root
(``sfu.app``) passes :func:`default_kernels` down, and tests pass whichever bundle they check.

The names below besides :class:`Kernels` are the contracts both kinds meet (for annotations):
Protocols, and for the selector and the munger the reference classes, which the compiled
stubs declare as their type. None of them can be instantiated without a bundle.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sfu import _fastpath
from sfu._fastpath.values import HistoryEntry, LogRecord, Vp8Translation
from sfu.codecs.vp8 import Vp8Descriptor
from sfu.core.rtcp_stats import SentCounter
from sfu.transport.media_lane import LaneOpening, LaneSealing

if TYPE_CHECKING:
    # The compiled stubs type these two as the reference classes themselves.
    from sfu.core.layers import SimulcastSelector
    from sfu.core.munger import RtpMunger
    from sfu.core.svc import SvcSelector

__all__ = [
    "REFERENCE",
    "DelayDetector",
    "ExtensionRewriter",
    "Forwarder",
    "Kernels",
    "LaneOpener",
    "LaneSealer",
    "Pacer",
    "RelayOutput",
    "RetransmissionBuffer",
    "RouteState",
    "RtpMunger",
    "SendHistory",
    "SequenceUnwrapper",
    "SimulcastSelector",
    "SvcSelector",
    "Vp8Munger",
    "compiled",
    "default_kernels",
]

Address = tuple[Any, ...]
Datagram = tuple[bytes, Address]
Buffer = bytes | bytearray | memoryview


class RouteState(SentCounter, Protocol):
    """What one route (subscription) has forwarded: the sender counters SendStats reads, and
    the outgoing history."""

    blocked: bool
    forwarded: int

    def __init__(self) -> None: ...
    def record(
        self,
        out_seq: int,
        in_ext_seq: int,
        timestamp: int,
        layer: int,
        has_vp8: bool,
        picture_id: int,
        tl0picidx: int,
        keyidx: int,
    ) -> None: ...
    def lookup(self, seq: int) -> HistoryEntry | None: ...


class SequenceUnwrapper(Protocol):
    """16-bit RTP sequence numbers to extended ones."""

    def __init__(self) -> None: ...
    @property
    def last(self) -> int | None: ...
    def peek(self, value: int) -> int: ...
    def unwrap(self, value: int) -> int: ...


class RetransmissionBuffer(Protocol):
    """The packets of one source stream that subscribers' NACKs may still ask for."""

    stored: int
    too_large: int
    too_old: int
    hits: int
    misses: int

    def __init__(self, capacity: int = ..., max_size: int = ..., max_age: float = ...) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def max_age(self) -> float: ...
    @property
    def memory_bytes(self) -> int: ...
    @property
    def newest(self) -> int | None: ...
    def put(self, packet: Buffer, ext_seq: int, now: float) -> None: ...
    def get(self, ext_seq: int, now: float) -> memoryview | None: ...
    def clear(self) -> None: ...


class ExtensionRewriter(Protocol):
    """Maps a publisher's header-extension ids to a subscriber's in place."""

    identity: bool

    def __init__(self, source: Mapping[int, str], dest: Mapping[int, str]) -> None: ...
    def apply(
        self, buf: bytearray, length: int, abs_send_time: int, twcc_seq: int = ...
    ) -> bool: ...


class SendHistory(Protocol):
    """What was sent on one transport, by transport-wide sequence number (``_bwe_py``)."""

    def __init__(self, capacity: int = ...) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def next_seq(self) -> int: ...
    def record(self, size: int, now: float, cluster: int) -> int: ...
    def lookup(self, seq: int) -> tuple[float, int, int] | None: ...
    def restamp(self, seq: int, now: float) -> bool: ...
    def withdraw(self, seq: int) -> bool: ...
    @property
    def withdrawn(self) -> int: ...


class DelayDetector(Protocol):
    """Inter-arrival, trendline and overuse detection over a send history (``_bwe_py``)."""

    def __init__(self) -> None: ...
    @property
    def state(self) -> int: ...
    @property
    def trend(self) -> float: ...
    @property
    def threshold(self) -> float: ...
    def cluster(self, cluster: int) -> tuple[int, int, int, int, float, float, float, float]: ...
    def on_feedback(
        self, history: Any, seqs: Sequence[int], arrivals_us: Sequence[int]
    ) -> tuple[int, int, float, float, float, float]: ...


class Pacer(Protocol):
    """Egress leaky-bucket pacer of one subscriber transport (``_pacer_py``)."""

    @property
    def sent_packets(self) -> int: ...
    @property
    def sent_bytes(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    @property
    def evicted(self) -> int: ...
    @property
    def expired(self) -> int: ...
    @property
    def withdrawn_pending(self) -> int: ...
    def __init__(self, max_packets: int = ..., max_bytes: int = ...) -> None: ...
    @property
    def rate_bps(self) -> float: ...
    @property
    def queued_packets(self) -> int: ...
    @property
    def queued_bytes(self) -> int: ...
    def set_rate(self, bps: float, now: float) -> None: ...
    def push(self, packet: Buffer, cls: int, tag: int, now: float) -> bool: ...
    def pop(self, now: float, history: Any = ...) -> list[tuple[bytes, int]]: ...
    def next_deadline(self, now: float) -> float | None: ...
    def take_delays(self) -> tuple[int, float, float]: ...
    def queued_seqs(self, min_class: int = 0) -> dict[int, list[int]]: ...
    def clear(self, min_class: int = 0) -> int: ...


class Vp8Munger(Protocol):
    """Keeps VP8 picture id, TL0PICIDX and KEYIDX continuous across source switches."""

    switches: int
    dropped_pictures: int
    rejected: int

    def __init__(self, history: int = 64) -> None: ...
    @property
    def last_picture_id(self) -> int | None: ...
    @property
    def last_tl0picidx(self) -> int | None: ...
    @property
    def last_keyidx(self) -> int | None: ...
    def switch_source(self) -> None: ...
    def translate(
        self, desc: Vp8Descriptor, source: int | None = None
    ) -> Vp8Translation | None: ...
    def drop(self, desc: Vp8Descriptor) -> None: ...
    @staticmethod
    def apply(buf: bytearray | memoryview, offset: int, t: Vp8Translation) -> None: ...
    def munge(
        self,
        buf: bytearray | memoryview,
        offset: int = 0,
        end: int | None = None,
        desc: Vp8Descriptor | None = None,
        source: int | None = None,
    ) -> bool: ...


class LaneSealer(LaneSealing, Protocol):
    """The sending half of a node link's sealed media lane, shared by the media lane (what
    it uses: :class:`~sfu.transport.media_lane.LaneSealing`) and the forwarder
    (``sfu._fastpath._lane_py``)."""

    counter: int

    def __init__(self, epoch: int, key: bytes, *, limit: int = ...) -> None: ...


class LaneOpener(LaneOpening, Protocol):
    """The receiving half of a node link's sealed media lane (``sfu._fastpath._lane_py``)."""

    def __init__(self) -> None: ...


class RelayOutput(Protocol):
    """One relay tap run by the forwarder: a flow of a pipe to one address."""

    spatial_mask: int

    def __init__(
        self,
        sealer: Any,
        sock: socket.socket | None,
        address: Address,
        prefix: bytes,
        *,
        max_datagram: int,
        spatial_mask: int = 0,
    ) -> None: ...
    @property
    def packets(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def filtered(self) -> int: ...
    @property
    def failed(self) -> int: ...


class Forwarder(Protocol):
    """Forwards registered streams' media to their routes; the data plane's tables."""

    max_transports: int
    max_streams: int
    fast_packets: int
    fast_bytes: int
    slow_packets: int
    ingested_packets: int
    ingested_bytes: int
    sent_packets: int
    sent_bytes: int
    protect_errors: int
    send_errors: int
    log_overflow: int
    relay_overflow: int
    relay_sent: int
    relay_send_errors: int
    impaired_drops: int
    paced_packets: int
    paced_due: float
    relay_in_packets: int
    relay_in_bytes: int
    relay_in_overflow: int

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sample_mask: int = 63,
        log_capacity: int = 65536,
        max_transports: int = 4096,
        max_streams: int = 16384,
    ) -> None: ...
    def set_transport(
        self,
        handle: int,
        address: Address,
        srtp: Any,
        twcc_id: int = 0,
        level_id: int = 0,
        framed: bool = False,
    ) -> None: ...
    def set_impairment(self, handle: int, drop_every: int) -> None: ...
    def set_pacer(self, handle: int, pacer: Any, history: Any = None) -> None: ...
    def paced_backlog(self) -> list[int]: ...
    def release_backlog(
        self, now: float, sock: socket.socket | None = None
    ) -> list[tuple[bytes, Any]]: ...
    def send_paced(
        self, handle: int, now: float, sock: socket.socket | None = None
    ) -> list[bytes]: ...
    def set_source(self, handle: int, level_id: int = 0) -> None: ...
    def remove_transport(self, handle: int) -> None: ...
    def set_stream(self, handle: int, transport: int, source: Any, kind: int) -> None: ...
    def remove_stream(self, handle: int) -> None: ...
    def set_routes(self, handle: int, routes: Sequence[tuple[Any, int]]) -> None: ...
    def set_relay(self, handle: int, relay: bool) -> None: ...
    def set_relay_outputs(self, handle: int, outputs: Sequence[Any]) -> None: ...
    def drain_relay(self) -> list[tuple[int, bytes, int]]: ...
    def drain_relay_sent(self) -> list[tuple[Any, bytes]]: ...
    def set_relay_input(self, index: int, address: Address, opener: Any) -> None: ...
    def remove_relay_input(self, index: int) -> None: ...
    def set_relay_flows(self, index: int, flows: Mapping[int, int]) -> None: ...
    def relay_input_counts(self, index: int) -> tuple[int, int, int]: ...
    def drain_relay_in(self) -> list[tuple[int, int, bytes]]: ...
    def receive_link(
        self, datagrams: Iterable[Datagram], now: float
    ) -> tuple[list[Datagram], list[Datagram]]: ...
    def pump_link(
        self, sock: socket.socket, now: float, out: socket.socket | None = None
    ) -> tuple[list[Datagram], list[Datagram]]: ...
    def process(
        self, datagrams: Iterable[Datagram], now: float
    ) -> tuple[list[Datagram], list[Datagram]]: ...
    def ingest(
        self,
        packets: Iterable[tuple[int, bytes]],
        now: float,
        sock: socket.socket | None = None,
    ) -> tuple[list[tuple[int, bytes]], list[Datagram]]: ...
    def pump(self, sock: socket.socket, now: float) -> list[Datagram]: ...
    def drain_framed(self) -> list[Datagram]: ...
    def drain_log(self) -> list[LogRecord]: ...
    def drain_latency(self) -> list[float]: ...


@dataclass(frozen=True, slots=True)
class Kernels:
    """The per-packet classes of one kind (``name``: "cython" or "python"), used together."""

    name: str
    Forwarder: type[Forwarder]
    RouteState: type[RouteState]
    SequenceUnwrapper: type[SequenceUnwrapper]
    RtpMunger: type[RtpMunger]
    SimulcastSelector: type[SimulcastSelector]
    SvcSelector: type[SvcSelector]
    Vp8Munger: type[Vp8Munger]
    ExtensionRewriter: type[ExtensionRewriter]
    RetransmissionBuffer: type[RetransmissionBuffer]
    SendHistory: type[SendHistory]
    DelayDetector: type[DelayDetector]
    Pacer: type[Pacer]
    LaneSealer: type[LaneSealer]
    LaneOpener: type[LaneOpener]
    RelayOutput: type[RelayOutput]


def _reference() -> Kernels:
    from sfu._fastpath import _bwe_py, _forward_py, _lane_py, _pacer_py
    from sfu.core import (
        header_extensions,
        layers,
        munger,
        retransmission,
        route_state,
        svc,
        vp8_munger,
    )
    from sfu.packet import seqnum

    return Kernels(
        name="python",
        Forwarder=_forward_py.Forwarder,
        RouteState=route_state.RouteState,
        SequenceUnwrapper=seqnum.SequenceUnwrapper,
        RtpMunger=munger.RtpMunger,
        SimulcastSelector=layers.SimulcastSelector,
        SvcSelector=svc.SvcSelector,
        Vp8Munger=vp8_munger.Vp8Munger,
        ExtensionRewriter=header_extensions.ExtensionRewriter,
        RetransmissionBuffer=retransmission.RetransmissionBuffer,
        SendHistory=_bwe_py.SendHistory,
        DelayDetector=_bwe_py.DelayDetector,
        Pacer=_pacer_py.Pacer,
        LaneSealer=_lane_py.LaneSealer,
        LaneOpener=_lane_py.LaneOpener,
        RelayOutput=_lane_py.RelayOutput,
    )


#: The pure-Python references: always available.
REFERENCE: Kernels = _reference()

_compiled: Kernels | None = None


def compiled() -> Kernels:
    """The Cython kernels; raises ImportError when they are not built."""
    global _compiled
    if _compiled is None:
        from sfu._fastpath import (
            _bwe,
            _cache,
            _extensions,
            _forward,
            _lane,
            _layers,
            _munger,
            _pacer,
            _svc,
            _vp8,
        )

        _compiled = Kernels(
            name="cython",
            Forwarder=_forward.Forwarder,
            RouteState=_forward.RouteState,
            SequenceUnwrapper=_forward.SequenceUnwrapper,
            RtpMunger=_munger.RtpMunger,
            SimulcastSelector=_layers.SimulcastSelector,
            SvcSelector=_svc.SvcSelector,
            Vp8Munger=_vp8.Vp8Munger,
            ExtensionRewriter=_extensions.ExtensionRewriter,
            RetransmissionBuffer=_cache.RetransmissionBuffer,
            SendHistory=_bwe.SendHistory,
            DelayDetector=_bwe.DelayDetector,
            Pacer=_pacer.Pacer,
            LaneSealer=_lane.LaneSealer,
            LaneOpener=_lane.LaneOpener,
            RelayOutput=_lane.RelayOutput,
        )
    return _compiled


def default_kernels() -> Kernels:
    """The bundle ``sfu._fastpath.IMPLEMENTATION`` selects (``SFU_NO_EXTENSIONS=1``: the
    references; otherwise compiled when built)."""
    return compiled() if _fastpath.IMPLEMENTATION == "cython" else REFERENCE
