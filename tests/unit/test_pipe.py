"""The pipe between forwarding places: its wire format and its sans-I/O core.

Two ``Pipe`` ends are joined by a fake link that can lose datagrams; time is a number the
test moves. Nothing here opens a socket.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.pipe import (
    MAX_RATES,
    MAX_STREAMS,
    MAX_TRACK_ID_BYTES,
    MAX_VARINT,
    Close,
    CloseReason,
    ControlMessage,
    Demand,
    Hello,
    Rates,
    Streams,
    decode_varint,
    encode_control,
    encode_varint,
    is_rtcp,
    parse_control,
    split_flow,
)
from sfu.packet.rtcp_feedback import Pli
from sfu.transport.pipe import (
    FLOW_TIMEOUT,
    REFRESH_INTERVAL,
    DemandChanged,
    Feedback,
    FlowClosed,
    FlowRequested,
    Media,
    PeerRestarted,
    Pipe,
    PipeEvent,
    RatesReceived,
    StreamsReceived,
)


def rtp(ssrc: int, seq: int, payload: bytes = b"\x90\x80frame") -> bytes:
    """A minimal RTP packet (version 2, payload type 96)."""
    return struct.pack("!BBHII", 0x80, 96, seq, 1000 * seq, ssrc) + payload


def pli(ssrc: int) -> bytes:
    return Pli(sender_ssrc=1, media_ssrc=ssrc).serialize()


class Link:
    """Two pipe ends and the datagrams between them; ``lose`` drops the next ones."""

    def __init__(self, now: float = 0.0, max_flows: int = 16) -> None:
        self.now = now
        self.a = Pipe(role=0, now=now, max_flows=max_flows)
        self.b = Pipe(role=1, now=now, max_flows=max_flows)
        self.lose_to_a = 0
        self.lose_to_b = 0

    def flush(self) -> tuple[list[PipeEvent], list[PipeEvent]]:
        """Deliver what both ends queued until neither has anything: (a's, b's) events."""
        at_a: list[PipeEvent] = []
        at_b: list[PipeEvent] = []
        while True:
            to_b = self.a.take_datagrams()
            to_a = self.b.take_datagrams()
            if not to_a and not to_b:
                return at_a, at_b
            for datagram in to_b:
                self.deliver(self.b, datagram, at_b)
            for datagram in to_a:
                self.deliver(self.a, datagram, at_a)

    def deliver(self, end: Pipe, datagram: bytes, events: list[PipeEvent]) -> None:
        if end is self.a and self.lose_to_a:
            self.lose_to_a -= 1
            return
        if end is self.b and self.lose_to_b:
            self.lose_to_b -= 1
            return
        event = end.receive(datagram, now=self.now)
        if event is not None:
            events.append(event)

    def tick(self, seconds: float) -> tuple[list[PipeEvent], list[PipeEvent]]:
        """Move time, run both ends' timers, deliver: (a's, b's) events."""
        self.now += seconds
        timed_a = self.a.handle_timer(now=self.now)
        timed_b = self.b.handle_timer(now=self.now)
        at_a, at_b = self.flush()
        return timed_a + at_a, timed_b + at_b


# -- wire format ---------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=MAX_VARINT))
def test_varint_round_trips_in_its_shortest_form(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(encoded + b"tail") == (value, len(encoded))
    assert len(encoded) == (1 if value < 64 else 2 if value < 16384 else 4 if value < 2**30 else 8)


def test_varint_matches_rfc_9000_examples() -> None:
    # RFC 9000 Appendix A.1's sample decodings.
    assert decode_varint(bytes.fromhex("c2197c5eff14e88c")) == (151288809941952652, 8)
    assert decode_varint(bytes.fromhex("9d7f3e7d")) == (494878333, 4)
    assert decode_varint(bytes.fromhex("7bbd")) == (15293, 2)
    assert decode_varint(bytes.fromhex("25")) == (37, 1)
    assert decode_varint(bytes.fromhex("4025")) == (37, 2)  # not the shortest: still valid
    with pytest.raises(ValueError):
        encode_varint(MAX_VARINT + 1)
    with pytest.raises(ParseError):
        decode_varint(bytes.fromhex("9d7f3e"))


track_ids = st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) <= MAX_TRACK_ID_BYTES)
flows = st.integers(min_value=1, max_value=MAX_VARINT)
varints = st.integers(min_value=0, max_value=MAX_VARINT)
control_messages: st.SearchStrategy[ControlMessage] = st.one_of(
    st.builds(Hello, varints),
    st.builds(Demand, flows, varints, st.integers(0, 255), varints, track_ids),
    st.builds(Close, flows, st.sampled_from(CloseReason)),
    st.builds(Rates, flows, st.lists(varints, max_size=MAX_RATES).map(tuple)),
    st.builds(
        Streams,
        flows,
        st.lists(
            st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255)), max_size=MAX_STREAMS
        ).map(tuple),
    ),
)


