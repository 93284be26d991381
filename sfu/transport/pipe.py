"""The pipe: a sans-I/O relay of publications between two forwarding places.

One ``Pipe`` object sits at each end of a pair (two workers on one host now, two nodes over
QUIC in the cluster issue); the wire format is :mod:`sfu.packet.pipe`. Each side plays two
roles at once:

- **receiving side** of the flows it opens (``open_flow``): it wants a publication of the
  other side for its own subscribers, says which simulcast layers and how much bitrate
  (``set_demand``), gets the publication's RTP and Sender Reports (``Media`` events) and
  sends feedback upstream (``send_feedback``: PLI/FIR, NACK as RTCP).
- **sending side** of the flows the peer opened: ``relay`` puts a publication's packet on
  the flow when its spatial layer is demanded, and the peer's feedback comes back as
  ``Feedback`` events (answered by the owner of the publication: its retransmission cache,
  a keyframe request to the publisher).

Flow ids are allocated by the receiving side, with the parity of its ``role`` (0 even, 1
odd, as QUIC stream ids carry their initiator), so both sides tell at once whether a flow
is one they receive or one they send, with no negotiation.

Everything unreliable is state, refreshed: a DEMAND is resent every ``REFRESH_INTERVAL``
with a HELLO, so a lost one costs one interval; a flow the peer stopped refreshing for
``FLOW_TIMEOUT`` ends (the peer died, or the pipe broke), which bounds the sending side's
state. Bounded too: at most ``max_flows`` flows each way; malformed datagrams, RTP on the
wrong direction and unknown flows are dropped and counted (``PipeCounters``), never raised.
Methods take ``now``; replies and timed datagrams wait in ``take_datagrams()``.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass
from typing import Final, TypeAlias

from sfu.packet.errors import ParseError
from sfu.packet.pipe import (
    CONTROL_FLOW,
    MAX_RATES,
    MAX_STREAMS,
    MAX_TRACK_ID_BYTES,
    Close,
    CloseReason,
    Demand,
    Hello,
    Rates,
    Streams,
    encode_control,
    flow_prefix,
    is_rtcp,
    parse_control,
    split_flow,
)

__all__ = [
    "DEFAULT_MAX_FLOWS",
    "DROP_REASONS",
    "FLOW_TIMEOUT",
    "REFRESH_INTERVAL",
    "DemandChanged",
    "Feedback",
    "FlowClosed",
    "FlowRequested",
    "Media",
    "PeerRestarted",
    "Pipe",
    "PipeCounters",
    "PipeEvent",
    "RatesReceived",
    "StreamsReceived",
]

#: HELLO and every open flow's DEMAND are resent this often: the cost of a lost control
#: datagram, and the keepalive that tells the sending side a flow is still wanted.
REFRESH_INTERVAL: Final = 1.0
#: A sent flow without any DEMAND for this long ends (the receiving side died or left
#: without a CLOSE): several refreshes lost in a row never happen on a live pipe.
FLOW_TIMEOUT: Final = 5.0
#: A peer heard from within this long counts as up (``Pipe.peer_up``).
PEER_TIMEOUT: Final = 3 * REFRESH_INTERVAL
#: Flows each way per pipe: a room spread over workers relays each of its publications
#: once per worker, so this bounds what a confused or hostile peer can make us hold while
#: staying far above any real room.
DEFAULT_MAX_FLOWS: Final = 4096
#: Why a datagram was dropped (a fixed set: metric label values).
DROP_REASONS: Final = (
    "malformed",
    "unknown_flow",
    "wrong_direction",
    "flow_limit",
    "flow_mismatch",
    "stale_demand",
    "not_peer",
)


class PipeCounters:
    """Plain counters of one pipe, read at scrape time."""

    __slots__ = (
        "drops",
        "filtered",
        "received",
        "received_bytes",
        "relayed",
        "relayed_bytes",
        "sent_control",
    )

    def __init__(self) -> None:
        #: Media datagrams put on the pipe (``relay``, ``send_feedback``) and their bytes.
        self.relayed = 0
        self.relayed_bytes = 0
        #: Packets ``relay`` held back: their layer is not demanded by the peer.
        self.filtered = 0
        #: Datagrams accepted from the peer and their bytes.
        self.received = 0
        self.received_bytes = 0
        #: Control datagrams sent (HELLO, DEMAND, CLOSE, RATES).
        self.sent_control = 0
        #: Dropped datagrams by reason (DROP_REASONS).
        self.drops: defaultdict[str, int] = defaultdict(int)


@dataclass(frozen=True, slots=True)
class Media:
    """Downstream: an RTP packet (or RTCP compound, ``rtcp``) of a flow we receive; the
    packet is ``data[offset:]`` (no copy made on the way)."""

    flow: int
    data: bytes
    offset: int
    rtcp: bool


@dataclass(frozen=True, slots=True)
class Feedback:
    """Upstream: an RTCP compound (PLI/FIR, NACK...) the peer sent on a flow we send."""

    flow: int
    rtcp: bytes


@dataclass(frozen=True, slots=True)
class FlowRequested:
    """The peer wants ``track_id`` on a new flow we are to send (``close_flow`` refuses)."""

    flow: int
    track_id: str
    spatial_mask: int
    bitrate: int


@dataclass(frozen=True, slots=True)
class DemandChanged:
    """The peer's layers or bitrate for a flow we send changed."""

    flow: int
    spatial_mask: int
    bitrate: int


