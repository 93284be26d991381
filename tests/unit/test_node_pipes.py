"""Media between nodes, sans-I/O: the relay pipe over two QUIC node links driven by hand.

Node A (the dialling end, ``node-a``) has the publisher: a three-layer VP8 simulcast
publication ingested by its Router. Node B lists it as a stand-in (what the room bus's
``track_published`` makes) with one subscriber. The links exchange their UDP datagrams at a
fake time; the test may lose relayed datagrams on the way. Checked: the carrier's lanes
(control on the stream, flows as DATAGRAMs or, once keyed, on the sealed media lane, each
refused on the other), only demanded layers
cross, PLI and NACK flow back, and unsubscribe, publication end and link loss leave no flow
or tap behind, with the stand-in fed again when a link comes back.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from core_parts import KERNELS, VP8, RecordingSender, subscription
from forwarder_world import rtp, vp8_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.cluster.node_pipes import FLUSH_AT, TICK_S, NodePipes
from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.publication import Publication, SourceStream
from sfu.core.relay import RelayTap
from sfu.core.router import Router
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.pipe import (
    CONTROL_FLOW,
    MAX_VARINT,
    CloseReason,
    Demand,
    MessageType,
    encode_control,
)
from sfu.packet.rtp import RtpPacket
from sfu.transport.link_pipe import LinkPipe
from sfu.transport.node_link import (
    ControlReceived,
    FlowReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    NodeLink,
    link_configuration,
)
from sfu.transport.pipe import DemandChanged, FlowClosed, FlowRequested, Media

A_ADDR = ("127.0.0.1", 5001)
B_ADDR = ("127.0.0.1", 5002)
SSRCS = (0x111, 0x222, 0x333)
#: The origin each node gives the other (the room bus's first node origin).
ORIGIN = 1 << 16

Files = tuple[str, str, str]


def _files(folder: Path, ca: tuple[bytes, bytes], node: str) -> Files:
    cert, key = mint_node_cert(ca[0], ca[1], node)
    (folder / "ca.pem").write_bytes(ca[0])
    (folder / f"{node}.pem").write_bytes(cert)
    write_pem(folder / f"{node}.key", key, private=True)
    return str(folder / "ca.pem"), str(folder / f"{node}.pem"), str(folder / f"{node}.key")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Files]:
    folder = tmp_path_factory.mktemp("xnode-ca")
    ca = mint_ca("xnode")
    return {node: _files(folder, ca, node) for node in ("node-a", "node-b")}


def publication(track_id: str = "TR_cam") -> Publication:
    return Publication(
        track_id, "alice", "video", "camera", "0", VP8, {}, ("q", "h", "f"), kernels=KERNELS
    )


def vp8(layer: int, seq: int, *, key: bool) -> bytes:
    payload = vp8_payload(seq, seq, 0, sync=False, key=key, start=True, size=60)
    return rtp(SSRCS[layer], seq, 3000 * seq, 96, payload, b"")


class Links:
    """A dialled link (A's end) and its accepted end (B's), exchanging datagrams at once."""

    def __init__(
        self, cluster: dict[str, Files], clock: Callable[[], float], *, media_lane: bool = True
    ) -> None:
        self.clock = clock
        #: Whether the links key their sealed media lane (False: QUIC DATAGRAMs only).
        self.media_lane = media_lane
        ca, cert, key = cluster["node-a"]
        self._client_conf = link_configuration(
            is_client=True, ca_file=ca, cert_file=cert, key_file=key, server_name="node-b"
        )
        ca, cert, key = cluster["node-b"]
        self._server_conf = link_configuration(
            is_client=False, ca_file=ca, cert_file=cert, key_file=key
        )
        self.a: NodeLink = NodeLink(
            self._client_conf, peer_address=B_ADDR, now=clock(), media_lane=media_lane
        )
        self.b: NodeLink | None = None
        #: UDP datagrams sent (flushed) by each end and not yet delivered, in order.
        self.wire: dict[str, list[bytes]] = {"a": [], "b": []}

    def redial(self) -> None:
        self.a = NodeLink(
            self._client_conf, peer_address=B_ADDR, now=self.clock(), media_lane=self.media_lane
        )
        self.b = None
        self.wire = {"a": [], "b": []}

    def flush(self, link: NodeLink) -> None:
        """What a node's socket does when told to flush ``link``: its datagrams leave now."""
        side = "a" if link is self.a else "b"
        self.wire[side] += [data for data, _ in link.datagrams(now=self.clock())]

    def exchange(self) -> tuple[list[LinkEvent], list[LinkEvent]]:
        """One round both ways: the events each end got (timers run when due)."""
        now = self.clock()
        a_events: list[LinkEvent] = []
        b_events: list[LinkEvent] = []
        for link, events in ((self.a, a_events), (self.b, b_events)):
            if link is not None and (timer := link.next_timer()) is not None and timer <= now:
                events += link.handle_timer(now=now)
        self.flush(self.a)
        to_b, self.wire["a"] = self.wire["a"], []
        for data in to_b:
            if self.b is None:
                self.b = NodeLink.accept(
                    self._server_conf, data, A_ADDR, now=now, media_lane=self.media_lane
                )
                assert self.b is not None
            b_events += self.b.receive(data, A_ADDR, now=now)
        if self.b is not None:
            self.flush(self.b)
            to_a, self.wire["b"] = self.wire["b"], []
            for data in to_a:
                a_events += self.a.receive(data, B_ADDR, now=now)
        return a_events, b_events