@given(control_messages)
def test_control_messages_round_trip(message: ControlMessage) -> None:
    datagram = encode_control(message)
    flow, offset = split_flow(datagram)
    assert flow == 0
    assert parse_control(datagram, offset) == message
    # Any truncation or trailing byte is malformed, never a different message.
    for cut in range(offset, len(datagram)):
        with pytest.raises(ParseError):
            parse_control(datagram[:cut], offset)
    with pytest.raises(ParseError):
        parse_control(datagram + b"\x00", offset)


@given(st.binary(max_size=96))
def test_parsers_raise_only_parse_error(data: bytes) -> None:
    try:
        flow, offset = split_flow(data)
        if flow == 0:
            parse_control(data, offset)
        else:
            is_rtcp(data, offset)
    except ParseError:
        pass


@given(st.binary(max_size=96))
def test_a_pipe_drops_and_counts_any_garbage(data: bytes) -> None:
    pipe = Pipe(role=0, now=0.0)
    pipe.take_datagrams()
    event = pipe.receive(data, now=0.0)
    # Garbage can at most be a control message that changes nothing we hold, or a demand.
    assert event is None or isinstance(event, FlowRequested)
    counted = pipe.counters.received + sum(pipe.counters.drops.values())
    assert counted == 1
    assert pipe.take_datagrams() == [] or isinstance(event, type(None))


def test_rtp_and_rtcp_are_told_apart_as_rfc_5761_does() -> None:
    assert is_rtcp(b"\x00" + pli(5), 1)
    assert not is_rtcp(b"\x02" + rtp(5, 1), 1)
    with pytest.raises(ParseError):
        is_rtcp(b"\x02" + b"\x40" + rtp(5, 1)[1:], 1)  # version 1
    with pytest.raises(ParseError):
        is_rtcp(b"\x02" + rtp(5, 1)[:11], 1)  # an RTP header cut short


def test_a_malformed_demand_is_refused() -> None:
    long_track = "T" * (MAX_TRACK_ID_BYTES + 1)
    with pytest.raises(ValueError):
        encode_control(Demand(2, 0, 1, 0, long_track))
    datagram = bytearray(encode_control(Demand(2, 0, 1, 0, "TR_x")))
    datagram[-5] = MAX_TRACK_ID_BYTES + 1  # the track id's length byte
    with pytest.raises(ParseError):
        parse_control(bytes(datagram), 1)
    with pytest.raises(ParseError):  # flow 0 is the control flow, never a publication's
        parse_control(encode_control(Close(1, CloseReason.ENDED)).replace(b"\x01", b"\x00", 1), 1)


# -- the pipe ------------------------------------------------------------------------------