@dataclass(frozen=True, slots=True)
class FlowClosed:
    """A flow ended by the peer or by expiry; ``inbound`` when it was one we receive."""

    flow: int
    reason: CloseReason
    inbound: bool


@dataclass(frozen=True, slots=True)
class RatesReceived:
    """The publisher's bitrate per spatial layer of a flow we receive."""

    flow: int
    bps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StreamsReceived:
    """Which SSRC carries which spatial layer of a flow we receive."""

    flow: int
    streams: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """The peer came back with a new epoch: every flow we sent it ended (reported one by
    one as FlowClosed first); the flows we receive are asked for again at once."""

    epoch: int


PipeEvent: TypeAlias = (
    Media
    | Feedback
    | FlowRequested
    | DemandChanged
    | FlowClosed
    | RatesReceived
    | StreamsReceived
    | PeerRestarted
)


@dataclass(slots=True)
class _Inbound:
    """A flow we receive: what we asked for."""

    track_id: str
    version: int
    spatial_mask: int
    bitrate: int


@dataclass(slots=True)
class _Outbound:
    """A flow we send: what the peer asked for, and when it last said so."""

    track_id: str
    prefix: bytes
    version: int
    spatial_mask: int
    bitrate: int
    refreshed: float
    #: The last STREAMS sent (resent with every refresh).
    streams: tuple[tuple[int, int], ...] = ()


