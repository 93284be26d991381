"""Tests for the VP8 payload descriptor (RFC 7741 §4.2) parser, serializer and rewriter."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from fixture_files import assert_bounded_allocation, mutated, rtp_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.codecs.vp8 import (
    VP8_MAX_DESCRIPTOR_SIZE,
    Vp8Descriptor,
    parse_vp8,
    rewrite_vp8_descriptor,
)
from sfu.packet.errors import ParseError

# Largest descriptor of RFC 7741 §4.2: X=1 S=1 PID=0; I L T K; M=1 picture id 0x1234;
# TL0PICIDX 0xAB; TID=2 Y=1 KEYIDX=0x15. Followed by a keyframe payload header (P=0).
MAX_DESC = bytes([0x90, 0xF0, 0x80 | 0x12, 0x34, 0xAB, (2 << 6) | 0x20 | 0x15])
KEY_PAYLOAD = bytes([0x10, 0x02, 0x00, 0x9D, 0x01, 0x2A])  # P=0 then start code
DELTA_PAYLOAD = bytes([0x31, 0x02, 0x00])  # P=1


def test_max_size_descriptor_fields() -> None:
    d = parse_vp8(MAX_DESC + KEY_PAYLOAD)
    assert d == Vp8Descriptor(
        extended=True,
        start_of_partition=True,
        partition_index=0,
        picture_id=0x1234,
        picture_id_15bit=True,
        tl0picidx=0xAB,
        temporal_id=2,
        layer_sync=True,
        keyidx=0x15,
        is_keyframe=True,
    )
    assert d.size == VP8_MAX_DESCRIPTOR_SIZE == len(MAX_DESC)
    assert d.is_start_of_frame
    assert d.serialize() == MAX_DESC


def test_minimal_descriptor() -> None:
    d = parse_vp8(b"\x10" + KEY_PAYLOAD)
    assert d.size == 1
    assert d.is_start_of_frame and d.is_keyframe
    assert d.picture_id is None and d.tl0picidx is None
    assert d.temporal_id is None and d.keyidx is None


def test_seven_bit_picture_id_and_flags() -> None:
    # X=1 N=1 S=0 PID=3; I only; 7-bit picture id 0x55.
    d = parse_vp8(bytes([0xA3, 0x80, 0x55]) + DELTA_PAYLOAD)
    assert d.non_reference
    assert not d.start_of_partition
    assert d.partition_index == 3
    assert d.picture_id == 0x55 and not d.picture_id_15bit
    assert d.size == 3
    assert not d.is_start_of_frame and not d.is_keyframe


def test_t_without_k_ignores_keyidx_bits() -> None:
    d = parse_vp8(bytes([0x90, 0x20, 0xFF]) + DELTA_PAYLOAD)
    assert d.temporal_id == 3 and d.layer_sync
    assert d.keyidx is None
    assert d.size == 3


def test_k_without_t_ignores_tid_bits() -> None:
    d = parse_vp8(bytes([0x90, 0x10, 0xFF]) + DELTA_PAYLOAD)
    assert d.temporal_id is None and not d.layer_sync
    assert d.keyidx == 0x1F


def test_empty_extension_octet_is_kept() -> None:
    raw = bytes([0x90, 0x00])
    d = parse_vp8(raw + KEY_PAYLOAD)
    assert d.extended and d.size == 2
    assert d.serialize() == raw


def test_reserved_bits_ignored_and_cleared() -> None:
    d = parse_vp8(bytes([0x90 | 0x48, 0x8F, 0x05]) + KEY_PAYLOAD)
    assert d.picture_id == 5
    assert d.serialize() == bytes([0x90, 0x80, 0x05])


@pytest.mark.parametrize(
    ("first", "payload", "keyframe"),
    [
        (0x10, 0x00, True),  # S=1 PID=0, P=0
        (0x10, 0x01, False),  # P=1: interframe
        (0x11, 0x00, False),  # PID=1: no payload header here
        (0x00, 0x00, False),  # S=0: continuation
    ],
)
def test_keyframe_detection(first: int, payload: int, keyframe: bool) -> None:
    assert parse_vp8(bytes([first, payload])).is_keyframe is keyframe


def test_every_truncation_raises() -> None:
    for n in range(len(MAX_DESC) + 1):
        with pytest.raises(ParseError):
            parse_vp8(MAX_DESC[:n])


def test_offset_end_window_and_memoryview() -> None:
    pkt = b"\xee" * 12 + MAX_DESC + KEY_PAYLOAD + b"\x00\x00\x02"
    end = len(pkt) - 3
    d = parse_vp8(memoryview(pkt), 12, end)
    assert d.picture_id == 0x1234 and d.is_keyframe
    with pytest.raises(ParseError):
        parse_vp8(pkt, 12, 12 + len(MAX_DESC))  # no payload octet inside the window
    for off, e in [(-1, None), (5, 4), (0, len(pkt) + 1)]:
        with pytest.raises(ParseError):
            parse_vp8(pkt, off, e)


def test_serialize_rejects_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="extended"):
        Vp8Descriptor(picture_id=1).serialize()
    with pytest.raises(ValueError):
        Vp8Descriptor(extended=True, picture_id=0x80).serialize()
    with pytest.raises(ValueError):
        Vp8Descriptor(extended=True, picture_id=0x8000, picture_id_15bit=True).serialize()
    with pytest.raises(ValueError):
        Vp8Descriptor(partition_index=8).serialize()
    with pytest.raises(ValueError):
        Vp8Descriptor(extended=True, keyidx=32).serialize()
    with pytest.raises(ValueError):
        Vp8Descriptor(extended=True, temporal_id=4).serialize()
    with pytest.raises(ValueError):
        Vp8Descriptor(extended=True, tl0picidx=256).serialize()


# --- in-place rewrite ------------------------------------------------------------------


def test_rewrite_max_descriptor() -> None:
    buf = bytearray(MAX_DESC + KEY_PAYLOAD)
    rewrite_vp8_descriptor(buf, 0, picture_id=0x8001, tl0picidx=0x1FF, keyidx=0x22)
    d = parse_vp8(buf)
    assert d.picture_id == 0x0001 and d.picture_id_15bit  # truncated to 15 bits
    assert d.tl0picidx == 0xFF
    assert d.keyidx == 0x02
    assert d.temporal_id == 2 and d.layer_sync  # TID/Y untouched
    assert buf[len(MAX_DESC) :] == KEY_PAYLOAD


def test_rewrite_seven_bit_truncates_and_keeps_m_clear() -> None:
    buf = bytearray([0x90, 0x80, 0x05, 0x01])
    rewrite_vp8_descriptor(buf, 0, picture_id=0x1FF, tl0picidx=None, keyidx=None)
    assert buf == bytearray([0x90, 0x80, 0x7F, 0x01])


def test_rewrite_ignores_absent_fields_and_none() -> None:
    buf = bytearray([0x10, 0x00, 0x01])  # no X: nothing to rewrite
    rewrite_vp8_descriptor(buf, 0, 1, 2, 3)
    assert buf == bytearray([0x10, 0x00, 0x01])
    orig = bytearray(MAX_DESC + KEY_PAYLOAD)
    buf = bytearray(orig)
    rewrite_vp8_descriptor(buf, 0, None, None, None)
    assert buf == orig


def test_rewrite_at_offset_in_memoryview() -> None:
    buf = bytearray(b"\xaa" * 12 + MAX_DESC + KEY_PAYLOAD)
    rewrite_vp8_descriptor(memoryview(buf), 12, picture_id=7, tl0picidx=8, keyidx=9)
    d = parse_vp8(buf, 12)
    assert (d.picture_id, d.tl0picidx, d.keyidx) == (7, 8, 9)
    assert buf[:12] == b"\xaa" * 12


def test_rewrite_truncated_raises_without_writing() -> None:
    for n in range(len(MAX_DESC)):
        buf = bytearray(MAX_DESC[:n])
        with pytest.raises(ParseError):
            rewrite_vp8_descriptor(buf, 0, 1, 2, 3)
        assert bytes(buf) == MAX_DESC[:n]


# --- property tests --------------------------------------------------------------------


@st.composite
def descriptors(draw: st.DrawFn) -> Vp8Descriptor:
    """Any serializable descriptor; is_keyframe is fixed later from the payload."""
    wide = draw(st.booleans())
    pid = draw(st.none() | st.integers(0, 0x7FFF if wide else 0x7F))
    tl0 = draw(st.none() | st.integers(0, 255))
    tid = draw(st.none() | st.integers(0, 3))
    keyidx = draw(st.none() | st.integers(0, 31))
    any_ext = pid is not None or tl0 is not None or tid is not None or keyidx is not None
    return Vp8Descriptor(
        extended=any_ext or draw(st.booleans()),
        non_reference=draw(st.booleans()),
        start_of_partition=draw(st.booleans()),
        partition_index=draw(st.integers(0, 7)),
        picture_id=pid,
        picture_id_15bit=wide and pid is not None,
        tl0picidx=tl0,
        temporal_id=tid,
        layer_sync=tid is not None and draw(st.booleans()),
        keyidx=keyidx,
    )


def _with_payload(d: Vp8Descriptor, payload: bytes) -> Vp8Descriptor:
    return dataclasses.replace(d, is_keyframe=d.is_start_of_frame and not payload[0] & 1)


@settings(max_examples=400)
@given(descriptors(), st.binary(min_size=1, max_size=8))
def test_round_trip(d: Vp8Descriptor, payload: bytes) -> None:
    d = _with_payload(d, payload)
    raw = d.serialize()
    assert len(raw) == d.size
    parsed = parse_vp8(raw + payload)
    assert parsed == d
    assert parsed.serialize() == raw


@settings(max_examples=400)
@given(st.binary(max_size=12))
def test_random_bytes_parse_or_raise(data: bytes) -> None:
    try:
        d = parse_vp8(data)
    except ParseError:
        return
    assert 1 <= d.size < len(data)
    # Canonical re-encoding parses back to the same descriptor.
    assert parse_vp8(d.serialize() + data[d.size :]) == d


@settings(max_examples=400)
@given(descriptors(), st.binary(min_size=1, max_size=4), st.data())
def test_mutations_parse_or_raise(d: Vp8Descriptor, payload: bytes, data: st.DataObject) -> None:
    raw = mutated(data, d.serialize() + payload)
    try:
        parsed = parse_vp8(raw)
    except ParseError:
        return
    assert parsed.size < len(raw)


@settings(max_examples=400)
@given(
    descriptors(),
    st.binary(min_size=1, max_size=6),
    st.none() | st.integers(-(2**20), 2**20),
    st.none() | st.integers(-(2**12), 2**12),
    st.none() | st.integers(-(2**10), 2**10),
)
def test_rewrite_changes_only_targeted_fields(
    d: Vp8Descriptor,
    payload: bytes,
    pid: int | None,
    tl0: int | None,
    keyidx: int | None,
) -> None:
    d = _with_payload(d, payload)
    orig = d.serialize() + payload
    buf = bytearray(orig)
    rewrite_vp8_descriptor(buf, 0, pid, tl0, keyidx)
    assert len(buf) == len(orig)
    assert buf[d.size :] == payload  # the VP8 payload is never touched
    after = parse_vp8(buf)
    expected = d
    if pid is not None and d.picture_id is not None:
        expected = dataclasses.replace(
            expected, picture_id=pid & (0x7FFF if d.picture_id_15bit else 0x7F)
        )
    if tl0 is not None and d.tl0picidx is not None:
        expected = dataclasses.replace(expected, tl0picidx=tl0 & 0xFF)
    if keyidx is not None and d.keyidx is not None:
        expected = dataclasses.replace(expected, keyidx=keyidx & 0x1F)
    assert after == expected
    # Byte-exact: the result is exactly the re-encoding of the expected descriptor.
    assert bytes(buf) == expected.serialize() + payload


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=10), st.integers(0, 2**15), st.integers(0, 255))
def test_rewrite_on_random_bytes_touches_only_field_octets(data: bytes, pid: int, tl0: int) -> None:
    try:
        d = parse_vp8(data)
    except ParseError:
        return
    buf = bytearray(data)
    rewrite_vp8_descriptor(buf, 0, pid, tl0, 3)
    changed = [i for i in range(len(data)) if buf[i] != data[i]]
    assert all(2 <= i < d.size for i in changed)  # never the first two octets or payload
    after = parse_vp8(buf)
    if d.picture_id is not None:
        assert after.picture_id == pid & (0x7FFF if d.picture_id_15bit else 0x7F)
    if d.tl0picidx is not None:
        assert after.tl0picidx == tl0
    if d.keyidx is not None:
        assert after.keyidx == 3
    assert after.temporal_id == d.temporal_id and after.layer_sync == d.layer_sync


def test_bounded_allocation() -> None:
    samples = [MAX_DESC + KEY_PAYLOAD, MAX_DESC[:3], b"\x90\xff" + b"\x00" * 4000, b""]
    assert_bounded_allocation(parse_vp8, samples, repeat=20)


# --- real captures -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chromium_vp8.hex", "aiortc_vp8.hex"])
def test_captured_vp8_invariants(name: str) -> None:
    pkts = [p for p in rtp_payloads(name) if p.end > p.start]
    assert len(pkts) > 50
    descs = [parse_vp8(p.data, p.start, p.end) for p in pkts]
    for p, d in zip(pkts, descs, strict=True):
        assert d.picture_id is not None and d.picture_id_15bit
        # Independent keyframe check: a key frame's header carries the start code
        # 9d 01 2a at octets 3-5 of the VP8 payload (RFC 6386 §9.1).
        vp8 = p.data[p.start + d.size : p.end]
        assert d.is_keyframe == (d.is_start_of_frame and vp8[3:6] == b"\x9d\x01\x2a")
    assert descs[0].is_keyframe
    keyframes_per_picture: dict[int, int] = {}
    for d in descs:
        assert d.picture_id is not None
        keyframes_per_picture[d.picture_id] = (
            keyframes_per_picture.get(d.picture_id, 0) + d.is_keyframe
        )
    assert max(keyframes_per_picture.values()) == 1  # one keyframe start per keyframe
    checked = 0
    for (a, da), (b, db) in itertools.pairwise(zip(pkts, descs, strict=True)):
        if (a.seq + 1) & 0xFFFF != b.seq:
            continue  # the capture is a sample: only adjacent packets are comparable
        assert da.picture_id is not None and db.picture_id is not None
        if a.timestamp == b.timestamp:
            assert db.picture_id == da.picture_id
            assert not db.is_start_of_frame and not a.marker
        else:
            assert db.picture_id == (da.picture_id + 1) & 0x7FFF
            assert db.is_start_of_frame and a.marker
        checked += 1
    assert checked > 40


def test_captured_vp8_rewrite_leaves_payload() -> None:
    for p in rtp_payloads("chromium_vp8.hex")[:40]:
        buf = bytearray(p.data)
        d = parse_vp8(buf, p.start, p.end)
        rewrite_vp8_descriptor(buf, p.start, 0x7FFF, 7, 3)
        assert parse_vp8(buf, p.start, p.end).picture_id == 0x7FFF
        assert buf[: p.start] == p.data[: p.start]
        assert buf[p.start + d.size :] == p.data[p.start + d.size :]
