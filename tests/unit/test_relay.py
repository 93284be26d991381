"""A publication relayed over a pipe: publisher's worker A, subscriber's worker B, no sockets.

Worker A ingests a three-layer VP8 simulcast publication through its Router; worker B holds
the relayed publication (``RemotePublication``) and one ordinary subscription of it. The
pipe's datagrams are handed across by the test, which may lose some.
"""

from __future__ import annotations

from core_parts import KERNELS, VP8, RecordingSender, subscription
from forwarder_world import rtp, vp8_payload
from ingest_paths import VIDEO_SSRCS, VP8_PT, PathWorld
from ingest_paths import vp8 as vp8_path

from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.kernels import Kernels
from sfu.core.publication import Publication, SourceStream
from sfu.core.relay import PipeOut, PublicationRelay, RemotePublication, spatial_demand
from sfu.core.router import Router
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.pipe import CloseReason
from sfu.packet.rtp import RtpPacket
from sfu.transport.pipe import FlowClosed, Media, Pipe, StreamsReceived

SSRCS = (0x111, 0x222, 0x333)
DECLARED: list[tuple[int, int | None]] = [(ssrc, None) for ssrc in SSRCS]


def publication(track_id: str = "TR_cam") -> Publication:
    return Publication(
        track_id, "alice", "video", "camera", "0", VP8, {}, ("q", "h", "f"), kernels=KERNELS
    )


def vp8(layer: int, seq: int, *, key: bool) -> bytes:
    payload = vp8_payload(seq, seq, 0, sync=False, key=key, start=True, size=60)
    return rtp(SSRCS[layer], seq, 3000 * seq, 96, payload, b"")


class World:
    """Worker A (publisher) and worker B (one subscriber), joined by a pipe."""

    def __init__(self) -> None:
        self.now = 10.0
        self.pipe_a = Pipe(role=0, now=self.now)
        self.pipe_b = Pipe(role=1, now=self.now)
        self.to_a: list[bytes] = []
        self.to_b: list[bytes] = []
        # Worker A: the publisher's router and the relay of its publications.
        self.pub_a = publication()
        binder = Binder()
        binder.add_publication(self.pub_a, DECLARED)
        self.router_a = Router("alice", binder, TwccRecorder(1), PeerCounters())
        self.keyframes: list[int] = []
        self.pub_a.keyframe_requester = self._publisher_keyframe
        self.relay = PublicationRelay(
            lambda track: self.pub_a if track == self.pub_a.id else None,
            lambda peer: PipeOut(lambda datagram: self.to_b.append(datagram)),
        )
        # Worker B: the relayed publication and a subscriber of it.
        self.pub_b = publication()
        self.sub = subscription(self.pub_b)
        self.subscriber = RecordingSender()
        self.pub_b.add_subscriber(self.sub, self.subscriber)  # type: ignore[arg-type]
        flow = self.pipe_b.open_flow(
            self.pub_b.id, spatial_mask=spatial_demand(self.pub_b), bitrate=0, now=self.now
        )
        assert flow is not None
        self.flow = flow
        self.remote = RemotePublication(
            self.pub_b,
            self.pipe_b,
            flow,
            lambda datagram: self.to_a.append(datagram),
            rtcp_ssrc=5,
            extensions={},
            declared=[],  # the publishing side names the SSRCs (STREAMS)
        )
        self.closed: list[FlowClosed] = []

    def _publisher_keyframe(self, stream: SourceStream, now: float) -> bool:
        self.keyframes.append(stream.ssrc)
        return True

    def run(self, *, lose_to_b: set[int] | None = None) -> None:
        """Hand every queued datagram across until none is left; ``lose_to_b`` are the
        indexes (in order of sending) of relayed media datagrams lost on the way to B."""
        lost = lose_to_b or set()
        sent_to_b = 0
        while True:
            self.to_a += self.pipe_b.take_datagrams()
            self.to_b += self.pipe_a.take_datagrams()
            if not self.to_a and not self.to_b:
                return
            to_a, self.to_a = self.to_a, []
            for datagram in to_a:
                event = self.pipe_a.receive(datagram, now=self.now)
                if event is not None:
                    assert self.relay.on_event(1, self.pipe_a, event, now=self.now)
            to_b, self.to_b = self.to_b, []
            for datagram in to_b:
                event = self.pipe_b.receive(datagram, now=self.now)
                if isinstance(event, Media):
                    if sent_to_b in lost:
                        sent_to_b += 1
                        continue
                    sent_to_b += 1
                    self.remote.on_media(event, now=self.now)
                elif isinstance(event, StreamsReceived):
                    self.remote.on_streams(event)
                elif isinstance(event, FlowClosed):
                    self.closed.append(event)

    def publish(self, layer: int, seq: int, *, key: bool = False) -> None:
        self.router_a.on_rtp(vp8(layer, seq, key=key), now=self.now)

    def received_seqs(self) -> list[int]:
        return [RtpPacket.parse(p).sequence_number for p in self.subscriber.rtp]


