"""Micro-benchmarks of the data plane: the forwarder per ingress packet, and its decision
and rewrite kernels (layer selector, munger), compiled and pure-Python side by side.

Run with `make bench`. Compare the two implementations measured in the same run.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from forwarder_world import PROFILE, PUB_ADDR, PUB_KEY, PUB_SALT, World, rtp, vp8_payload
from pytest_benchmark.fixture import BenchmarkFixture

from sfu._fastpath import _srtp_py
from sfu.core.kernels import Kernels

# Each benchmark runs once per bundle (each_kernels: "python", then "cython").


def _bench_forward(
    benchmark: BenchmarkFixture,
    kernels: Kernels,
    subs: int,
    payload_size: int,
    ext: Callable[[int], bytes],
    stamped: int | None = None,
    paced: bool = False,
) -> None:
    """Time the forwarder per ingress SRTP packet: a VP8 packet of the top video SSRC with
    ``payload_size`` bytes of payload and extension block ``ext(i)``, fanned out to ``subs``
    subscribers aimed at that layer. ``paced``: every subscriber transport has an egress
    pacer (at a rate nothing waits for), released after each packet as ``Peer`` does."""
    world = World(kernels, subs=subs, stamped=stamped)
    pacers = []
    if paced:
        for i in range(subs):
            pacer = kernels.Pacer()
            pacer.set_rate(1e9, 0.0)
            world.forwarder.set_pacer(i + 1, pacer, world.histories[i])
            pacers.append((pacer, world.histories[i]))
    for sub in world.video_subs:
        sub.selector.set_target(0, None)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    counter = itertools.count()
    first = rtp(0x1111, 0, 0, 96, vp8_payload(1, 0, 0, True, True, True, payload_size), ext(0))
    world.forwarder.process([(client.protect_rtp(first), PUB_ADDR)], 1.0)

    def next_packet() -> tuple[tuple[Any, ...], dict[str, Any]]:
        i = next(counter) + 1
        payload = vp8_payload(1 + i, 0, 0, True, False, True, payload_size)
        plain = rtp(0x1111, i, 3000 * i, 96, payload, ext(i))
        return ([(client.protect_rtp(plain), PUB_ADDR)], 1.0 + i / 1000), {}

    def forward(datagrams: list[tuple[bytes, Any]], now: float) -> int:
        _, egress = world.forwarder.process(datagrams, now)
        world.forwarder.drain_log()
        if pacers:
            return sum(len(pacer.pop(now, history)) for pacer, history in pacers)
        return len(egress)

    benchmark.pedantic(forward, setup=next_packet, rounds=2000, warmup_rounds=10)
    assert world.forwarder.sent_packets >= 2000 * subs


@pytest.mark.parametrize("subs", [1, 10])
def test_forward_1200b_gcm(benchmark: BenchmarkFixture, each_kernels: Kernels, subs: int) -> None:
    """One 1200-byte SRTP (AEAD-AES-128-GCM) VP8 packet in, ``subs`` SRTP copies out."""
    _bench_forward(benchmark, each_kernels, subs, 1150, lambda i: b"")


def _browser_extensions(i: int) -> bytes:
    """mid, transport-wide CC and abs-send-time in the one-byte form, with the ids of
    forwarder_world.PUB_EXT (1 mid, 3 transport-wide CC, 4 abs-send-time)."""
    return bytes([0x10, ord("0"), 0x31, i >> 8 & 0xFF, i & 0xFF, 0x42, 1, 2, 3])


def test_forward_1200b_gcm_extensions(benchmark: BenchmarkFixture, each_kernels: Kernels) -> None:
    """As test_forward_1200b_gcm with 10 subscribers, each packet carrying the extension block a
    browser sends, which the forwarder reads (transport-wide CC) and rewrites per subscriber
    (ids, abs-send-time)."""
    _bench_forward(benchmark, each_kernels, 10, 1140, _browser_extensions)


@pytest.mark.parametrize("stamping", ["off", "on"])
def test_forward_1200b_gcm_twcc(
    benchmark: BenchmarkFixture, each_kernels: Kernels, stamping: str
) -> None:
    """As test_forward_1200b_gcm_extensions (10 subscribers, a browser's extension block) with
    transport-wide CC stamping off (no subscriber negotiated it: the publisher's element is
    hidden) or on (every copy gets its transport's next sequence number and is recorded in
    its send history): the cost of egress TWCC per packet."""
    stamped = 10 if stamping == "on" else 0
    _bench_forward(benchmark, each_kernels, 10, 1140, _browser_extensions, stamped)


@pytest.mark.parametrize("pacing", ["off", "on"])
def test_forward_1200b_gcm_paced(
    benchmark: BenchmarkFixture, each_kernels: Kernels, pacing: str
) -> None:
    """As test_forward_1200b_gcm_twcc with stamping on, every copy also queued in its
    transport's egress pacer and released from it (``pacing`` on) or sent at once (off): the
    cost of the pacer per egress packet (the release's sends themselves excluded)."""
    _bench_forward(benchmark, each_kernels, 10, 1140, _browser_extensions, 10, pacing == "on")


def test_selector_decide(benchmark: BenchmarkFixture, each_kernels: Kernels) -> None:
    selector = each_kernels.SimulcastSelector(3)
    selector.set_target(2, None)
    selector.decide(2, 0, True, True, 0.0)
    result = benchmark(selector.decide, 2, 1, False, True, 1.0)
    assert int(result) == 1


def test_munger_munge_1200b(benchmark: BenchmarkFixture, each_kernels: Kernels) -> None:
    munger = each_kernels.RtpMunger(0xABC, {96: 100}, clock_rate=90000)
    dst = bytearray(1500)
    counter = itertools.count()
    packet = bytearray(rtp(0x1111, 0, 0, 96, bytes(1188), b""))

    def munge() -> int:
        i = next(counter)
        return int(munger.munge(packet, 70000 + i, 1.0 + i / 1000, dst))

    assert benchmark(munge) == 1200
