"""Per-packet cost of a relayed publication with local subscribers, in the data plane.

A VP8 publication with eight local subscribers on one worker, relayed to one other worker
(one pipe flow demanding its layer). Three cases of the same run, each 500 SRTP packets
per round through the data plane (unprotect, forward to the eight, SRTP protect):

- ``plain``: not relayed (the baseline);
- ``relayed``: relayed, as the data plane does it now (the forwarder serves the local
  subscribers and logs each packet for the tap; ``DataPlane.relay`` hands it on);
- ``python_path``: relayed the way it was before: the whole publication on the Python path
  (``DataPlane.suspend``: every packet through Router, Subscription and munger in Python).

Run with ``make bench`` (or ``pytest bench/test_bench_relay_dataplane.py --benchmark-enable``).
"""

from __future__ import annotations

import pytest
from ingest_paths import PathWorld
from pytest_benchmark.fixture import BenchmarkFixture

from bench.relay_rounds import packet_rounds
from sfu.core.kernels import Kernels
from sfu.core.relay import PipeOut, PublicationRelay
from sfu.transport.pipe import Pipe

SUBSCRIBERS = 8
PACKETS = 500
ROUNDS = 20


def _world(kernels: Kernels, *, relayed: bool) -> tuple[PathWorld, list[bytes]]:
    world = PathWorld("forwarder", kernels, subs=SUBSCRIBERS)
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    sent: list[bytes] = []
    if relayed:
        pipe, far = Pipe(role=0, now=0.0), Pipe(role=1, now=0.0)
        relay = PublicationRelay(
            lambda track: world.video if track == world.video.id else None,
            lambda peer: PipeOut(sent.append),
        )
        far.open_flow(world.video.id, spatial_mask=1, bitrate=0, now=0.0)
        for datagram in far.take_datagrams():
            event = pipe.receive(datagram, now=0.0)
            if event is not None:
                relay.on_event(1, pipe, event, now=0.0)
        assert relay.taps
    return world, sent


@pytest.mark.parametrize("case", ["plain", "relayed", "python_path"])
def test_relayed_publication_in_the_data_plane(
    benchmark: BenchmarkFixture, kernels: Kernels, case: str
) -> None:
    world, sent = _world(kernels, relayed=case != "plain")
    run, setup = packet_rounds(world, PACKETS, python_path=case == "python_path")
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    packets = PACKETS * run.state["rounds"]  # type: ignore[attr-defined]
    # Every packet reached every local subscriber, and crossed the pipe once when relayed.
    assert run.state["delivered"] == packets * SUBSCRIBERS  # type: ignore[attr-defined]
    assert len(sent) == (packets + 1 if case != "plain" else 0)  # + the flow's STREAMS
