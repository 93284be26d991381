"""The load generator's loops: compiled (``bench._loadgen``) == reference (``_loadgen_py``).

Socket-free contract tests on buffers (frame building and stamping, demultiplexing, receive
accounting, the latency histogram), against the reference and, when built and the run does not
set SFU_NO_EXTENSIONS=1, the compiled module. The engines' socket loops are tested over
loopback in tests/integration/test_bench_cli.py.
"""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_selection import load_compiled

from bench import _loadgen_py
from bench._loadgen_py import (
    HIST_BUCKETS,
    HIST_EDGES_NS,
    KIND_AUDIO,
    KIND_VIDEO,
    RECV_BAD,
    RECV_DUPLICATE,
    RECV_NEW,
    RECV_REORDERED,
    STAMP_OFFSET,
    StreamSpec,
    percentile_ns,
)
from sfu.codecs.vp8 import parse_vp8
from sfu.packet.rtp import find_extension, payload_offset


@pytest.fixture(scope="module")
def loadgen_c() -> ModuleType:
    """The compiled load generator (skipped or failed as the run's kernel selection says)."""
    return load_compiled("bench._loadgen")


@pytest.fixture(scope="module")
def srtp_c() -> ModuleType:
    """The compiled SRTP module, as the compiled load generator uses it."""
    return load_compiled("sfu._fastpath._srtp")


@pytest.fixture(scope="module", params=["python", "cython"])
def module(request: pytest.FixtureRequest) -> ModuleType:
    """Each load generator in turn: the reference, then the compiled one."""
    return _loadgen_py if request.param == "python" else request.getfixturevalue("loadgen_c")


class _Header:
    """The fixed RTP header fields the tests look at."""

    def __init__(self, packet: bytes) -> None:
        self.marker = bool(packet[1] & 0x80)
        self.payload_type = packet[1] & 0x7F
        self.sequence_number = int.from_bytes(packet[2:4], "big")
        self.timestamp = int.from_bytes(packet[4:8], "big")
        self.ssrc = int.from_bytes(packet[8:12], "big")


def peek_rtp_header(packet: bytes) -> _Header:
    return _Header(packet)


VIDEO = StreamSpec(
    ssrc=0x11223344,
    payload_type=96,
    kind=KIND_VIDEO,
    packet_size=1200,
    packets_per_frame=3,
    keyframe_packets=5,
    keyframe_interval=8,
    mid_id=4,
    mid=b"1",
    rid_id=10,
    rid=b"f",
    layer=2,
)
AUDIO = StreamSpec(
    ssrc=0x55667788,
    payload_type=111,
    kind=KIND_AUDIO,
    packet_size=120,
    frame_interval_ns=20_000_000,
    keyframe_interval=0,
    timestamp_step=960,
    mid_id=4,
    mid=b"0",
)


def _frames(module: ModuleType, spec: StreamSpec, n: int, keyframe_at: int = -1) -> list[bytes]:
    builder = module.FrameBuilder(spec, seq=65530, timestamp=0xFFFFF000)
    out: list[bytes] = []
    for i in range(n):
        if i == keyframe_at:
            builder.request_keyframe()
        out += builder.frame(1_000_000_000 + i * 33_333_333)
    return out


@pytest.mark.parametrize("spec", [VIDEO, AUDIO], ids=["video", "audio"])
def test_compiled_frames_equal_reference(loadgen_c: ModuleType, spec: StreamSpec) -> None:
    assert _frames(loadgen_c, spec, 40, keyframe_at=13) == _frames(_loadgen_py, spec, 40, 13)


def test_video_frames_parse_as_simulcast_vp8(module: ModuleType) -> None:
    builder = module.FrameBuilder(VIDEO)
    frames = [builder.frame(10**9 + i) for i in range(10)]
    # Frame 0 (first) and frame 8 (interval) are keyframes with more packets.
    assert [len(f) for f in frames] == [5, 3, 3, 3, 3, 3, 3, 3, 5, 3]
    seqs = [peek_rtp_header(p).sequence_number for f in frames for p in f]
    assert seqs == list(range(len(seqs)))  # contiguous across frames
    tids = []
    for i, frame in enumerate(frames):
        for k, packet in enumerate(frame):
            assert len(packet) == 1200
            header = peek_rtp_header(packet)
            assert header.ssrc == VIDEO.ssrc and header.payload_type == 96
            assert header.marker == (k == len(frame) - 1)
            assert header.timestamp == 3000 * i
            assert find_extension(packet, 4) == b"1" and find_extension(packet, 10) == b"f"
            start = payload_offset(packet)
            d = parse_vp8(packet, start)
            assert d.picture_id == i and d.picture_id_15bit
            assert d.is_start_of_frame == (k == 0)
            if k == 0:
                assert d.is_keyframe == (i in (0, 8))
                tids.append(d.temporal_id)
                vp8 = packet[start + d.size : start + d.size + 10]
                if d.is_keyframe:  # start code and 1280x720 (layer 2), as Janus checks
                    assert vp8[3:10] == b"\x9d\x01\x2a\x00\x05\xd0\x02"
                else:
                    assert vp8[0] & 1 == 1
            stamp = packet[start + STAMP_OFFSET : start + STAMP_OFFSET + 8]
            assert int.from_bytes(stamp, "big") == 10**9 + i
    assert tids == [0, 2, 1, 2, 0, 2, 1, 2, 0, 2]


