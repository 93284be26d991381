"""Per-packet cost of receiving a relayed publication from another node, on node B.

Node B holds node A's VP8 publication as a remote publication fed by the flow A relays it
on, with local subscribers, and a data plane. The cases of one run, each 500 relayed packets
per round (about 1,000 bytes of VP8 each), every one a sealed lane datagram as A sends it:

- ``ingest``: the packets already opened and decoded, handed to the forwarder's ``ingest``
  (the data plane's share alone: the fan-out to one subscriber; the floor);
- ``input``: the lane datagrams through the forwarder's relay input (``receive_link``:
  opened with the lane's kernel opener, the flow decoded, ingested), one subscriber;
- ``input_2subs``: the same with two subscribers: the difference is what forwarding a packet
  to one more subscriber costs (the issue's yardstick: "relay cost per packet at most that of
  forwarding it to one subscriber");
- ``python``: the way it was before: per datagram ``MediaLane.open`` (the kernel opener,
  called from Python), ``decode_flow``, the pipe's ``receive_flow``, the remote publication's
  ``on_media``, ``DataPlane.ingest``, and the batch's ``flush_ingest``.

No case reads a socket or sends: the datagrams are handed in as ``recvmmsg`` would leave them
(``receive_link``), the subscribers' SRTP packets are collected; the UDP read costs each path
once per datagram (``recvmmsg`` batches in the data plane; one ``recvfrom`` each before,
not counted here). The Python case also leaves out the node link's and the hub's dispatch
(``NodeLink.receive_sealed``, ``NodeLinks._event``, ``NodePipes.on_flow``, the hub's lookup),
so it understates the old path. Run with ``pytest bench/test_bench_relay_receive.py
--benchmark-enable``.
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from relay_far_side import FarSide, packet

from sfu.core.kernels import REFERENCE, Kernels
from sfu.packet.flow import decode_flow, encode_flow
from sfu.transport.media_lane import LaneKernels, MediaLane
from sfu.transport.pipe import Media

PACKETS = 500
ROUNDS = 20
EPOCH = 3
KEY = bytes(range(16))
A_ADDR = ("127.0.0.1", 4433)


def _side(kernels: Kernels, case: str) -> tuple[FarSide, Any, MediaLane]:
    side = FarSide(kernels, plane=True, subs=2 if case == "input_2subs" else 1, decode=False)
    assert side.dataplane is not None
    lane = MediaLane(A_ADDR, now=0.0, kernels=LaneKernels(kernels.LaneSealer, kernels.LaneOpener))
    lane.opener.add_key(EPOCH, KEY)
    if case.startswith("input"):
        assert side.dataplane.open_input(
            side.pipe_b,
            A_ADDR,
            lane.opener,
            deliver=lambda flow, payload: None,
            fold=lambda *counts: None,
        )
    side.announce()
    return side, side.dataplane, lane


@pytest.mark.parametrize("case", ["ingest", "input", "input_2subs", "python"])
def test_receiving_a_relayed_publication(
    benchmark: BenchmarkFixture, kernels: Kernels, case: str
) -> None:
    side, dataplane, lane = _side(kernels, case)
    sealer = REFERENCE.LaneSealer(EPOCH, KEY)
    sealer.active = True
    handle = dataplane.handle_of(side.remote)
    state: dict[str, Any] = {"seq": 0, "batch": [], "rounds": 0}

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        side.collect()
        batch = []
        for _ in range(PACKETS):
            seq = state["seq"] = state["seq"] + 1
            media = packet(seq, key=seq == 1)
            if case == "ingest":
                batch.append((handle, media))
            else:
                sealed = sealer.seal(encode_flow(side.flow, media))
                assert sealed is not None
                batch.append((sealed, A_ADDR))
        state["batch"] = batch
        state["rounds"] += 1
        return (), {}

    def run() -> None:
        now = 10.0 + state["seq"] / 1000
        batch = state["batch"]
        if case == "ingest":
            _, egress = dataplane.forwarder.ingest(batch, now)
        elif case.startswith("input"):
            _, egress = dataplane.forwarder.receive_link(batch, now)
        else:
            for data, addr in batch:
                plain = lane.open(data, addr)
                assert plain is not None
                flow, payload = decode_flow(plain)
                event = side.pipe_b.receive_flow(flow, payload, now=now)
                assert isinstance(event, Media)
                side.remote.on_media(event, now=now)
            dataplane.flush_ingest()
            egress = []
        side.egress.extend(egress)

    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=2)
    side.collect()
    subs = 2 if case == "input_2subs" else 1
    assert side.delivered == PACKETS * state["rounds"] * subs