class World:
    """Node A (publisher) and node B (a stand-in of its track, one subscriber)."""

    def __init__(
        self, cluster: dict[str, Files], *, media_lane: bool = True, ticks_when_due: bool = False
    ) -> None:
        self.now = 50.0
        #: Run the nodes' timers only when due, as their loop timer does (the benchmarks);
        #: by default every round, so the tests need not know the timers.
        self.ticks_when_due = ticks_when_due
        self._due: dict[int, float] = {}
        self.links = Links(cluster, lambda: self.now, media_lane=media_lane)
        #: Callbacks deferred to the end of the loop turn (the link flushes of a batch).
        self.soon: list[Callable[[], None]] = []
        # Node A: the publisher's router; the relay finds its publication by track id.
        self.pub_a = publication()
        binder = Binder()
        binder.add_publication(self.pub_a, [(ssrc, None) for ssrc in SSRCS])
        self.router_a = Router("alice", binder, TwccRecorder(1), PeerCounters())
        self.keyframes: list[int] = []
        self.pub_a.keyframe_requester = self._publisher_keyframe
        self.node_a = NodePipes(
            lambda track: self.pub_a if track == self.pub_a.id else None,
            lambda peer: ORIGIN if peer == "node-b" else None,
            self.links.flush,
            lambda: self.now,
            self.soon.append,
        )
        # Node B: the stand-in and a subscriber of it.
        self.pub_b = publication()
        self.sub = subscription(self.pub_b)
        self.subscriber = RecordingSender()
        self.pub_b.add_subscriber(self.sub, self.subscriber)  # type: ignore[arg-type]
        self.node_b = NodePipes(
            lambda track: None,
            lambda peer: ORIGIN if peer == "node-a" else None,
            self.links.flush,
            lambda: self.now,
            self.soon.append,
        )
        #: Every link event B got, in order.
        self.b_log: list[LinkEvent] = []
        #: Relayed media datagrams (FlowReceived at B) to lose, by their index.
        self.lose_to_b: set[int] = set()
        self._to_b = 0

    def _publisher_keyframe(self, stream: SourceStream, now: float) -> bool:
        self.keyframes.append(stream.ssrc)
        return True

    def _deliver(self, pipes: NodePipes, link: NodeLink | None, events: list[LinkEvent]) -> None:
        for event in events:
            if isinstance(event, LinkUp):
                assert link is not None
                pipes.link_up(event.peer, link)
            elif isinstance(event, LinkDown):
                assert link is not None and link.peer is not None
                pipes.link_down(link.peer, link)
            elif isinstance(event, FlowReceived):
                peer = "node-a" if pipes is self.node_b else "node-b"
                if pipes is self.node_b:
                    self._to_b += 1
                    if self._to_b - 1 in self.lose_to_b:
                        continue
                pipes.on_flow(peer, event.flow_id, event.payload)
            elif isinstance(event, ControlReceived):
                peer = "node-a" if pipes is self.node_b else "node-b"
                pipes.on_control(peer, event.message)

    def run_soon(self) -> None:
        """End the loop turn: the deferred flushes run."""
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()

    def pump(self, rounds: int = 30, step: float = 0.005) -> None:
        """Exchange datagrams, ``step`` of fake time a round, running both nodes' timers."""
        for _ in range(rounds):
            self.run_soon()
            self.now += step
            for node in (self.node_a, self.node_b):
                if self.ticks_when_due and self._due.get(id(node), 0.0) > self.now:
                    continue
                node.handle_timer(now=self.now)
                self._due[id(node)] = node.next_timer() or self.now + 1.0
            a_events, b_events = self.links.exchange()
            self.b_log += b_events
            self._deliver(self.node_a, self.links.a, a_events)
            self._deliver(self.node_b, self.links.b, b_events)

    def publish(self, layer: int, seq: int, *, key: bool = False) -> None:
        self.router_a.on_rtp(vp8(layer, seq, key=key), now=self.now)

    def taps(self) -> list[RelayTap]:
        return [sub for sub, _ in self.pub_a.fanout if isinstance(sub, RelayTap)]

    def received_seqs(self) -> list[int]:
        return [RtpPacket.parse(p).sequence_number for p in self.subscriber.rtp]