def test_only_the_demanded_layer_crosses_and_the_subscriber_gets_it() -> None:
    world = World()
    world.run()
    # The flow opened: a tap joined the publication's fan-out and asked for a keyframe of
    # the one layer the far side wants (its subscriber starts on the lowest).
    assert [sub.subscriber_id for sub, _ in world.pub_a.fanout] == ["pipe:1"]
    assert world.keyframes == [SSRCS[0]]
    for seq in range(1, 4):
        for layer in range(3):
            world.publish(layer, seq, key=seq == 1)
    media = list(world.to_b)
    assert len(media) == 3  # layer 0 only: three packets of the nine
    world.run()
    assert world.pipe_a.counters.filtered == 6
    assert len(world.subscriber.rtp) == 3
    assert {RtpPacket.parse(p).ssrc for p in world.subscriber.rtp} == {0x9000}
    # The relayed publication measured what it received, as a local one would.
    assert world.pub_b.streams[SSRCS[0]].packets == 3


def test_a_keyframe_request_on_the_far_side_reaches_the_publisher() -> None:
    world = World()
    world.run()
    world.keyframes.clear()
    stream_b = world.pub_b.streams[SSRCS[1]]
    assert world.pub_b.request_keyframe(stream_b, world.now)
    world.run()
    assert world.keyframes == [SSRCS[1]]
    # The far side's requests are rate-limited per stream like a local publisher's.
    assert not world.pub_b.request_keyframe(stream_b, world.now + 0.1)


def test_a_packet_lost_in_the_pipe_is_nacked_and_resent_from_the_cache() -> None:
    world = World()
    world.run()
    for seq in range(1, 6):
        world.publish(0, seq, key=seq == 1)
    world.run(lose_to_b={2})  # the third packet (seq 3) never arrives
    assert world.received_seqs() == [1, 2, 4, 5]
    for _ in range(20):  # the NACK generator waits for reordering first
        world.now += 0.02
        world.remote.poll(now=world.now)
        world.run()
        if world.relay.retransmitted:
            break
    assert world.relay.retransmitted == 1
    assert sorted(world.received_seqs()) == [1, 2, 3, 4, 5]


def test_a_layer_switch_on_the_far_side_changes_the_demand() -> None:
    world = World()
    world.run()
    for layer in range(3):
        world.publish(layer, 1, key=True)
    world.run()
    assert world.pipe_a.demand(world.flow) == (0b001, 0)
    world.keyframes.clear()
    # The far side's allocator asks for the top layer: it must arrive before a switch.
    world.sub.selector.set_target(2, None)  # type: ignore[union-attr]
    world.remote.update_demand(now=world.now)
    world.run()
    mask = world.pipe_a.demand(world.flow)
    assert mask is not None and mask[0] & 0b100
    assert SSRCS[2] in world.keyframes
    before = len(world.to_b)
    world.publish(2, 2, key=True)
    assert len(world.to_b) == before + 1
    world.run()
    # The far side bound the top layer's SSRC from STREAMS (no mid/rid in these packets).
    assert world.pub_b.layers[2].ssrc == SSRCS[2]
    assert world.pub_b.layers[2].packets == 1


def test_the_flow_ends_with_the_publication() -> None:
    world = World()
    world.run()
    world.relay.publication_ended(world.pub_a, now=world.now)
    world.run()
    assert world.pub_a.fanout == ()
    assert world.closed == [FlowClosed(world.flow, CloseReason.ENDED, inbound=True)]
    # A track the publishing side does not have is refused at once.
    flow = world.pipe_b.open_flow("TR_gone", spatial_mask=1, bitrate=0, now=world.now)
    world.run()
    assert world.closed[-1] == FlowClosed(flow or 0, CloseReason.UNKNOWN_TRACK, inbound=True)


