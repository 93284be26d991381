"""Per-packet cost of relaying a publication over a pipe, against forwarding it locally.

The third case carries the pipe over the QUIC node link between two nodes (issue 15), its
media as QUIC DATAGRAM frames; the fourth, the same link with its media on the sealed media
lane (AES-GCM over plain UDP, keys over the link's control stream).

Worker A ingests a VP8 packet through its Router; a subscriber on worker B gets it through
A's relay tap, the pipe (flow id framing and parsing), B's stand-in publication and its own
Router. The same packets forwarded to a local subscriber on A is the baseline of the same
run: the ratio is what a spread room adds in CPU per relayed packet on top of the local
path (no sockets, no SRTP: see the bench fan-out for the whole path). Run with `make bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from core_parts import KERNELS, VP8, RecordingSender, subscription
from forwarder_world import rtp, vp8_payload
from pytest_benchmark.fixture import BenchmarkFixture

from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.publication import Publication
from sfu.core.relay import PipeOut, PublicationRelay, RemotePublication
from sfu.core.router import Router
from sfu.core.twcc_recorder import TwccRecorder
from sfu.transport.node_link import MAX_PENDING_DATAGRAMS
from sfu.transport.pipe import Media, Pipe, StreamsReceived

if TYPE_CHECKING:
    from test_node_pipes import World

BATCH = 1000
ROUNDS = 10
SSRC = 0x111
#: Packets between two exchanges of the node link's UDP datagrams (one event-loop turn's
#: worth of received media: the link is flushed once per turn, not per packet).
LINK_BATCH = 16
#: Fake time per exchange (aioquic paces by its clock) and the rounds allowed to drain.
LINK_STEP_S = 0.001
LINK_DRAIN_ROUNDS = 200
#: Batches published before measuring, at most (the flow's demand and first keyframe).
WARMUP_BATCHES = 20


def _publication() -> Publication:
    return Publication("TR_b", "alice", "video", "camera", "0", VP8, {}, kernels=KERNELS)


def _router(publication: Publication) -> Router:
    binder = Binder()
    binder.add_publication(publication, [(SSRC, None)])
    return Router("alice", binder, TwccRecorder(1), PeerCounters())


def _packets(start: int) -> list[bytes]:
    return [
        rtp(
            SSRC,
            start + i,
            3000 * (start + i),
            96,
            vp8_payload(i, 0, 0, False, i == 0, True, 1100),
            b"",
        )
        for i in range(BATCH)
    ]


def test_local_forward(benchmark: BenchmarkFixture) -> None:
    """Baseline: one subscriber on the publisher's own worker."""
    publication = _publication()
    router = _router(publication)
    sender = RecordingSender()
    publication.add_subscriber(subscription(publication), sender)  # type: ignore[arg-type]
    rounds = iter(range(10_000))

    def setup() -> tuple[tuple[list[bytes]], dict[str, object]]:
        sender.rtp.clear()
        return (_packets(next(rounds) * BATCH),), {}

    def run(packets: list[bytes]) -> None:
        for packet in packets:
            router.on_rtp(packet, now=1.0)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS)
    assert len(sender.rtp) == BATCH
    assert publication.streams[SSRC].packets >= BATCH


def test_relayed_forward(benchmark: BenchmarkFixture) -> None:
    """The same subscriber on another worker: tap, pipe, stand-in, its Router."""
    origin = _publication()
    router = _router(origin)
    near, far = Pipe(role=0, now=0.0), Pipe(role=1, now=0.0)
    wire: list[bytes] = []
    relay = PublicationRelay(lambda track: origin, lambda peer: PipeOut(wire.append))
    standin = _publication()
    sender = RecordingSender()
    standin.add_subscriber(subscription(standin), sender)  # type: ignore[arg-type]
    flow = far.open_flow(origin.id, spatial_mask=1, bitrate=0, now=0.0)
    assert flow is not None
    remote = RemotePublication(
        standin, far, flow, wire.append, rtcp_ssrc=5, extensions={}, declared=[]
    )
    for datagram in far.take_datagrams():
        event = near.receive(datagram, now=0.0)
        if event is not None:
            relay.on_event(1, near, event, now=0.0)
    rounds = iter(range(10_000))

    def setup() -> tuple[tuple[list[bytes]], dict[str, object]]:
        sender.rtp.clear()
        return (_packets(next(rounds) * BATCH),), {}

    def run(packets: list[bytes]) -> None:
        for packet in packets:
            router.on_rtp(packet, now=1.0)
            for datagram in wire:
                event = far.receive(datagram, now=1.0)
                if isinstance(event, Media):
                    remote.on_media(event, now=1.0)
                elif isinstance(event, StreamsReceived):
                    remote.on_streams(event)
            wire.clear()

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS)
    assert len(sender.rtp) == BATCH
    assert standin.streams[SSRC].packets >= BATCH