def test_the_carrier_keeps_control_on_the_stream_and_media_in_datagrams(
    cluster: dict[str, Files],
) -> None:
    now = [10.0]
    links = Links(cluster, lambda: now[0])
    a_events: list[LinkEvent] = []
    b_events: list[LinkEvent] = []

    def pump() -> None:
        for _ in range(30):
            now[0] += 0.005
            got_a, got_b = links.exchange()
            a_events.extend(got_a)
            b_events.extend(got_b)

    pump()
    assert links.b is not None and LinkUp("node-a") in b_events
    a, b = LinkPipe(links.a, now=now[0]), LinkPipe(links.b, now=now[0])
    assert (a.pipe.role, b.pipe.role) == (0, 1)  # the dialling node allocates even flows
    flow = b.pipe.open_flow("TR_cam", spatial_mask=1, bitrate=0, now=now[0])
    assert flow is not None and flow % 2 == 1
    b.flush()
    pump()
    controls = [e.message for e in a_events if isinstance(e, ControlReceived)]
    requested = [a.receive_control(m, now=now[0]) for m in controls]
    assert FlowRequested(flow, "TR_cam", 1, 0) in requested
    assert not any(isinstance(e, FlowReceived) for e in a_events)  # no control as datagram
    # Media down the flow, untouched, as one DATAGRAM each.
    packet = vp8(0, 1, key=True)
    datagram = a.pipe.relay(flow, packet, 0)
    assert datagram is not None and a.send(datagram)
    pump()
    flows = [e for e in b_events if isinstance(e, FlowReceived)]
    assert [(e.flow_id, e.payload) for e in flows] == [(flow, packet)]
    media = b.receive_flow(flows[0].flow_id, flows[0].payload, now=now[0])
    assert isinstance(media, Media) and media.data[media.offset :] == packet and not media.rtcp
    # The wrong lane is refused and counted: control in a DATAGRAM, media on the stream.
    before = b.pipe.counters.drops["malformed"]
    demand = encode_control(Demand(flow + 1, 0, 1, 0, "TR_x"))
    assert b.receive_flow(CONTROL_FLOW, demand[1:], now=now[0]) is None
    assert b.receive_control(datagram, now=now[0]) is None
    assert b.pipe.counters.drops["malformed"] == before + 2
    # A demand change and a close cross reliably and in order.
    b.pipe.set_demand(flow, spatial_mask=0b101, bitrate=900_000, now=now[0])
    b.pipe.close_flow(flow, reason=CloseReason.UNSUBSCRIBED, now=now[0])
    b.flush()
    a_events.clear()
    pump()
    events = [
        a.receive_control(e.message, now=now[0]) for e in a_events if isinstance(e, ControlReceived)
    ]
    assert [e for e in events if e is not None] == [
        DemandChanged(flow, 0b101, 900_000),
        FlowClosed(flow, CloseReason.UNSUBSCRIBED, inbound=False),
    ]
    assert a.pipe.outbound_flows() == {}