def test_the_forwarder_keeps_a_relayed_publication_and_logs_it_for_the_taps(
    kernels: Kernels,
) -> None:
    """While a pipe relays a publication the forwarder (compiled, or its reference) still
    forwards it to local subscribers, and logs each packet for the taps: the data plane's
    ``relay`` frames it for the flow, untouched. Without the tap it is forwarded alone."""
    world = PathWorld("forwarder", kernels)
    assert world.dataplane is not None
    forwarder = world.dataplane.forwarder
    pipe, far = Pipe(role=0, now=0.0), Pipe(role=1, now=0.0)
    sent: list[bytes] = []
    relay = PublicationRelay(
        lambda track: world.video if track == world.video.id else None,
        lambda peer: PipeOut(sent.append),
    )
    flow = far.open_flow(world.video.id, spatial_mask=1, bitrate=0, now=0.0)
    for datagram in far.take_datagrams():
        event = pipe.receive(datagram, now=0.0)
        if event is not None:
            relay.on_event(1, pipe, event, now=0.0)
    assert relay.taps
    # The flow starts by naming the publication's SSRCs (declared in its SDP here).
    streams = far.receive(sent.pop(), now=0.0)
    assert isinstance(streams, StreamsReceived)
    assert sorted(streams.streams) == sorted((s, i) for i, s in enumerate(VIDEO_SSRCS))

    fast = forwarder.fast_packets
    packet = rtp(VIDEO_SSRCS[0], 100, 9000, VP8_PT, vp8_path(1, key=True), b"")
    world.send(packet, 1.0)
    assert forwarder.fast_packets == fast + 1  # the forwarder's still
    assert len(sent) == 1
    media = far.receive(sent[0], now=1.0)
    assert isinstance(media, Media) and media.data[media.offset :] == packet  # as it came
    assert [len(world.video_seqs(i)) for i in range(2)] == [1, 1]
    # A layer the far side did not demand is not relayed (the tap decides), but forwarded.
    world.send(rtp(VIDEO_SSRCS[1], 200, 9000, VP8_PT, vp8_path(1, key=True), b""), 1.01)
    assert len(sent) == 1 and forwarder.fast_packets == fast + 2

    pipe.close_flow(flow or 0, reason=CloseReason.ENDED, now=1.0)
    relay.on_event(1, pipe, FlowClosed(flow or 0, CloseReason.UNSUBSCRIBED, False), now=1.0)
    assert world.video.fanout and not relay.taps
    world.send(rtp(VIDEO_SSRCS[0], 101, 12000, VP8_PT, vp8_path(2, key=False), b""), 1.03)
    assert forwarder.fast_packets == fast + 3
    assert len(sent) == 1 and forwarder.drain_relay() == []
    assert [len(world.video_seqs(i)) for i in range(2)] == [2, 2]


def test_only_a_newly_demanded_layer_asks_the_publisher_for_a_keyframe() -> None:
    """A demand update that changes only the bitrate, or keeps a layer, asks for no
    keyframe: the far side refreshes its demand as its meters move, and a keyframe per
    update would be a steady stream of them."""
    world = World()
    world.run()
    assert world.keyframes == [SSRCS[0]]
    for step, (mask, bitrate) in enumerate(
        [(0b001, 400_000), (0b001, 450_000), (0b011, 900_000), (0b011, 950_000), (0b001, 0)]
    ):
        world.now += 1.0  # past the per-stream request interval each time
        world.pipe_b.set_demand(world.flow, spatial_mask=mask, bitrate=bitrate, now=world.now)
        world.run()
        if step < 2:
            assert world.keyframes == [SSRCS[0]]
    # Only layer 1, when it was first demanded; dropping a layer asks for nothing either.
    assert world.keyframes == [SSRCS[0], SSRCS[1]]
    # A layer demanded again after a pause starts at a keyframe again.
    world.now += 1.0
    world.pipe_b.set_demand(world.flow, spatial_mask=0b011, bitrate=900_000, now=world.now)
    world.run()
    assert world.keyframes == [SSRCS[0], SSRCS[1], SSRCS[1]]