def test_node_link_forward(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """The same subscriber on another node: the tap, the pipe on the QUIC node link (aioquic
    DATAGRAMs both ways, acks included, two links in memory), the stand-in, its Router."""
    _node_link_forward(benchmark, tmp_path, media_lane=False)


def test_node_link_sealed_forward(benchmark: BenchmarkFixture, tmp_path: Path) -> None:
    """The same over the node link's sealed media lane: each relayed datagram sealed with
    AES-128-GCM on A and opened on B, outside QUIC (which still runs: its acks, timers)."""
    _node_link_forward(benchmark, tmp_path, media_lane=True)


def quic_backlog(world: World) -> int:
    """DATAGRAM frames node A's link holds for QUIC's pacing and congestion window."""
    return len(world.links.a._quic._datagrams_pending)


def _node_link_forward(benchmark: BenchmarkFixture, tmp_path: Path, *, media_lane: bool) -> None:
    # The two-node world of the unit tests: node A's publisher, node B's stand-in and
    # subscriber, their NodePipes over two NodeLinks exchanging datagrams in memory.
    from test_node_pipes import ORIGIN, World, _files

    from sfu.cluster.pki import mint_ca

    ca = mint_ca("bench")
    cluster = {node: _files(tmp_path, ca, node) for node in ("node-a", "node-b")}
    world = World(cluster, media_lane=media_lane, ticks_when_due=True)
    world.node_b.open(ORIGIN, world.pub_b, None)
    world.pump()
    assert world.node_b.hub.remotes, "the flow did not open"
    lane = world.links.a.lane
    assert (lane is not None and lane.up) == media_lane
    assert SSRC == 0x111  # the world's lowest layer, the one B's subscriber demands
    rounds = iter(range(10_000))

    def setup() -> tuple[tuple[list[bytes]], dict[str, object]]:
        world.subscriber.rtp.clear()
        return (_packets(next(rounds) * BATCH),), {}

    def run(packets: list[bytes]) -> None:
        for i, packet in enumerate(packets):
            world.router_a.on_rtp(packet, now=world.now)
            if i % LINK_BATCH == LINK_BATCH - 1:
                world.pump(rounds=1, step=LINK_STEP_S)
                # Back-pressure: while aioquic's pacing holds half its queue, the publisher
                # waits (more fake time), so the queue never drops and each round carries
                # every packet (the sealed lane never queues: this never loops for it).
                while quic_backlog(world) > MAX_PENDING_DATAGRAMS // 2:
                    world.pump(rounds=1, step=LINK_STEP_S)
        for _ in range(LINK_DRAIN_ROUNDS):  # what the congestion window held back
            if len(world.subscriber.rtp) >= BATCH:
                break
            world.pump(rounds=1, step=LINK_STEP_S)

    # Warm-up: with the timers at their own pace the demand and the first keyframe take a
    # few hundred fake milliseconds; measured is the steady state, where a batch crosses.
    for _ in range(WARMUP_BATCHES):
        run(*setup()[0])
        if len(world.subscriber.rtp) == BATCH:
            break
    assert len(world.subscriber.rtp) == BATCH, "the relay never reached its steady state"
    sent_before = world.links.a.lane_totals()["sent"]
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS)
    assert len(world.subscriber.rtp) == BATCH, "packets were lost on the link"
    sealed = world.links.a.lane_totals()["sent"] - sent_before
    assert sealed >= ROUNDS * BATCH if media_lane else sealed == 0