def test_a_flow_carries_only_the_demanded_layers() -> None:
    link = Link()
    link.flush()
    flow = link.b.open_flow("TR_cam", spatial_mask=0b001, bitrate=300_000, now=link.now)
    assert flow is not None and flow % 2 == 1  # role 1 allocates odd flow ids
    at_a, _ = link.flush()
    assert at_a == [FlowRequested(flow, "TR_cam", 0b001, 300_000)]
    assert link.a.outbound_flows() == {flow: "TR_cam"}

    low, high = rtp(0x111, 7), rtp(0x333, 9)
    datagram = link.a.relay(flow, low, spatial=0)
    assert datagram is not None
    assert link.a.relay(flow, high, spatial=2) is None
    assert link.a.counters.filtered == 1
    event = link.b.receive(datagram, now=link.now)
    assert isinstance(event, Media) and not event.rtcp
    assert event.data[event.offset :] == low  # the packet as relayed, byte for byte

    # The remote subscribers move up: the top layer flows, the low one stops.
    link.b.set_demand(flow, spatial_mask=0b100, bitrate=2_500_000, now=link.now)
    at_a, _ = link.flush()
    assert at_a == [DemandChanged(flow, 0b100, 2_500_000)]
    assert link.a.relay(flow, high, spatial=2) is not None
    assert link.a.relay(flow, low, spatial=0) is None
    # Nothing demanded: the flow stays open and sends nothing.
    link.b.set_demand(flow, spatial_mask=0, bitrate=0, now=link.now)
    link.flush()
    assert link.a.relay(flow, high, spatial=2) is None
    assert link.a.demand(flow) == (0, 0)


def test_a_lost_demand_is_repaired_by_the_next_refresh() -> None:
    link = Link()
    link.flush()
    link.lose_to_a = 1
    flow = link.b.open_flow("TR_cam", spatial_mask=0b1, bitrate=1, now=link.now)
    assert flow is not None
    at_a, _ = link.flush()
    assert at_a == [] and link.a.outbound_flows() == {}
    at_a, _ = link.tick(REFRESH_INTERVAL)
    assert at_a == [FlowRequested(flow, "TR_cam", 0b1, 1)]

    # A lost change, too: the refresh carries the newer version.
    link.lose_to_a = 1
    link.b.set_demand(flow, spatial_mask=0b11, bitrate=2, now=link.now)
    link.flush()
    assert link.a.demand(flow) == (0b1, 1)
    at_a, _ = link.tick(REFRESH_INTERVAL)
    assert DemandChanged(flow, 0b11, 2) in at_a
    assert link.a.demand(flow) == (0b11, 2)


def test_a_late_older_demand_is_ignored() -> None:
    link = Link()
    link.flush()
    flow = link.b.open_flow("TR_cam", spatial_mask=0b1, bitrate=1, now=link.now)
    assert flow is not None
    old = link.b.take_datagrams()
    link.b.set_demand(flow, spatial_mask=0b10, bitrate=2, now=link.now)
    new = link.b.take_datagrams()
    for datagram in new + old:  # reordered, as QUIC datagrams may be
        link.a.receive(datagram, now=link.now)
    # The newer one created the flow; the older one, arriving later, changed nothing.
    assert link.a.demand(flow) == (0b10, 2)
    assert link.a.counters.drops["stale_demand"] == 1


def test_feedback_flows_upstream_and_media_only_downstream() -> None:
    link = Link()
    link.flush()
    flow = link.b.open_flow("TR_cam", spatial_mask=1, bitrate=1, now=link.now)
    assert flow is not None
    link.flush()
    upstream = link.b.send_feedback(flow, pli(0x111))
    assert upstream is not None
    assert link.a.receive(upstream, now=link.now) == Feedback(flow, pli(0x111))
    # A Sender Report travels downstream on the same flow.
    sr = link.a.relay_rtcp(flow, pli(0x111))
    assert sr is not None
    event = link.b.receive(sr, now=link.now)
    assert isinstance(event, Media) and event.rtcp
    # RTP toward the publisher's side is refused: a receiving side never sends media.
    assert link.a.receive(upstream[:1] + rtp(0x999, 1), now=link.now) is None
    assert link.a.counters.drops["wrong_direction"] == 1
    # Media on a flow nobody opened is dropped and counted.
    assert link.b.receive(b"\x21" + rtp(0x111, 1), now=link.now) is None
    assert link.b.counters.drops["unknown_flow"] == 1
    assert link.b.send_feedback(flow + 2, pli(1)) is None


