"""Per-packet cost of the router's forwarding path (decide + rewrite, no SRTP), in one run.

A publisher's VP8 packet enters ``Peer.on_rtp`` and fans out to N subscribers, each getting
its own SSRC, sequence number, timestamp, payload type, picture id and extension ids. The bare
rewrite kernel is measured in the same run as the floor: the ratio of the two is the Python
decision and bookkeeping per subscriber that the compiled data plane of the next issue
removes. Transports are captured (no encryption), so SRTP is not part of these figures; see
test_bench_transport.py for that. Run with `make bench`.
"""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture
from room_fixtures import harness, recvonly_offer, simulcast_offer, vp8_packet

from sfu import _fastpath

BATCH = 1000
ROUNDS = 5


def _setup(monkeypatch: pytest.MonkeyPatch, subscribers: int) -> tuple[object, list[bytes]]:
    h = harness(monkeypatch)
    alice = h.join("bench", "alice")
    h.service.offer(alice, simulcast_offer(), 0.0)
    h.capture("alice", alice)
    video = next(
        m["track"]["id"]
        for m in h.messages("alice", "track_published")
        if m["track"]["kind"] == "video"
    )
    for i in range(subscribers):
        who = f"viewer{i}"
        viewer = h.join("bench", who)
        h.service.offer(viewer, recvonly_offer(f"view{i}"), 0.0, subscriptions={"1": video})
        h.capture(who, viewer)
        assert viewer.peer is not None
        for sub in viewer.peer.subscriptions.values():
            assert sub.selector is not None
            sub.selector.set_target(0, None)
    packets = [
        vp8_packet(
            1111,
            i,
            3000 * (i // 3),
            keyframe=i == 0,
            start=i % 3 == 0,
            rid="q",
            picture_id=i // 3,
            payload=bytes(1100),
        )
        for i in range(BATCH * ROUNDS)
    ]
    assert alice.peer is not None
    return alice.peer, packets


@pytest.mark.parametrize("subscribers", [1, 10])
def test_forward_vp8_to_subscribers(
    benchmark: BenchmarkFixture, monkeypatch: pytest.MonkeyPatch, subscribers: int
) -> None:
    peer, packets = _setup(monkeypatch, subscribers)
    transport = peer.transport  # type: ignore[attr-defined]
    rounds = iter(range(ROUNDS))

    def next_round() -> tuple[tuple[list[bytes], float], dict[str, object]]:
        r = next(rounds)  # each round continues the stream: every packet is new
        return (packets[r * BATCH : (r + 1) * BATCH], 1.0 + r), {}

    def run(batch: list[bytes], start: float) -> None:
        on_rtp = peer.on_rtp  # type: ignore[attr-defined]
        for i, packet in enumerate(batch):
            on_rtp(transport, packet, start + i * 0.0005)

    benchmark.extra_info["subscribers"] = subscribers
    benchmark.extra_info["packets_per_round"] = BATCH
    benchmark.pedantic(run, setup=next_round, rounds=ROUNDS, iterations=1)
    forwarded = peer.counters.rtp_forwarded  # type: ignore[attr-defined]
    assert forwarded >= BATCH * ROUNDS * subscribers * 0.99


def test_rewrite_kernel_floor(benchmark: BenchmarkFixture) -> None:
    packet = vp8_packet(1111, 1, 1, keyframe=True, rid="q", payload=bytes(1100))
    buf = bytearray(1500)
    rewrite = _fastpath.rewrite_rtp

    def run() -> None:
        for i in range(BATCH):
            rewrite(packet, buf, 0xBEEF, i, i, 96, -1)

    benchmark(run)
