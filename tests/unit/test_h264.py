"""Tests for the H.264 RTP payload inspector (RFC 6184 §5)."""

from __future__ import annotations

import itertools

import pytest
from fixture_files import assert_bounded_allocation, mutated, rtp_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.codecs.h264 import (
    H264Descriptor,
    H264Packetization,
    iter_stap_a,
    parse_h264,
)
from sfu.packet.errors import ParseError

# NAL units: header octet (F=0, NRI, type) + body. Slice bodies start with
# first_mb_in_slice as ue(v): a leading 1 bit means 0 (first slice of the picture).
SPS = bytes([0x67, 0x42, 0xC0, 0x1F, 0xDA, 0x01])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65, 0x88, 0x84, 0x00, 0x33])
SLICE_FIRST = bytes([0x41, 0x9A, 0x02, 0x04])
SLICE_LATER = bytes([0x41, 0x40, 0x02, 0x04])  # first_mb_in_slice != 0
AUD = bytes([0x09, 0xF0])


def stap_a(*nalus: bytes, nri: int = 3) -> bytes:
    """Build a STAP-A (RFC 6184 §5.7.1) from complete NAL units."""
    out = bytearray([(nri << 5) | 24])
    for n in nalus:
        out += len(n).to_bytes(2, "big") + n
    return bytes(out)


def fu_a(nalu: bytes, start: int, stop: int) -> bytes:
    """Build the FU-A (RFC 6184 §5.8) carrying ``nalu[1:][start:stop]``."""
    body = nalu[1:]
    fu = nalu[0] & 0x1F
    if start == 0:
        fu |= 0x80
    if stop >= len(body):
        fu |= 0x40
    return bytes([(nalu[0] & 0xE0) | 28, fu]) + body[start:stop]


def test_single_idr() -> None:
    d = parse_h264(IDR)
    assert d == H264Descriptor(
        packetization=H264Packetization.SINGLE_NAL,
        nal_type=5,
        nri=3,
        nal_types=(5,),
        is_start_of_frame=True,
    )
    assert d.is_keyframe


@pytest.mark.parametrize(
    ("nalu", "start", "key"),
    [
        (SPS, True, True),
        (PPS, True, False),
        (AUD, True, False),
        (SLICE_FIRST, True, False),
        (SLICE_LATER, False, False),
        (bytes([0x65, 0x40]), False, True),  # IDR continuation slice: still key
        (bytes([0x65]), False, True),  # bare header: start cannot be determined
        (bytes([0x03, 0xFF]), False, False),  # partition B has no slice header
        (bytes([0x0C, 0xFF]), False, False),  # filler data
    ],
)
def test_single_nal_classification(nalu: bytes, start: bool, key: bool) -> None:
    d = parse_h264(nalu)
    assert d.packetization is H264Packetization.SINGLE_NAL
    assert d.nal_types == (nalu[0] & 0x1F,)
    assert d.is_start_of_frame is start
    assert d.is_keyframe is key


def test_header_bits() -> None:
    d = parse_h264(bytes([0x80 | 0x20 | 1, 0x80]))
    assert d.forbidden_bit and d.nri == 1 and d.nal_type == 1


def test_stap_a_keyframe() -> None:
    pkt = stap_a(SPS, PPS, IDR)
    d = parse_h264(pkt)
    assert d.packetization is H264Packetization.STAP_A
    assert d.nal_type == 24
    assert d.nal_types == (7, 8, 5)
    assert d.is_keyframe and d.is_start_of_frame
    units = [bytes(pkt[o : o + n]) for o, n in iter_stap_a(pkt)]
    assert units == [SPS, PPS, IDR]


def test_stap_a_delta() -> None:
    d = parse_h264(stap_a(SLICE_LATER, bytes([0x06, 0x05, 0x01])))
    assert d.nal_types == (1, 6)
    assert not d.is_keyframe and not d.is_start_of_frame