def test_flows_are_bounded_and_the_refusal_reaches_the_receiving_side() -> None:
    link = Link(max_flows=2)
    link.flush()
    opened = [link.b.open_flow(f"TR_{i}", spatial_mask=1, bitrate=1, now=0.0) for i in range(2)]
    link.flush()
    # The receiving side's own bound: a third flow is refused locally.
    assert link.b.open_flow("TR_2", spatial_mask=1, bitrate=1, now=0.0) is None
    assert link.a.outbound_flows() == {f: f"TR_{i}" for i, f in enumerate(opened)}

    # A peer that ignores its bound is refused by the sending side, which says so.
    crowded = Link(max_flows=2)
    crowded.b.max_flows = 3
    crowded.flush()
    flows = [crowded.b.open_flow(f"TR_{i}", spatial_mask=1, bitrate=1, now=0.0) for i in range(3)]
    _, at_b = crowded.flush()
    assert len(crowded.a.outbound_flows()) == 2
    assert crowded.a.counters.drops["flow_limit"] == 1
    assert at_b == [FlowClosed(flows[2] or 0, CloseReason.FLOW_LIMIT, inbound=True)]
    assert crowded.b.inbound_flows() == {f: f"TR_{i}" for i, f in enumerate(flows[:2])}


def test_a_flow_the_receiving_side_stops_refreshing_expires() -> None:
    link = Link()
    link.flush()
    flow = link.b.open_flow("TR_cam", spatial_mask=1, bitrate=1, now=link.now)
    link.flush()
    link.lose_to_a = 10**6  # the receiving side is gone
    expired: list[PipeEvent] = []
    while link.now < FLOW_TIMEOUT + 2 * REFRESH_INTERVAL:
        at_a, _ = link.tick(REFRESH_INTERVAL)
        expired += at_a
    assert expired == [FlowClosed(flow or 0, CloseReason.EXPIRED, inbound=False)]
    assert link.a.outbound_flows() == {}
    assert not link.a.peer_up(now=link.now)


def test_close_and_rates_reach_the_other_side() -> None:
    link = Link()
    link.flush()
    flow = link.b.open_flow("TR_cam", spatial_mask=1, bitrate=1, now=link.now)
    assert flow is not None
    link.flush()
    link.a.send_rates(flow, (150_000, 500_000, 1_500_000))
    _, at_b = link.flush()
    assert at_b == [RatesReceived(flow, (150_000, 500_000, 1_500_000))]
    # STREAMS goes out at once (before the packets it names) and with every refresh.
    named = link.a.announce_streams(flow, ((0x111, 0), (0x333, 2)))
    assert named is not None
    assert link.b.receive(named, now=link.now) == StreamsReceived(flow, ((0x111, 0), (0x333, 2)))
    _, at_b = link.tick(REFRESH_INTERVAL)
    assert StreamsReceived(flow, ((0x111, 0), (0x333, 2))) in at_b
    # The publisher left: the sending side ends the flow and the receiving side hears it.
    link.a.close_flow(flow, reason=CloseReason.ENDED, now=link.now)
    _, at_b = link.flush()
    assert at_b == [FlowClosed(flow, CloseReason.ENDED, inbound=True)]
    assert link.b.inbound_flows() == {}
    # The receiving side unsubscribing ends the sending side's flow likewise.
    flow = link.b.open_flow("TR_cam", spatial_mask=1, bitrate=1, now=link.now)
    link.flush()
    link.b.close_flow(flow or 0, reason=CloseReason.UNSUBSCRIBED, now=link.now)
    at_a, _ = link.flush()
    assert at_a == [FlowClosed(flow or 0, CloseReason.UNSUBSCRIBED, inbound=False)]
    assert link.a.relay(flow or 0, rtp(1, 1), spatial=0) is None


def test_a_restarted_peer_is_asked_again_at_once() -> None:
    link = Link()
    link.flush()
    wanted = link.b.open_flow("TR_cam", spatial_mask=1, bitrate=1, now=link.now)
    served = link.a.open_flow("TR_mic", spatial_mask=1, bitrate=1, now=link.now)
    link.flush()
    assert link.a.outbound_flows() == {wanted: "TR_cam"}
    # Worker a dies and comes back: a new end with a new epoch.
    link.a = Pipe(role=0, now=link.now)
    _, at_b = link.flush()
    assert at_b == [PeerRestarted(link.a.epoch)]
    assert link.b.outbound_flows() == {}  # what the old a asked for is gone (TR_mic)
    assert link.a.outbound_flows() == {wanted: "TR_cam"}  # asked again without waiting
    assert served is not None and link.a.peer_up(now=link.now)