@pytest.mark.parametrize("media_lane", [True, False], ids=["sealed-lane", "quic-datagrams"])
def test_a_stand_in_is_fed_over_the_link_with_only_its_demanded_layer(
    cluster: dict[str, Files], media_lane: bool
) -> None:
    world = World(cluster, media_lane=media_lane)
    # The track is listed on B before the link is up: nothing to ask yet, but it is kept.
    assert world.node_b.open(ORIGIN, world.pub_b, None)
    assert world.node_b.hub.remotes == {}
    world.pump()
    assert world.node_b.carriers and world.node_a.carriers
    # The link came up: B asked for the track, A's publication has one tap, and the layer
    # B's subscriber starts on was asked a keyframe of.
    assert [tap.subscriber_id for tap in world.taps()] == [f"pipe:{ORIGIN}"]
    assert world.keyframes == [SSRCS[0]]
    for seq in range(1, 4):
        for layer in range(3):
            world.publish(layer, seq, key=seq == 1)
    world.pump()
    carrier_a = world.node_a.carriers[ORIGIN]
    assert carrier_a.pipe.counters.filtered == 6  # layers 1 and 2: nobody on B wants them
    assert world.received_seqs() == [1, 2, 3]
    assert {RtpPacket.parse(p).ssrc for p in world.subscriber.rtp} == {0x9000}
    assert world.pub_b.streams[SSRCS[0]].packets == 3
    # The media crossed on the lane chosen: sealed once keyed, else QUIC DATAGRAM frames.
    sealed = world.links.a.lane_totals()["sent"]
    assert sealed == 3 if media_lane else sealed == 0
    assert world.links.a.flows_sent == 3
    # A keyframe B's subscriber needs goes up the link as a PLI and reaches the publisher.
    world.keyframes.clear()
    assert world.pub_b.request_keyframe(world.pub_b.streams[SSRCS[0]], world.now)
    world.pump()
    assert world.keyframes == [SSRCS[0]]


@pytest.mark.parametrize("media_lane", [True, False], ids=["sealed-lane", "quic-datagrams"])
def test_a_datagram_lost_between_nodes_is_nacked_and_resent(
    cluster: dict[str, Files], media_lane: bool
) -> None:
    world = World(cluster, media_lane=media_lane)
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    world.lose_to_b = {world._to_b + 2}  # the third media datagram from now on
    for seq in range(1, 6):
        world.publish(0, seq, key=seq == 1)
        world.pump(rounds=1)
    assert world.received_seqs() == [1, 2, 4, 5]
    world.pump(rounds=40, step=0.01)
    assert world.node_a.hub.relay.retransmitted == 1
    assert sorted(world.received_seqs()) == [1, 2, 3, 4, 5]


def test_unsubscribe_and_publication_end_leave_no_flow_behind(
    cluster: dict[str, Files],
) -> None:
    world = World(cluster)
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    assert world.taps()
    # B's only subscriber leaves: the flow stays open (the track is still listed) but the
    # demand drops to nothing, so no layer crosses.
    world.pub_b.remove_subscriber(world.sub)
    world.pump()
    flow = next(iter(world.node_a.carriers[ORIGIN].pipe.outbound_flows()))
    assert world.node_a.carriers[ORIGIN].pipe.demand(flow) == (0, 0)
    before = len(world.subscriber.rtp)
    world.publish(0, 1, key=True)
    world.pump()
    assert len(world.subscriber.rtp) == before
    # The track is unpublished (B's room forgets the stand-in): the flow and the tap end.
    world.node_b.close(world.pub_b)
    world.pump()
    assert world.taps() == []
    assert world.node_a.carriers[ORIGIN].pipe.outbound_flows() == {}
    assert world.node_b.carriers[ORIGIN].pipe.inbound_flows() == {}
    assert world.node_b.wanted() == 0
    # Listed again, then the publisher on A stops: A closes the flow at once.
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    assert world.taps()
    world.node_a.ended(world.pub_a)
    world.pump()
    assert world.taps() == []
    assert world.node_b.hub.remotes == {}
    assert world.node_a.carriers[ORIGIN].pipe.outbound_flows() == {}