@pytest.mark.parametrize(
    "pkt",
    [
        bytes([0x78]),  # no units
        bytes([0x78, 0x00]),  # half a size field
        bytes([0x78, 0x00, 0x00]),  # zero-size unit
        bytes([0x78, 0x00, 0x05, 0x65, 0x88]),  # size overruns the payload
        stap_a(IDR) + b"\x00",  # trailing octet
        stap_a(IDR, bytes([0x7C, 0x85])),  # nested FU-A
        stap_a(bytes([0x78, 0x00])),  # nested STAP-A
    ],
)
def test_stap_a_malformed(pkt: bytes) -> None:
    with pytest.raises(ParseError):
        parse_h264(pkt)
    with pytest.raises(ParseError):
        list(iter_stap_a(pkt))


def test_iter_stap_a_rejects_non_stap_and_bad_window() -> None:
    with pytest.raises(ParseError, match="not a STAP-A"):
        list(iter_stap_a(IDR))
    for off, end in [(-1, None), (0, 0), (0, 99)]:
        with pytest.raises(ParseError):
            list(iter_stap_a(stap_a(IDR), off, end))


def test_fu_a_fragments() -> None:
    big = IDR + bytes(range(40))
    frags = [fu_a(big, i, i + 10) for i in range(0, len(big) - 1, 10)]
    parsed = [parse_h264(f) for f in frags]
    assert all(p.packetization is H264Packetization.FU_A for p in parsed)
    assert all(p.nal_type == 28 and p.nal_types == (5,) for p in parsed)
    assert [p.fu_start for p in parsed] == [True] + [False] * (len(frags) - 1)
    assert [p.fu_end for p in parsed] == [False] * (len(frags) - 1) + [True]
    assert [p.is_keyframe for p in parsed] == [True] + [False] * (len(frags) - 1)
    assert [p.is_start_of_frame for p in parsed] == [True] + [False] * (len(frags) - 1)


def test_fu_a_later_slice_and_empty_payload() -> None:
    d = parse_h264(fu_a(SLICE_LATER, 0, 2))
    assert d.fu_start and not d.is_start_of_frame and not d.is_keyframe
    empty = parse_h264(bytes([0x7C, 0x05]))  # FU payload may be empty (§5.8)
    assert empty.nal_types == (5,) and not empty.fu_start and not empty.is_keyframe


@pytest.mark.parametrize("pkt", [bytes([0x7C]), bytes([0x7C, 0x98, 0x00]), bytes([0x7C, 0x9C])])
def test_fu_a_malformed(pkt: bytes) -> None:
    with pytest.raises(ParseError):
        parse_h264(pkt)


@pytest.mark.parametrize("nal_type", [0, 25, 26, 27, 29, 30, 31])
def test_unsupported_types_are_valid(nal_type: int) -> None:
    d = parse_h264(bytes([0x60 | nal_type, 0x00, 0x01, 0x65]))
    assert d.packetization is H264Packetization.UNSUPPORTED
    assert d.nal_type == nal_type
    assert d.nal_types == ()
    assert not d.is_keyframe and not d.is_start_of_frame


def test_empty_and_window() -> None:
    with pytest.raises(ParseError):
        parse_h264(b"")
    pkt = b"\xee" * 12 + stap_a(SPS, PPS) + b"\x00\x00\x02"
    d = parse_h264(memoryview(pkt), 12, len(pkt) - 3)
    assert d.nal_types == (7, 8)
    with pytest.raises(ParseError):
        parse_h264(pkt, 12)  # the RTP padding would be read as a truncated unit
    for off, end in [(-1, None), (5, 4), (0, len(pkt) + 1), (len(pkt), None)]:
        with pytest.raises(ParseError):
            parse_h264(pkt, off, end)


# --- property tests --------------------------------------------------------------------

nal_units = st.builds(
    lambda hdr, body: bytes([hdr]) + body,
    st.integers(0, 255).filter(lambda b: not 24 <= b & 0x1F <= 29),
    st.binary(max_size=20),
)


@settings(max_examples=400)
@given(st.lists(nal_units, min_size=1, max_size=12))
def test_stap_a_round_trip(units: list[bytes]) -> None:
    pkt = stap_a(*units)
    d = parse_h264(pkt)
    assert d.nal_types == tuple(u[0] & 0x1F for u in units)
    assert [pkt[o : o + n] for o, n in iter_stap_a(pkt)] == units
    assert d.is_keyframe == any(u[0] & 0x1F in (5, 7) for u in units)
    assert d.is_start_of_frame == parse_h264(units[0]).is_start_of_frame