def test_keyframe_request(module: ModuleType) -> None:
    builder = module.FrameBuilder(VIDEO)
    builder.frame(0)
    builder.request_keyframe()
    assert builder.keyframe_pending
    packets = builder.frame(1)
    assert len(packets) == VIDEO.keyframe_packets
    assert parse_vp8(packets[0], payload_offset(packets[0])).is_keyframe
    assert not builder.keyframe_pending


def test_audio_frames(module: ModuleType) -> None:
    packets = _frames(module, AUDIO, 5)
    assert len(packets) == 5 and all(len(p) == 120 for p in packets)
    assert [peek_rtp_header(p).sequence_number for p in packets] == [
        65530,
        65531,
        65532,
        65533,
        65534,
    ]


def test_bad_specs_refused(module: ModuleType) -> None:
    with pytest.raises(ValueError):
        module.FrameBuilder(StreamSpec(ssrc=1, payload_type=96, packet_size=20))
    with pytest.raises(ValueError):
        module.FrameBuilder(StreamSpec(ssrc=1, payload_type=96, packets_per_frame=0))
    with pytest.raises(ValueError):
        module.FrameBuilder(StreamSpec(ssrc=1, payload_type=96, layer=9))


def test_classify(module: ModuleType) -> None:
    assert module.classify(b"\x00\x01" + bytes(18)) == _loadgen_py.PKT_STUN
    assert module.classify(b"\x16\xfe\xfd") == _loadgen_py.PKT_DTLS
    assert module.classify(b"\x80\x60" + bytes(10)) == _loadgen_py.PKT_RTP
    assert module.classify(b"\x81\xc8" + bytes(10)) == _loadgen_py.PKT_RTCP  # SR
    assert module.classify(b"\x81\xce" + bytes(10)) == _loadgen_py.PKT_RTCP  # PSFB
    assert module.classify(b"\xff") == _loadgen_py.PKT_OTHER
    assert module.classify(b"") == _loadgen_py.PKT_OTHER


def test_bucket_edges(module: ModuleType) -> None:
    assert module.bucket_of(-5) == 0
    assert module.bucket_of(999) == 0
    assert module.bucket_of(1000) == 1
    assert module.bucket_of(HIST_EDGES_NS[-1] - 1) == HIST_BUCKETS - 2
    assert module.bucket_of(10**12) == HIST_BUCKETS - 1
    for edge in HIST_EDGES_NS:
        assert module.bucket_of(edge) == _loadgen_py.bucket_of(edge)
        assert module.bucket_of(edge - 1) == _loadgen_py.bucket_of(edge - 1)


def test_percentile() -> None:
    counts = [0] * HIST_BUCKETS
    assert percentile_ns(counts, 0.5) is None
    counts[_loadgen_py.bucket_of(100_000)] = 99
    counts[_loadgen_py.bucket_of(50_000_000)] = 1
    p50 = percentile_ns(counts, 0.5)
    p999 = percentile_ns(counts, 0.999)
    assert p50 is not None and 75_000 < p50 < 130_000
    assert p999 is not None and 40_000_000 < p999 < 60_000_000


def _accounted(module: ModuleType, packets: list[bytes], now: int) -> tuple[list[int], Any]:
    stats = module.RecvStats()
    codes = [stats.account(p, now) for p in packets]
    return codes, stats.snapshot()