def test_link_loss_ends_the_flows_and_a_new_link_feeds_the_stand_in_again(
    cluster: dict[str, Files],
) -> None:
    world = World(cluster)
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    assert world.taps() and world.node_b.hub.remotes
    world.links.a.close("test")
    world.pump()
    # Both ends saw the link go: no pipe, no tap, no remote publication left.
    assert world.node_a.carriers == {} and world.node_b.carriers == {}
    assert world.taps() == [] and world.node_b.hub.remotes == {}
    assert world.node_b.wanted() == 1  # still listed in B's room
    # A new link (the next lease renewal dials it): the stand-in asks for its track again.
    world.links.redial()
    world.pump()
    assert len(world.taps()) == 1 and len(world.node_b.hub.remotes) == 1
    world.publish(0, 1, key=True)
    world.pump()
    assert world.received_seqs() == [1]


def test_a_newly_demanded_layer_is_announced_before_its_first_packet(
    cluster: dict[str, Files],
) -> None:
    """STREAMS (control stream) must reach B before the layer's first DATAGRAM: in one QUIC
    packet aioquic puts DATAGRAM frames before stream frames, so the carrier's owner sends
    control at once, and B binds the new layer's SSRC before its keyframe arrives."""
    world = World(cluster)
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    for layer in range(3):
        world.publish(layer, 1, key=True)
    world.pump()
    # B's allocator aims at the top layer: the demand grows, and A's next top-layer packet
    # (a keyframe, asked for) is the first B sees of that SSRC.
    world.sub.selector.set_target(2, None)  # type: ignore[union-attr]
    world.pump()
    carrier_a = world.node_a.carriers[ORIGIN]
    flow = next(iter(carrier_a.pipe.outbound_flows()))
    demand = carrier_a.pipe.demand(flow)
    assert demand is not None and demand[0] & 0b100
    # A publisher that added a stream since the flow opened: announced with its packet,
    # and the announcement is on B's side first.
    next(iter(world.taps())).announced = frozenset()
    mark = len(world.b_log)
    world.publish(2, 2, key=True)
    world.pump()
    kinds = [
        "streams"
        if isinstance(e, ControlReceived) and e.message[1] == MessageType.STREAMS
        else "media"
        if isinstance(e, FlowReceived)
        else "other"
        for e in world.b_log[mark:]
    ]
    assert kinds.index("streams") < kinds.index("media"), kinds
    assert world.pub_b.layers[2].ssrc == SSRCS[2]
    assert world.pub_b.layers[2].packets == 1


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(flow=st.integers(min_value=0, max_value=MAX_VARINT), data=st.binary(max_size=80))
def test_whatever_a_peer_sends_is_dropped_and_counted_never_raised(
    cluster: dict[str, Files], flow: int, data: bytes
) -> None:
    """Random DATAGRAMs and control messages on a link's pipe: an event or a counted drop."""
    link = NodeLink(
        link_configuration(
            is_client=True,
            ca_file=cluster["node-a"][0],
            cert_file=cluster["node-a"][1],
            key_file=cluster["node-a"][2],
            server_name="node-b",
        ),
        peer_address=B_ADDR,
        now=1.0,
    )
    carrier = LinkPipe(link, now=1.0)
    counters = carrier.pipe.counters
    before = counters.received + sum(counters.drops.values())
    carrier.receive_flow(flow, data, now=1.0)
    carrier.receive_control(data, now=1.0)
    assert counters.received + sum(counters.drops.values()) == before + 2