class Pipe:
    """One end of a pipe between two forwarding places (see the module docstring)."""

    __slots__ = (
        "_inbound",
        "_next_flow",
        "_next_refresh",
        "_outbound",
        "_outbox",
        "counters",
        "epoch",
        "max_flows",
        "peer_epoch",
        "peer_seen",
        "role",
    )

    def __init__(self, *, role: int, now: float, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        if role not in (0, 1):
            raise ValueError("role must be 0 or 1")
        self.role = role
        self.max_flows = max_flows
        #: Random per instance: the peer learns from a new one that we restarted.
        self.epoch = secrets.randbits(62) or 1
        self.peer_epoch: int | None = None
        self.peer_seen: float | None = None
        self.counters = PipeCounters()
        self._inbound: dict[int, _Inbound] = {}
        self._outbound: dict[int, _Outbound] = {}
        self._next_flow = 2 if role == 0 else 1
        self._outbox: list[bytes] = [encode_control(Hello(self.epoch))]
        self.counters.sent_control += 1
        self._next_refresh = now + REFRESH_INTERVAL

    # -- queries -------------------------------------------------------------------------

    def peer_up(self, *, now: float) -> bool:
        """Whether the peer was heard from within PEER_TIMEOUT."""
        return self.peer_seen is not None and now - self.peer_seen <= PEER_TIMEOUT

    def inbound_flows(self) -> dict[int, str]:
        """Flows we receive, by id, with their track ids."""
        return {flow: state.track_id for flow, state in self._inbound.items()}

    def outbound_flows(self) -> dict[int, str]:
        """Flows we send, by id, with their track ids."""
        return {flow: state.track_id for flow, state in self._outbound.items()}

    def flow_prefix(self, flow: int) -> bytes | None:
        """The bytes that start every datagram of a flow we send (its varint id); None when
        the flow is gone."""
        state = self._outbound.get(flow)
        return None if state is None else state.prefix

    def demand(self, flow: int) -> tuple[int, int] | None:
        """The peer's (spatial mask, bitrate) for a flow we send; None when unknown."""
        state = self._outbound.get(flow)
        return None if state is None else (state.spatial_mask, state.bitrate)

    def take_datagrams(self) -> list[bytes]:
        """The datagrams to send to the peer since the last call, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    # -- receiving side ----------------------------------------------------------------------

    def open_flow(
        self, track_id: str, *, spatial_mask: int, bitrate: int, now: float
    ) -> int | None:
        """Ask the peer for ``track_id``; the new flow's id, or None at the flow limit."""
        if len(self._inbound) >= self.max_flows:
            self.counters.drops["flow_limit"] += 1
            return None
        if len(track_id.encode()) > MAX_TRACK_ID_BYTES:
            raise ValueError("track id too long")
        flow = self._next_flow
        self._next_flow += 2
        state = _Inbound(track_id, 0, spatial_mask, bitrate)
        self._inbound[flow] = state
        self._send_demand(flow, state)
        return flow

    def set_demand(self, flow: int, *, spatial_mask: int, bitrate: int, now: float) -> None:
        """Change the layers and bitrate we want on ``flow`` (sent at once when changed)."""
        state = self._inbound.get(flow)
        if state is None or (state.spatial_mask, state.bitrate) == (spatial_mask, bitrate):
            return
        state.version += 1
        state.spatial_mask = spatial_mask
        state.bitrate = bitrate
        self._send_demand(flow, state)

    def send_feedback(self, flow: int, rtcp: bytes) -> bytes | None:
        """The datagram carrying an RTCP compound upstream on ``flow``; None if not ours."""
        if flow not in self._inbound:
            return None
        datagram = flow_prefix(flow) + rtcp
        self.counters.relayed += 1
        self.counters.relayed_bytes += len(datagram)
        return datagram

    # -- sending side -------------------------------------------------------------------------

    def relay(self, flow: int, packet: bytes, spatial: int) -> bytes | None:
        """The datagram carrying ``packet`` (RTP of spatial layer ``spatial``) on ``flow``,
        or None when the peer does not want that layer (or the flow is gone)."""
        state = self._outbound.get(flow)
        if state is None or not (state.spatial_mask >> spatial) & 1:
            self.counters.filtered += 1
            return None
        datagram = state.prefix + packet
        self.counters.relayed += 1
        self.counters.relayed_bytes += len(datagram)
        return datagram

    def relay_rtcp(self, flow: int, rtcp: bytes) -> bytes | None:
        """The datagram carrying an RTCP compound (a Sender Report) downstream on ``flow``."""
        state = self._outbound.get(flow)
        if state is None:
            return None
        datagram = state.prefix + rtcp
        self.counters.relayed += 1
        self.counters.relayed_bytes += len(datagram)
        return datagram

    def announce_streams(self, flow: int, streams: tuple[tuple[int, int], ...]) -> bytes | None:
        """The datagram telling the peer which SSRC carries which layer of ``flow`` (sent
        by the caller at once, before the packets it names); kept and refreshed."""
        state = self._outbound.get(flow)
        if state is None:
            return None
        state.streams = streams[:MAX_STREAMS]
        self.counters.sent_control += 1
        return encode_control(Streams(flow, state.streams))

    def send_rates(self, flow: int, bps: tuple[int, ...]) -> None:
        """Tell the peer the publisher's bitrate per spatial layer of ``flow``."""
        if flow in self._outbound:
            self._control(Rates(flow, bps[:MAX_RATES]))

    # -- both -----------------------------------------------------------------------------------

    def close_flow(self, flow: int, *, reason: CloseReason, now: float) -> None:
        """End a flow of either direction and tell the peer."""
        table: dict[int, _Inbound] | dict[int, _Outbound]
        table = self._inbound if self._is_inbound(flow) else self._outbound
        if table.pop(flow, None) is not None:
            self._control(Close(flow, reason))

    def receive(self, data: bytes, *, now: float) -> PipeEvent | None:
        """One datagram from the peer (its source already checked by the adapter): the
        event it makes, if any. Malformed or unexpected datagrams are counted and dropped."""
        try:
            flow, offset = split_flow(data)
        except ParseError:
            self.counters.drops["malformed"] += 1
            return None
        return self._receive(flow, data, offset, now)

    def receive_flow(self, flow: int, payload: bytes, *, now: float) -> PipeEvent | None:
        """A datagram whose carrier already split off the flow id (a QUIC DATAGRAM of the
        node link): the same as :meth:`receive` of ``flow_prefix(flow) + payload``."""
        return self._receive(flow, payload, 0, now)

    def _receive(self, flow: int, data: bytes, offset: int, now: float) -> PipeEvent | None:
        try:
            if flow == CONTROL_FLOW:
                event = self._on_control(parse_control(data, offset), now)
            else:
                event = self._on_media(flow, data, offset, is_rtcp(data, offset))
        except ParseError:
            self.counters.drops["malformed"] += 1
            return None
        except _Refused as refused:
            self.counters.drops[refused.reason] += 1
            return None
        self.peer_seen = now
        self.counters.received += 1
        self.counters.received_bytes += len(data)
        return event

    def next_timer(self) -> float:
        """When ``handle_timer`` is next due."""
        return self._next_refresh

    def handle_timer(self, *, now: float) -> list[PipeEvent]:
        """Refresh our HELLO and demands, expire the peer's silent flows (FlowClosed)."""
        if now < self._next_refresh:
            return []
        self._next_refresh = now + REFRESH_INTERVAL
        self._control(Hello(self.epoch))
        for flow, inbound in self._inbound.items():
            self._send_demand(flow, inbound)
        events: list[PipeEvent] = []
        for flow, outbound in list(self._outbound.items()):
            if now - outbound.refreshed > FLOW_TIMEOUT:
                del self._outbound[flow]
                events.append(FlowClosed(flow, CloseReason.EXPIRED, inbound=False))
            elif outbound.streams:
                self._control(Streams(flow, outbound.streams))
        return events

    # -- internals ---------------------------------------------------------------------------

    def _is_inbound(self, flow: int) -> bool:
        """Whether ``flow`` has our parity, i.e. we allocated it and receive it."""
        return flow & 1 == self.role

    def _control(self, message: Hello | Demand | Close | Rates | Streams) -> None:
        self._outbox.append(encode_control(message))
        self.counters.sent_control += 1

    def _send_demand(self, flow: int, state: _Inbound) -> None:
        self._control(
            Demand(flow, state.version, state.spatial_mask, state.bitrate, state.track_id)
        )

    def _on_media(self, flow: int, data: bytes, offset: int, rtcp: bool) -> PipeEvent | None:
        if self._is_inbound(flow):
            if flow not in self._inbound:
                raise _Refused("unknown_flow")
            return Media(flow, data, offset, rtcp)
        if not rtcp:
            raise _Refused("wrong_direction")
        if flow not in self._outbound:
            raise _Refused("unknown_flow")
        return Feedback(flow, data[offset:])

    def _on_control(
        self, message: Hello | Demand | Close | Rates | Streams, now: float
    ) -> PipeEvent | None:
        if isinstance(message, Hello):
            return self._on_hello(message.epoch, now)
        if isinstance(message, Demand):
            return self._on_demand(message, now)
        if isinstance(message, Close):
            table: dict[int, _Inbound] | dict[int, _Outbound]
            inbound = self._is_inbound(message.flow)
            table = self._inbound if inbound else self._outbound
            if table.pop(message.flow, None) is None:
                return None
            return FlowClosed(message.flow, message.reason, inbound)
        if message.flow not in self._inbound:
            raise _Refused("unknown_flow")
        if isinstance(message, Streams):
            return StreamsReceived(message.flow, message.streams)
        return RatesReceived(message.flow, message.bps)

    def _on_hello(self, epoch: int, now: float) -> PipeEvent | None:
        if epoch == self.peer_epoch:
            return None
        first = self.peer_epoch is None
        self.peer_epoch = epoch
        if first:
            return None
        # The peer restarted: what it asked of us is gone with it; what we ask of it must
        # be asked again (its new instance knows nothing).
        self._outbound.clear()
        for flow, inbound in self._inbound.items():
            self._send_demand(flow, inbound)
        return PeerRestarted(epoch)

    def _on_demand(self, demand: Demand, now: float) -> PipeEvent | None:
        flow = demand.flow
        if self._is_inbound(flow):
            raise _Refused("wrong_direction")
        state = self._outbound.get(flow)
        if state is None:
            if len(self._outbound) >= self.max_flows:
                self._control(Close(flow, CloseReason.FLOW_LIMIT))
                raise _Refused("flow_limit")
            self._outbound[flow] = _Outbound(
                demand.track_id,
                flow_prefix(flow),
                demand.version,
                demand.spatial_mask,
                demand.bitrate,
                now,
            )
            return FlowRequested(flow, demand.track_id, demand.spatial_mask, demand.bitrate)
        if state.track_id != demand.track_id:
            raise _Refused("flow_mismatch")
        if demand.version < state.version:
            raise _Refused("stale_demand")
        state.refreshed = now
        if demand.version == state.version:
            return None
        state.version = demand.version
        state.spatial_mask = demand.spatial_mask
        state.bitrate = demand.bitrate
        return DemandChanged(flow, demand.spatial_mask, demand.bitrate)


class _Refused(Exception):
    """A well-formed datagram refused (counted under ``reason``, not as malformed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
