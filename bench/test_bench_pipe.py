"""Per-packet cost of relaying a publication over a pipe, against forwarding it locally.

Worker A ingests a VP8 packet through its Router; a subscriber on worker B gets it through
A's relay tap, the pipe (flow id framing and parsing), B's stand-in publication and its own
Router. The same packets forwarded to a local subscriber on A is the baseline of the same
run: the ratio is what a spread room adds in CPU per relayed packet on top of the local
path (no sockets, no SRTP: see the bench fan-out for the whole path). Run with `make bench`.
"""

from __future__ import annotations

from core_parts import KERNELS, VP8, RecordingSender, subscription
from forwarder_world import rtp, vp8_payload
from pytest_benchmark.fixture import BenchmarkFixture

from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters
from sfu.core.publication import Publication
from sfu.core.relay import PipeOut, PublicationRelay, RemotePublication
from sfu.core.router import Router
from sfu.core.twcc_recorder import TwccRecorder
from sfu.transport.pipe import Media, Pipe, StreamsReceived

BATCH = 1000
ROUNDS = 10
SSRC = 0x111


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