def test_account_counts_loss_duplicates_reordering(module: ModuleType) -> None:
    packets = _frames(_loadgen_py, VIDEO, 10)  # 5 + 8*3 + 5 = 34 packets, seq 65530 upwards
    sent = list(packets)
    received = sent[:3] + sent[4:10] + [sent[3]] + [sent[5]] + sent[12:]  # 10, 11 lost
    codes, snap = _accounted(module, received, 2_000_000_000)
    assert codes[:3] == [RECV_NEW] * 3
    assert codes[9] == RECV_REORDERED and codes[10] == RECV_DUPLICATE
    ((ssrc, unique, dups, reordered, first, highest, nbytes),) = snap["streams"]
    assert ssrc == VIDEO.ssrc
    assert unique == len(sent) - 2 and dups == 1 and reordered == 1
    assert first == 65530 and highest == 65530 + len(sent) - 1  # extended past the wrap
    assert highest - first + 1 - unique == 2  # the two lost packets
    assert nbytes == 1200 * len(received)
    assert sum(snap["hist"]) == unique
    assert module.RecvStats().account(b"\x00" * 5, 0) == RECV_BAD


seq_orders = st.lists(st.integers(min_value=-40, max_value=3000), min_size=1, max_size=300)


@settings(max_examples=150, deadline=None)
@given(offsets=seq_orders, start=st.integers(0, 0xFFFF), stamps=st.integers(0, 10**10))
def test_compiled_accounting_equals_reference(
    loadgen_c: ModuleType, offsets: list[int], start: int, stamps: int
) -> None:
    rng = random.Random(stamps)
    builder = _loadgen_py.FrameBuilder(AUDIO)
    template = builder.frame(0)[0]
    packets = []
    for off in offsets:
        p = bytearray(template)
        p[2:4] = ((start + off) & 0xFFFF).to_bytes(2, "big")
        if rng.random() < 0.2:
            p[8:12] = (0xABCD0000 + rng.randrange(3)).to_bytes(4, "big")
        stamp = rng.randrange(10**10)
        p[12 + 8 + STAMP_OFFSET : 12 + 8 + STAMP_OFFSET + 8] = stamp.to_bytes(8, "big")
        packets.append(bytes(p))
    assert _accounted(loadgen_c, packets, stamps) == _accounted(_loadgen_py, packets, stamps)


def _twcc_spec(spec: StreamSpec) -> StreamSpec:
    from dataclasses import replace

    return replace(spec, twcc_id=3)


@pytest.mark.parametrize("spec", [VIDEO, AUDIO], ids=["video", "audio"])
def test_frames_carry_transport_wide_sequence_numbers(module: ModuleType, spec: StreamSpec) -> None:
    """With a ``twcc_id`` every packet carries a 2-byte transport-wide sequence number
    (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2), counting on from the one the
    frame is given, across the 16-bit wrap; the other extensions are unchanged."""
    twcc = _twcc_spec(spec)
    assert twcc.header_size() == spec.header_size() + 4  # 3 more bytes, padded to a word
    builder = module.FrameBuilder(twcc)
    packets = builder.frame(10**9, 65534)
    assert len(packets) >= 1
    for k, packet in enumerate(packets):
        element = find_extension(packet, 3)
        assert element is not None and len(element) == 2
        assert int.from_bytes(element, "big") == (65534 + k) & 0xFFFF
        assert module.transport_seq(packet, 3) == (65534 + k) & 0xFFFF
        assert find_extension(packet, spec.mid_id) == spec.mid
        assert len(packet) == spec.packet_size
    plain = module.FrameBuilder(spec).frame(10**9)[0]
    assert module.transport_seq(plain, 3) == -1  # no such element
    assert module.transport_seq(packets[0], 5) == -1
    assert module.transport_seq(b"", 3) == -1
    with pytest.raises(ValueError):
        module.FrameBuilder(StreamSpec(**{**_spec_fields(spec), "twcc_id": 15}))


def _spec_fields(spec: StreamSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


@pytest.mark.parametrize("spec", [VIDEO, AUDIO], ids=["video", "audio"])
def test_compiled_transport_wide_frames_equal_reference(
    loadgen_c: ModuleType, spec: StreamSpec
) -> None:
    twcc = _twcc_spec(spec)

    def frames(module: ModuleType) -> list[bytes]:
        builder = module.FrameBuilder(twcc, seq=65530)
        return [p for i in range(20) for p in builder.frame(10**9 + i, (65500 + 7 * i) & 0xFFFF)]

    assert frames(loadgen_c) == frames(_loadgen_py)


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=80),
    twcc_id=st.integers(0, 15),
    head=st.sampled_from([0x90, 0x91, 0x80]),
)
def test_compiled_transport_seq_equals_reference(
    loadgen_c: ModuleType, data: bytes, twcc_id: int, head: int
) -> None:
    """The receive side's extension lookup agrees on any bytes (malformed blocks: -1)."""
    packet = bytes([head]) + bytes(11) + b"\xbe\xde" + data
    for candidate in (packet, data):
        assert loadgen_c.transport_seq(candidate, twcc_id) == _loadgen_py.transport_seq(
            candidate, twcc_id
        )