@settings(max_examples=400)
@given(nal_units.filter(lambda u: u[0] & 0x1F not in (0, 30, 31)), st.integers(1, 8))
def test_fu_a_fragmentation_matches_single(nalu: bytes, step: int) -> None:
    single = parse_h264(nalu)
    body_len = len(nalu) - 1
    frags = [parse_h264(fu_a(nalu, i, i + step)) for i in range(0, max(body_len, 1), step)]
    assert frags[0].fu_start and frags[-1].fu_end
    assert all(f.nal_types == single.nal_types for f in frags)
    assert frags[0].is_keyframe == single.is_keyframe
    assert frags[0].is_start_of_frame == single.is_start_of_frame
    assert not any(f.is_keyframe or f.is_start_of_frame for f in frags[1:])


@settings(max_examples=500)
@given(st.binary(max_size=40))
def test_random_bytes_parse_or_raise(data: bytes) -> None:
    try:
        d = parse_h264(data)
    except ParseError:
        return
    assert d.nal_type == data[0] & 0x1F
    if d.packetization is H264Packetization.STAP_A:
        spans = list(iter_stap_a(data))
        assert len(spans) == len(d.nal_types)
        assert 1 + sum(2 + n for _, n in spans) == len(data)


@settings(max_examples=400)
@given(st.lists(nal_units, min_size=1, max_size=6), st.data())
def test_mutations_parse_or_raise(units: list[bytes], data: st.DataObject) -> None:
    raw = mutated(data, stap_a(*units) if data.draw(st.booleans()) else fu_a(units[0], 0, 9))
    try:
        d = parse_h264(raw)
    except ParseError:
        return
    assert len(raw) >= 1 and d.nal_type == raw[0] & 0x1F


def test_bounded_allocation() -> None:
    many = stap_a(*[bytes([0x06])] * 400)  # the most units per octet: 3 octets each
    samples = [many, many[:-1], stap_a(SPS, PPS, IDR), fu_a(IDR, 0, 3), bytes([0x78]) * 900]
    assert_bounded_allocation(parse_h264, samples, repeat=5)


# --- real captures -----------------------------------------------------------------------


def test_captured_h264_invariants() -> None:
    pkts = [p for p in rtp_payloads("chromium_h264.hex") if p.end > p.start]
    assert len(pkts) > 50
    descs = [parse_h264(p.data, p.start, p.end) for p in pkts]
    assert descs[0].is_keyframe and descs[0].is_start_of_frame
    assert H264Packetization.UNSUPPORTED not in {d.packetization for d in descs}
    assert not any(d.forbidden_bit for d in descs)
    for p, d in zip(pkts, descs, strict=True):
        if d.packetization is H264Packetization.STAP_A:
            spans = list(iter_stap_a(p.data, p.start, p.end))
            assert p.start + 1 + sum(2 + n for _, n in spans) == p.end
    idr_timestamps = {p.timestamp for p, d in zip(pkts, descs, strict=True) if 5 in d.nal_types}
    assert idr_timestamps
    checked = 0
    for (a, da), (b, db) in itertools.pairwise(zip(pkts, descs, strict=True)):
        if (a.seq + 1) & 0xFFFF != b.seq:
            continue  # the capture is a sample: only adjacent packets are comparable
        checked += 1
        if da.packetization is H264Packetization.FU_A and not da.fu_end:
            # The fragments of one NAL unit are sent back to back (RFC 6184 §5.8).
            assert db.packetization is H264Packetization.FU_A
            assert db.nal_types == da.nal_types and not db.fu_start
        if db.packetization is H264Packetization.FU_A and not db.fu_start:
            assert not db.is_start_of_frame and not db.is_keyframe
        if a.timestamp != b.timestamp:
            assert a.marker and db.is_start_of_frame
            assert db.is_keyframe == (b.timestamp in idr_timestamps)
        elif db.is_start_of_frame:
            # Within a picture only parameter sets / SEI / AUD may precede a start.
            assert set(da.nal_types) <= {6, 7, 8, 9}
    assert checked > 40