def test_the_timer_runs_fast_only_while_other_nodes_tracks_are_fed(
    cluster: dict[str, Files],
) -> None:
    """Demand and NACK polling every TICK_S on the subscribers' node; the publishing node
    (and an idle one) wakes only for the pipe's refresh; no link, no timer."""
    world = World(cluster)
    assert world.node_a.next_timer() is None and world.node_b.next_timer() is None
    world.pump()
    refresh = world.node_a.carriers[ORIGIN].next_timer()
    assert world.node_a.next_timer() == refresh and refresh > world.now + TICK_S
    world.node_b.open(ORIGIN, world.pub_b, None)
    due_b = world.node_b.next_timer()
    assert due_b is not None and due_b <= world.now + TICK_S
    world.pump()
    assert world.taps()  # A taps B's flow, yet its timer stays at the refresh
    due_a = world.node_a.next_timer()
    assert due_a is not None and due_a > world.now + TICK_S
    world.node_b.close(world.pub_b)
    due_b = world.node_b.next_timer()
    assert due_b is not None and due_b > world.now + TICK_S


def test_a_long_batch_leaves_the_sealed_lane_in_slices(cluster: dict[str, Files]) -> None:
    """More media in one loop turn than the link queues (a keyframe burst, a late loop) is
    sent every FLUSH_AT datagrams, not dropped at the 512th."""
    world = World(cluster)
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    world.publish(0, 1, key=True)
    world.pump()
    assert world.received_seqs() == [1]
    link = world.links.a
    assert link.lane is not None and link.lane.up and world.links.b is not None
    before = world.links.b.lane_totals()["received"]
    for seq in range(2, 602):  # one batch: no loop turn between the packets
        payload = vp8_payload(seq & 0x7F, seq & 0xFF, 0, sync=False, key=False, start=True, size=60)
        world.router_a.on_rtp(rtp(SSRCS[0], seq, 3000 * seq, 96, payload, b""), now=world.now)
    assert link.dropped_congested == 0 and link.sealed_pending < FLUSH_AT
    world.pump()
    assert world.links.b.lane_totals()["received"] - before >= 600  # every one crossed
    assert len(world.received_seqs()) > 590  # (B's forwarder skips a few picture id wraps)


def test_a_link_is_a_relay_input_of_the_data_plane_while_it_is_up(
    cluster: dict[str, Files],
) -> None:
    """With a data plane, B's link (once up, its lane made) is a relay input there, with
    the lane's own opener, and the stand-in's flow is routed to its source; what the
    forwarder counted is folded into the link's and the pipe's counters; the link going
    down closes the input (its counts folded first), a new link opens a new one."""
    from types import SimpleNamespace

    from sfu.core.dataplane import DataPlane
    from sfu.core.kernels import REFERENCE

    world = World(cluster)
    plane = DataPlane(kernels=REFERENCE)  # the test's links seal with the reference lane
    opened: list[tuple[NodeLink, int, bytes]] = []
    links = SimpleNamespace(
        up={},
        link_socket=None,
        flow_opened=lambda link, flow, payload: opened.append((link, flow, payload)),
    )
    world.node_b.plane = plane
    world.node_b.hub.plane = plane
    world.node_b.attach(links)  # type: ignore[arg-type]
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    carrier = world.node_b.carriers[ORIGIN]
    link = carrier.link
    assert link.lane is not None and world.node_b.inputs_opened == 1
    entry = plane._inputs[carrier.pipe]
    (remote,) = world.node_b.hub.remotes.values()
    assert plane._flows[carrier.pipe] == {remote.flow: remote}
    # The forwarder's counts reach the link and the pipe as the Python path counts them.
    flows, octets, seen = link.flows_received, link.bytes_received, carrier.pipe.peer_seen
    entry.fold(3, 300, 1, world.now + 1.0)
    assert (link.flows_received, link.bytes_received) == (flows + 3, octets + 300)
    assert carrier.pipe.peer_seen == world.now + 1.0 and seen is not None
    # What the forwarder opened and kept goes on through the link (the links' path).
    entry.deliver(remote.flow, b"\x81\xc8\x00\x01" + bytes(4))
    assert opened == [(link, remote.flow, b"\x81\xc8\x00\x01" + bytes(4))]
    # The link goes down: the input is closed.
    world.links.a.close("test")
    world.pump()
    assert carrier.pipe not in plane._inputs and world.node_b.carriers == {}
    assert carrier.pipe not in plane._flows  # the stand-in's source went with its flow
    world.links.redial()
    world.pump()
    assert world.node_b.inputs_opened == 2
    assert world.node_b.carriers[ORIGIN].pipe in plane._inputs
