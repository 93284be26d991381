"""Per-packet cost of relaying a publication to another node, on the publishing side.

A VP8 publication on node A with one local subscriber; the cases of one run, each 500 SRTP
packets per round through the data plane (unprotect, forward, SRTP protect):

- ``one_sub``: not relayed, one local subscriber (the baseline);
- ``two_subs``: not relayed, two local subscribers: the difference is what forwarding a
  packet to one more subscriber costs (the issue's yardstick: "relay cost per packet at most
  that of forwarding it to one subscriber");
- ``output``: relayed to node B through a relay output (the forwarder frames the packet for
  its flow and seals it with the media lane's kernel sealer);
- ``tap``: relayed the way it was before: the forwarder logs each packet, the data plane
  hands it to the tap, the pipe frames it, the lane seals it (``MediaLane.seal``).

No case sends on a socket: the subscribers' SRTP packets and the sealed relay datagrams are
collected (``process`` without a socket, ``drain_relay_sent``), so the figures compare the
work of each path and leave out the kernel's UDP send, which a relayed packet and a
subscriber's packet each cost once (sent in ``sendmmsg`` batches by the forwarder in both).
Run with ``make bench`` (or ``pytest bench/test_bench_relay_send.py --benchmark-enable``).
"""

from __future__ import annotations

import pytest
from ingest_paths import PathWorld
from pytest_benchmark.fixture import BenchmarkFixture

from bench.relay_rounds import packet_rounds
from sfu.core.kernels import Kernels
from sfu.core.relay import PipeOut, PublicationRelay, RelayTarget
from sfu.transport.media_lane import LaneKernels, MediaLane
from sfu.transport.node_link import MAX_DATAGRAM_DATA
from sfu.transport.pipe import Pipe

PACKETS = 500
ROUNDS = 20
T0 = 1000.0
B_ADDR = ("127.0.0.1", 4433)


def _lane(kernels: Kernels) -> MediaLane:
    """Node A's end of a keyed media lane toward node B (B's end only answers keys)."""
    a = MediaLane(B_ADDR, now=T0, kernels=LaneKernels(kernels.LaneSealer, kernels.LaneOpener))
    b = MediaLane(("127.0.0.1", 1), now=T0)
    while a.has_messages or b.has_messages:
        for message in a.take_messages():
            b.receive_message(message, now=T0)
        for message in b.take_messages():
            a.receive_message(message, now=T0)
    assert a.up
    return a


def _world(kernels: Kernels, case: str, sealed: list[bytes]) -> PathWorld:
    world = PathWorld("forwarder", kernels, subs=2 if case == "two_subs" else 1)
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    if case in ("output", "tap"):
        lane = _lane(kernels)
        target = RelayTarget(lane.sealer, None, B_ADDR, MAX_DATAGRAM_DATA)

        def to_link(datagram: bytes) -> None:
            out = lane.seal(datagram)
            assert out is not None
            sealed.append(out)

        relay = PublicationRelay(
            lambda track: world.video if track == world.video.id else None,
            lambda peer: PipeOut(to_link, (lambda: target) if case == "output" else None),
        )
        pipe, far = Pipe(role=0, now=0.0), Pipe(role=1, now=0.0)
        far.open_flow(world.video.id, spatial_mask=1, bitrate=0, now=0.0)
        for datagram in far.take_datagrams():
            event = pipe.receive(datagram, now=0.0)
            if event is not None:
                relay.on_event(1, pipe, event, now=0.0)
        (tap,) = relay.taps.values()
        assert (tap.output is not None) == (case == "output")
    return world


@pytest.mark.parametrize("case", ["one_sub", "two_subs", "output", "tap"])
def test_relaying_a_publication_to_another_node(
    benchmark: BenchmarkFixture, kernels: Kernels, case: str
) -> None:
    sealed: list[bytes] = []
    world = _world(kernels, case, sealed)
    relayed = [0]

    def count() -> None:  # what the last round relayed (through the output or the tap)
        assert world.dataplane is not None
        relayed[0] += len(sealed) + len(world.dataplane.forwarder.drain_relay_sent())
        sealed.clear()

    run, setup = packet_rounds(world, PACKETS, before=count)
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    count()
    state = run.state  # type: ignore[attr-defined]
    packets = PACKETS * state["rounds"]
    subs = 2 if case == "two_subs" else 1
    assert state["delivered"] == packets * subs
    # Every packet relayed once, sealed (after the flow's STREAMS, sealed by the lane).
    assert relayed[0] == (packets + 1 if case in ("output", "tap") else 0)
