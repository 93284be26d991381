"""Tests for the VP9 payload descriptor (RFC 9628 §4.2) parser, serializer and rewriter."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from fixture_files import assert_bounded_allocation, mutated, rtp_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.codecs.vp9 import (
    Vp9Descriptor,
    Vp9PictureGroupEntry,
    Vp9ScalabilityStructure,
    parse_vp9,
    rewrite_vp9_descriptor,
)
from sfu.packet.errors import ParseError

PAYLOAD = b"\x82\x49\x83"

# Non-flexible: I L B E set; 15-bit picture id 0x1234; TID=1 U=1 SID=2 D=1; TL0PICIDX 0x42.
NON_FLEX = bytes([0xAC, 0x80 | 0x12, 0x34, (1 << 5) | 0x10 | (2 << 1) | 0x01, 0x42])
# Flexible: I P L F B set; 7-bit picture id 0x11; TID=2 SID=0; P_DIFFs 1, 2, 4 (N chain).
FLEX = bytes([0xF8, 0x11, 0x40, 0x03, 0x05, 0x08])


def test_non_flexible_fields() -> None:
    d = parse_vp9(NON_FLEX + PAYLOAD)
    assert d.picture_id == 0x1234 and d.picture_id_15bit
    assert not d.flexible and not d.inter_picture_predicted
    assert d.is_start_of_frame and d.is_end_of_frame
    assert d.temporal_id == 1 and d.switching_up_point
    assert d.spatial_id == 2 and d.inter_layer_dependency
    assert d.tl0picidx == 0x42
    assert d.p_diffs == () and d.scalability_structure is None
    assert not d.is_keyframe  # SID=2 depends on the layer below
    assert d.size == len(NON_FLEX)
    assert d.serialize() == NON_FLEX


def test_flexible_p_diffs() -> None:
    d = parse_vp9(FLEX + PAYLOAD)
    assert d.flexible and d.inter_picture_predicted
    assert d.picture_id == 0x11 and not d.picture_id_15bit
    assert d.temporal_id == 2 and d.spatial_id == 0
    assert d.tl0picidx is None  # never present in flexible mode
    assert d.p_diffs == (1, 2, 4)
    assert d.size == len(FLEX)
    assert d.serialize() == FLEX


def test_more_than_three_p_diffs_rejected() -> None:
    with pytest.raises(ParseError, match="3 P_DIFFs"):
        parse_vp9(bytes([0xF8, 0x11, 0x40, 0x03, 0x05, 0x09, 0x02]) + PAYLOAD)


def test_flexible_without_layer_indices() -> None:
    # I P F B: no L octet, P_DIFF follows the picture id directly.
    d = parse_vp9(bytes([0xD8, 0x05, 0x02]) + PAYLOAD)
    assert d.temporal_id is None and d.spatial_id is None
    assert d.p_diffs == (1,)


def test_scalability_structure() -> None:
    # Keyframe with SS: I L B V; picture id 3; TID=0 SID=0; TL0PICIDX 0; then SS with
    # N_S=2 (3 layers), Y=1, G=1: three resolutions and a 2-picture group.
    ss = bytes([(2 << 5) | 0x10 | 0x08])
    ss += b"".join(w.to_bytes(2, "big") + h.to_bytes(2, "big") for w, h in
                   [(320, 180), (640, 360), (1280, 720)])  # fmt: skip
    ss += bytes([2, (0 << 5) | 0x10 | (1 << 2), 2, (1 << 5) | (2 << 2), 1, 1])
    raw = bytes([0xAA, 0x03, 0x00, 0x00]) + ss
    d = parse_vp9(raw + PAYLOAD)
    assert d.is_keyframe
    assert d.scalability_structure == Vp9ScalabilityStructure(
        num_spatial_layers=3,
        resolutions=((320, 180), (640, 360), (1280, 720)),
        picture_group=(
            Vp9PictureGroupEntry(temporal_id=0, switching_up_point=True, p_diffs=(2,)),
            Vp9PictureGroupEntry(temporal_id=1, switching_up_point=False, p_diffs=(1, 1)),
        ),
    )
    assert d.size == len(raw)
    assert d.serialize() == raw


def test_ss_without_y_and_g() -> None:
    d = parse_vp9(bytes([0x0A, 0xE0]) + PAYLOAD)  # B V; N_S=7
    ss = d.scalability_structure
    assert ss is not None and ss.num_spatial_layers == 8
    assert ss.resolutions is None and ss.picture_group is None
    assert d.size == 2


def _max_descriptor() -> bytes:
    """Every field present at its largest: 15-bit id, L + TL0, 8 layers, 255 x R=3 group."""
    raw = bytearray([0xAE, 0xFF, 0xFF, 0xFF, 0xFF])
    raw.append((7 << 5) | 0x10 | 0x08)
    raw += b"\xff\xff" * 16
    raw.append(255)
    for _ in range(255):
        raw += bytes([0xFC, 0xFF, 0xFF, 0xFF])
    return bytes(raw)


def test_max_size_descriptor() -> None:
    raw = _max_descriptor()
    d = parse_vp9(raw + PAYLOAD)
    ss = d.scalability_structure
    assert ss is not None and ss.picture_group is not None and ss.resolutions is not None
    assert len(ss.resolutions) == 8 and len(ss.picture_group) == 255
    assert ss.picture_group[-1] == Vp9PictureGroupEntry(7, True, (255, 255, 255))
    assert d.size == len(raw) == 1 + 2 + 2 + 1 + 32 + 1 + 255 * 4
    assert d.serialize() == raw
    for n in range(len(raw) + 1):  # every truncation, including "no payload", fails
        with pytest.raises(ParseError):
            parse_vp9(raw[:n])


@pytest.mark.parametrize(
    ("first", "layers", "keyframe"),
    [
        (0x88, None, True),  # I B, P=0, no layer info
        (0xA8, 0x00, True),  # SID 0
        (0xA8, 0x02, False),  # SID 1
        (0xC8, None, False),  # P=1
        (0x80, None, False),  # B=0: not the first packet
    ],
)
def test_keyframe(first: int, layers: int | None, keyframe: bool) -> None:
    raw = bytes([first, 0x01])
    if layers is not None:
        raw += bytes([layers, 0x00])
    assert parse_vp9(raw + PAYLOAD).is_keyframe is keyframe


def test_window_and_memoryview() -> None:
    pkt = b"\x00" * 12 + NON_FLEX + PAYLOAD + b"\x00\x02"
    d = parse_vp9(memoryview(pkt), 12, len(pkt) - 2)
    assert d.tl0picidx == 0x42
    for off, e in [(-1, None), (13, 12), (0, len(pkt) + 1), (len(pkt), None)]:
        with pytest.raises(ParseError):
            parse_vp9(pkt, off, e)


def test_serialize_rejects_inconsistent_fields() -> None:
    bad = [
        Vp9Descriptor(temporal_id=1),
        Vp9Descriptor(temporal_id=0, spatial_id=0),  # non-flexible needs TL0PICIDX
        Vp9Descriptor(flexible=True, temporal_id=0, spatial_id=0, tl0picidx=1),
        Vp9Descriptor(p_diffs=(1,)),
        Vp9Descriptor(flexible=True, inter_picture_predicted=True),
        Vp9Descriptor(flexible=True, inter_picture_predicted=True, p_diffs=(1, 2, 3, 4)),
        Vp9Descriptor(flexible=True, inter_picture_predicted=True, p_diffs=(128,)),
        Vp9Descriptor(picture_id=128),
        Vp9Descriptor(picture_id=0x8000, picture_id_15bit=True),
        Vp9Descriptor(flexible=True, temporal_id=8, spatial_id=0),
        Vp9Descriptor(scalability_structure=Vp9ScalabilityStructure(num_spatial_layers=9)),
        Vp9Descriptor(scalability_structure=Vp9ScalabilityStructure(2, resolutions=((1, 1),))),
        Vp9Descriptor(
            scalability_structure=Vp9ScalabilityStructure(1, resolutions=((0x10000, 1),))
        ),
        Vp9Descriptor(
            scalability_structure=Vp9ScalabilityStructure(
                1, picture_group=(Vp9PictureGroupEntry(p_diffs=(1, 2, 3, 4)),)
            )
        ),
    ]
    for d in bad:
        with pytest.raises(ValueError):
            d.serialize()


# --- in-place rewrite ------------------------------------------------------------------


def test_rewrite_non_flexible() -> None:
    buf = bytearray(NON_FLEX + PAYLOAD)
    rewrite_vp9_descriptor(buf, 0, picture_id=0x18001, tl0picidx=0x101)
    d = parse_vp9(buf)
    assert d.picture_id == 0x0001 and d.picture_id_15bit
    assert d.tl0picidx == 0x01
    assert buf[0] == NON_FLEX[0] and buf[3] == NON_FLEX[3]
    assert buf[len(NON_FLEX) :] == PAYLOAD


def test_rewrite_flexible_has_no_tl0() -> None:
    buf = bytearray(FLEX + PAYLOAD)
    rewrite_vp9_descriptor(buf, 0, picture_id=0xFF, tl0picidx=9)
    assert bytes(buf) == bytes([0xF8, 0x7F]) + FLEX[2:] + PAYLOAD


def test_rewrite_truncated_raises_without_writing() -> None:
    for n in range(len(NON_FLEX)):
        buf = bytearray(NON_FLEX[:n])
        with pytest.raises(ParseError):
            rewrite_vp9_descriptor(buf, 0, 1, 2)
        assert bytes(buf) == NON_FLEX[:n]


# --- property tests --------------------------------------------------------------------

pg_entries = st.builds(
    Vp9PictureGroupEntry,
    temporal_id=st.integers(0, 7),
    switching_up_point=st.booleans(),
    p_diffs=st.lists(st.integers(0, 255), max_size=3).map(tuple),
)


@st.composite
def scalability_structures(draw: st.DrawFn) -> Vp9ScalabilityStructure:
    n = draw(st.integers(1, 8))
    res = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
    return Vp9ScalabilityStructure(
        num_spatial_layers=n,
        resolutions=draw(st.none() | st.lists(res, min_size=n, max_size=n).map(tuple)),
        picture_group=draw(st.none() | st.lists(pg_entries, max_size=5).map(tuple)),
    )


@st.composite
def descriptors(draw: st.DrawFn) -> Vp9Descriptor:
    """Any serializable descriptor."""
    flexible = draw(st.booleans())
    predicted = draw(st.booleans())
    wide = draw(st.booleans())
    pid = draw(st.none() | st.integers(0, 0x7FFF if wide else 0x7F))
    layers = draw(st.booleans())
    return Vp9Descriptor(
        picture_id=pid,
        picture_id_15bit=wide and pid is not None,
        inter_picture_predicted=predicted,
        flexible=flexible,
        is_start_of_frame=draw(st.booleans()),
        is_end_of_frame=draw(st.booleans()),
        not_reference_for_upper_spatial=draw(st.booleans()),
        temporal_id=draw(st.integers(0, 7)) if layers else None,
        switching_up_point=layers and draw(st.booleans()),
        spatial_id=draw(st.integers(0, 7)) if layers else None,
        inter_layer_dependency=layers and draw(st.booleans()),
        tl0picidx=draw(st.integers(0, 255)) if layers and not flexible else None,
        p_diffs=(
            tuple(draw(st.lists(st.integers(0, 127), min_size=1, max_size=3)))
            if flexible and predicted
            else ()
        ),
        scalability_structure=draw(st.none() | scalability_structures()),
    )


@settings(max_examples=400)
@given(descriptors(), st.binary(min_size=1, max_size=4))
def test_round_trip(d: Vp9Descriptor, payload: bytes) -> None:
    raw = d.serialize()
    assert len(raw) == d.size
    parsed = parse_vp9(raw + payload)
    assert parsed == d
    assert parsed.serialize() == raw


@settings(max_examples=400)
@given(st.binary(max_size=48))
def test_random_bytes_parse_or_raise(data: bytes) -> None:
    try:
        d = parse_vp9(data)
    except ParseError:
        return
    assert 1 <= d.size < len(data)
    assert parse_vp9(d.serialize() + data[d.size :]) == d


@settings(max_examples=400)
@given(descriptors(), st.binary(min_size=1, max_size=4), st.data())
def test_mutations_parse_or_raise(d: Vp9Descriptor, payload: bytes, data: st.DataObject) -> None:
    raw = mutated(data, d.serialize() + payload)
    try:
        parsed = parse_vp9(raw)
    except ParseError:
        return
    assert parsed.size < len(raw)


@settings(max_examples=400)
@given(
    descriptors(),
    st.binary(min_size=1, max_size=4),
    st.none() | st.integers(-(2**20), 2**20),
    st.none() | st.integers(-(2**12), 2**12),
)
def test_rewrite_changes_only_targeted_fields(
    d: Vp9Descriptor, payload: bytes, pid: int | None, tl0: int | None
) -> None:
    orig = d.serialize() + payload
    buf = bytearray(orig)
    rewrite_vp9_descriptor(buf, 0, pid, tl0)
    assert len(buf) == len(orig)
    assert buf[d.size :] == payload
    expected = d
    if pid is not None and d.picture_id is not None:
        expected = dataclasses.replace(
            expected, picture_id=pid & (0x7FFF if d.picture_id_15bit else 0x7F)
        )
    if tl0 is not None and d.tl0picidx is not None:
        expected = dataclasses.replace(expected, tl0picidx=tl0 & 0xFF)
    assert parse_vp9(buf) == expected
    assert bytes(buf) == expected.serialize() + payload


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=24), st.integers(0, 2**16), st.integers(0, 255))
def test_rewrite_on_random_bytes_touches_only_field_octets(data: bytes, pid: int, tl0: int) -> None:
    try:
        d = parse_vp9(data)
    except ParseError:
        return
    buf = bytearray(data)
    rewrite_vp9_descriptor(buf, 0, pid, tl0)
    changed = [i for i in range(len(data)) if buf[i] != data[i]]
    assert all(1 <= i < 5 for i in changed)  # picture id / TL0PICIDX octets only
    after = parse_vp9(buf)
    assert dataclasses.replace(after, picture_id=d.picture_id, tl0picidx=d.tl0picidx) == d
    if d.picture_id is not None:
        assert after.picture_id == pid & (0x7FFF if d.picture_id_15bit else 0x7F)
    if d.tl0picidx is not None:
        assert after.tl0picidx == tl0


def test_bounded_allocation() -> None:
    big = _max_descriptor()
    # SS picture group of 255 bare entries: the most objects per input octet.
    dense = bytes([0x02, 0x08, 255]) + bytes(255) + PAYLOAD
    samples = [big + PAYLOAD, big[:700], dense, NON_FLEX + PAYLOAD, b"\x02\xff" + bytes(8)]
    assert_bounded_allocation(parse_vp9, samples, repeat=5)


# --- real captures -----------------------------------------------------------------------


def test_captured_vp9_invariants() -> None:
    pkts = [p for p in rtp_payloads("chromium_vp9.hex") if p.end > p.start]
    assert len(pkts) > 50
    descs = [parse_vp9(p.data, p.start, p.end) for p in pkts]
    assert descs[0].is_keyframe
    keyframes_per_picture: dict[int, int] = {}
    for p, d in zip(pkts, descs, strict=True):
        assert d.picture_id is not None and d.picture_id_15bit
        assert d.serialize() == p.data[p.start : p.start + d.size]
        if p.marker:
            assert d.is_end_of_frame  # the last packet of a picture ends its last layer
        if d.is_keyframe:
            # libwebrtc sends the scalability structure with every keyframe.
            ss = d.scalability_structure
            assert ss is not None and ss.resolutions is not None
        n = keyframes_per_picture.get(d.picture_id, 0)
        keyframes_per_picture[d.picture_id] = n + d.is_keyframe
    assert max(keyframes_per_picture.values()) == 1
    checked = 0
    for (a, da), (b, db) in itertools.pairwise(zip(pkts, descs, strict=True)):
        if (a.seq + 1) & 0xFFFF != b.seq:
            continue  # the capture is a sample: only adjacent packets are comparable
        assert da.picture_id is not None and db.picture_id is not None
        if a.timestamp == b.timestamp:
            assert db.picture_id == da.picture_id
        else:
            assert db.picture_id == (da.picture_id + 1) & 0x7FFF
            assert db.is_start_of_frame and da.is_end_of_frame and a.marker
        checked += 1
    assert checked > 40


def test_captured_vp9_rewrite_leaves_payload() -> None:
    for p in rtp_payloads("chromium_vp9.hex")[:40]:
        buf = bytearray(p.data)
        d = parse_vp9(buf, p.start, p.end)
        rewrite_vp9_descriptor(buf, p.start, 0x1234, 7)
        after = parse_vp9(buf, p.start, p.end)
        assert after.picture_id == 0x1234
        assert dataclasses.replace(after, picture_id=d.picture_id, tl0picidx=d.tl0picidx) == d
        assert buf[: p.start] == p.data[: p.start]
        assert buf[p.start + d.size :] == p.data[p.start + d.size :]
