"""Per-codec forwarding cost: one plain RTP packet through ingest (the path every codec the
compiled forwarder leaves to Python takes: VP9, H.264, RTX repairs) and fanned out to 10
subscriptions, with the kernels of each bundle (layer selector, SVC selector, munger, VP8
munger, extension rewriter), compiled and pure-Python side by side.

Codecs: VP8 ``L1T3`` (temporal layers on one stream), VP9 ``L3T3_KEY`` forwarded whole and
capped to spatial layer 0 (most packets dropped by the SVC selector), AV1 ``L3T3_KEY`` the same
way (layers read from the Dependency Descriptor against the stream's template structure), and
Opus. Packets are
1200 bytes; no SRTP (its cost is in ``test_bench_srtp.py``). Run with `make bench`.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from av1_packets import DD_ID
from av1_packets import SSRC as AV1_SSRC
from av1_packets import l3t3_key as av1_l3t3_key
from pytest_benchmark.fixture import BenchmarkFixture
from svc_packets import SSRC, l3t3_key, vp8_l1t3

from sfu._fastpath.ingest import ingest
from sfu._fastpath.values import AUDIO, AV1, VP8, VP9
from sfu.core.kernels import Kernels
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec
from sfu.packet.extensions import DEPENDENCY_DESCRIPTOR_URI
from sfu.packet.rtp import find_extension

SUBSCRIBERS = 10
PACKETS = 4000
CODECS = {
    "vp8": NegotiatedCodec(96, "VP8", 90000, None, None, ()),
    "vp9": NegotiatedCodec(98, "VP9", 90000, None, None, ()),
    "av1": NegotiatedCodec(45, "AV1", 90000, None, None, ()),
    "opus": NegotiatedCodec(111, "opus", 48000, 2, None, ()),
}


def _ready(_out: Any) -> bool:
    """Every route can send (there is no transport here)."""
    return True


def _opus(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        header = bytes([0x80, 111]) + (i & 0xFFFF).to_bytes(2, "big")
        header += (i * 960).to_bytes(4, "big") + SSRC.to_bytes(4, "big")
        out.append(header + bytes(1188))
    return out


def _packets(case: str) -> tuple[str, int, list[bytes]]:
    """(codec, stream kind, packets) of a case: a stream long enough to loop over."""
    if case == "opus":
        return "opus", AUDIO, _opus(PACKETS)
    if case == "vp8-l1t3":
        return "vp8", VP8, vp8_l1t3(PACKETS, size=1160)
    # Six packets per picture, all pictures after the first predicted (no keyframe again).
    if case.startswith("av1"):
        return "av1", AV1, av1_l3t3_key(PACKETS // 6, size=380)
    return "vp9", VP9, l3t3_key(PACKETS // 6, size=380)


CASES = [
    "vp8-l1t3",
    "vp9-l3t3-key",
    "vp9-l3t3-key-s0",
    "av1-l3t3-key",
    "av1-l3t3-key-s0",
    "opus",
]


@pytest.mark.parametrize("case", CASES)
def test_forward_per_codec(benchmark: BenchmarkFixture, each_kernels: Kernels, case: str) -> None:
    """One packet in, rewritten for each of 10 subscriptions (whatever they forward)."""
    codec, kind, packets = _packets(case)
    media = "audio" if kind == AUDIO else "video"
    extensions = {DD_ID: DEPENDENCY_DESCRIPTOR_URI} if kind == AV1 else {}
    pub = Publication("TR", "PA", media, "x", "0", CODECS[codec], extensions, kernels=each_kernels)
    stream = pub.add_stream(AV1_SSRC if kind == AV1 else SSRC, 0)
    if kind == AV1 and stream.dependency is not None:
        stream.dependency.read(find_extension(packets[0], DD_ID) or b"")  # the key frame's
    if kind in (VP9, AV1):
        pub.learn_structure(packets[0])
    subs = []
    for n in range(SUBSCRIBERS):
        sub = Subscription(
            f"SU_{n}",
            pub,
            f"PA_{n}",
            "0",
            out_ssrc=0x1000 + n,
            payload_type=CODECS[codec].payload_type,
            extensions=extensions,
            kernels=each_kernels,
        )
        if sub.selector is not None:
            sub.selector.set_target(0 if case.endswith("-s0") else pub.num_layers - 1, None)
        subs.append((sub, None))
    routes = tuple(subs)
    sent = [0]

    def emit(_sub: Any, _out: Any, _n: int) -> bool:
        sent[0] += 1
        return True

    # Sequence numbers keep growing past the captured stream's (it loops).
    counter = itertools.count()

    def next_packet() -> tuple[tuple[Any, ...], dict[str, Any]]:
        i = next(counter)
        data = bytearray(packets[i % len(packets)])
        data[2:4] = (i & 0xFFFF).to_bytes(2, "big")
        return (bytes(data), 1.0 + i / 1000), {}

    def forward(data: bytes, now: float) -> None:
        ingest(
            0, kind, stream, routes, data, now=now, twcc_id=0, level_id=0, emit=emit, ready=_ready
        )

    # The first picture (a keyframe) starts every subscription; it comes back once per loop.
    for _ in range(6):
        forward(*next_packet()[0])
    benchmark.pedantic(forward, setup=next_packet, rounds=PACKETS - 10, warmup_rounds=0)
    assert sent[0] > 0


def test_svc_selector_decide(benchmark: BenchmarkFixture, each_kernels: Kernels) -> None:
    """The SVC decision for one packet of an upper layer frame being forwarded."""
    selector = each_kernels.SvcSelector(3)
    selector.set_target(2, None)
    selector.decide(0, 0, True, True, 1.0, switch_point=True)
    selector.decide(1, 0, False, True, 1.0, switch_point=True)
    selector.decide(2, 0, False, True, 1.0, switch_point=True)
    result = benchmark(selector.decide, 2, 1, False, False, 1.0)
    assert int(result) == 1
