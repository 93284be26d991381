"""Per-packet cost of relayed media on the receiving side: data plane against Router.

Node B of a relay pipe (``relay_far_side.FarSide``) with eight subscribers of a relayed VP8
publication; each round hands 500 relayed packets across the pipe (``Pipe.relay`` on A,
``Pipe.receive`` on B: the same in both cases) and fans them out:

- ``data_plane``: the relayed publication is a plaintext source of the forwarder
  (``DataPlane.ingest``: rewrite and SRTP-protect for the eight in the kernels);
- ``router``: the way it was before: the relayed publication's Router, Subscription and
  munger on the Python path for every packet.

The records the forwarder logs are replayed once per round, as the server's timer does.
Run with ``make bench`` (or ``pytest bench/test_bench_relay_ingest.py --benchmark-enable``).
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from relay_far_side import FarSide, packet

from sfu.core.kernels import Kernels

SUBSCRIBERS = 8
PACKETS = 500
ROUNDS = 20


@pytest.mark.parametrize("case", ["data_plane", "router"])
def test_relayed_media_fanned_out_on_the_receiving_side(
    benchmark: BenchmarkFixture, kernels: Kernels, case: str
) -> None:
    side = FarSide(kernels, plane=case == "data_plane", subs=SUBSCRIBERS, decode=False)
    side.announce()
    state: dict[str, Any] = {"seq": 0, "rounds": 0, "batch": []}

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        start = state["seq"]
        seqs = range(start + 1, start + PACKETS + 1)
        state["batch"] = [packet(seq, key=seq == 1) for seq in seqs]
        state["seq"] = start + PACKETS
        return (), {}

    def run() -> None:
        for relayed in state["batch"]:
            side.relay(relayed)
        state["rounds"] += 1
        side.replay()

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    packets = PACKETS * state["rounds"]
    # Every relayed packet reached every subscriber, on the path the case names.
    assert side.delivered == packets * SUBSCRIBERS
    assert side.remote.counters.rtp_in == packets
    if side.dataplane is not None:
        assert side.dataplane.forwarder.ingested_packets == packets
