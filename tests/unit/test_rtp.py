"""Tests for sfu.packet.rtp: RTP header parsing/serialization and RFC 8285 extension blocks."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from fixture_files import allocation_bound, edited, peak_allocation
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.rtp import (
    ONE_BYTE_PROFILE,
    TWO_BYTE_PROFILE,
    Extensions,
    RtpPacket,
    RtpView,
    build_extension_block,
    find_extension,
    parse_extension_elements,
    parse_rtp,
    payload_offset,
    peek_rtp_header,
)

# A VP8-like packet as Chrome sends it: V=2, X=1, M=1, PT=96, one-byte extensions
# (id 1 abs-send-time, id 3 transport-cc, id 4 mid "0") plus one padding byte.
CHROME_LIKE = bytes.fromhex(
    "90e0"  # V=2 P=0 X=1 CC=0 | M=1 PT=96
    "1234"  # seq
    "0001e240"  # timestamp 123456
    "deadbeef"  # ssrc
    "bede0003"  # one-byte profile, 3 words
    "12abcdef"  # id1 len3 abs-send-time
    "310102"  # id3 len2 transport-cc seq 0x0102
    "4030"  # id4 len1 mid "0"
    "000000"  # three padding bytes inside the block
    "9001e0"  # payload
)


def _header(
    *,
    p: int = 0,
    x: int = 0,
    cc: int = 0,
    m: int = 0,
    pt: int = 111,
    seq: int = 1,
    ts: int = 2,
    ssrc: int = 3,
) -> bytes:
    b0 = 0x80 | (p << 5) | (x << 4) | cc
    return struct.pack("!BBHII", b0, (m << 7) | pt, seq, ts, ssrc)


# --------------------------------------------------------------------------- parse


def test_parse_chrome_like_packet() -> None:
    pkt = RtpPacket.parse(CHROME_LIKE)
    assert pkt.marker is True
    assert pkt.payload_type == 96
    assert pkt.sequence_number == 0x1234
    assert pkt.timestamp == 123456
    assert pkt.ssrc == 0xDEADBEEF
    assert pkt.csrcs == ()
    assert pkt.extension_profile == ONE_BYTE_PROFILE
    assert len(pkt.extension_data) == 12
    assert pkt.payload == bytes.fromhex("9001e0")
    assert pkt.padding_length == 0
    assert pkt.header_size == 28
    assert pkt.extensions() == [
        (1, bytes.fromhex("abcdef")),
        (3, bytes.fromhex("0102")),
        (4, b"0"),
    ]
    assert pkt.get_extension(3) == bytes.fromhex("0102")
    assert pkt.get_extension(4) == b"0"
    assert pkt.get_extension(7) is None
    assert pkt.serialize() == CHROME_LIKE


def test_parse_accepts_bytearray_and_memoryview() -> None:
    a = RtpPacket.parse(bytearray(CHROME_LIKE))
    b = RtpPacket.parse(memoryview(CHROME_LIKE))
    assert a == b == RtpPacket.parse(CHROME_LIKE)
    assert isinstance(a.payload, bytes)


def test_csrcs_round_trip() -> None:
    data = _header(cc=2) + struct.pack("!II", 0x11111111, 0x22222222) + b"payload"
    pkt = RtpPacket.parse(data)
    assert pkt.csrcs == (0x11111111, 0x22222222)
    assert pkt.payload == b"payload"
    assert pkt.serialize() == data


def test_padding_zero_fill_round_trip() -> None:
    data = _header(p=1) + b"\xaa\xbb" + b"\x00\x00\x00\x04"
    pkt = RtpPacket.parse(data)
    assert pkt.payload == b"\xaa\xbb"
    assert pkt.padding_length == 4
    assert pkt.padding == b""
    assert pkt.serialize() == data


def test_padding_nonzero_bytes_preserved() -> None:
    data = _header(p=1) + b"\x01" + b"\x07\x00\x09\x04"
    pkt = RtpPacket.parse(data)
    assert pkt.payload == b"\x01"
    assert pkt.padding_length == 4
    assert pkt.padding == b"\x07\x00\x09"
    assert pkt.serialize() == data


def test_padding_only_probe_packet() -> None:
    # Padding-only packets (bandwidth probes) have an empty payload.
    data = _header(p=1) + bytes(254) + b"\xff"
    pkt = RtpPacket.parse(data)
    assert pkt.payload == b""
    assert pkt.padding_length == 255
    assert pkt.serialize() == data


def test_unknown_profile_kept_raw() -> None:
    data = _header(x=1) + b"\xab\xcd\x00\x01" + b"\x01\x02\x03\x04" + b"pl"
    pkt = RtpPacket.parse(data)
    assert pkt.extension_profile == 0xABCD
    assert pkt.extension_data == b"\x01\x02\x03\x04"
    assert pkt.extensions() == []
    assert pkt.get_extension(1) is None
    assert pkt.serialize() == data


def test_empty_extension_block_round_trips() -> None:
    data = _header(x=1) + b"\xbe\xde\x00\x00" + b"pl"
    pkt = RtpPacket.parse(data)
    assert pkt.extension_profile == ONE_BYTE_PROFILE
    assert pkt.extension_data == b""
    assert pkt.extensions() == []
    assert pkt.serialize() == data


def test_two_byte_profile_with_appbits() -> None:
    body = b"\x01\x00" + b"\x00" + b"\x10\x03abc" + bytes(4)  # id1 len0, pad, id16 len3
    data = _header(x=1) + b"\x10\x03\x00\x03" + body + b"x"
    pkt = RtpPacket.parse(data)
    assert pkt.extension_profile == 0x1003
    assert pkt.extensions() == [(1, b""), (16, b"abc")]
    assert pkt.get_extension(16) == b"abc"
    assert pkt.get_extension(1) == b""
    assert pkt.serialize() == data


@pytest.mark.parametrize(
    "data",
    [
        b"",
        _header()[:11],
        bytes([0x40]) + _header()[1:],  # version 1
        bytes([0x00]) + _header()[1:],  # version 0
        _header(cc=3) + b"\x00" * 8,  # CSRC list truncated
        _header(x=1) + b"\xbe\xde",  # extension header truncated
        _header(x=1) + b"\xbe\xde\x00\x02" + b"\x00" * 4,  # extension body truncated
        _header(p=1),  # padding bit without a count octet
        _header(p=1) + b"abc\x00",  # padding count 0
        _header(p=1) + b"abc\x05",  # padding count larger than the payload area
        _header(x=1, p=1) + b"\xbe\xde\x00\x00" + b"\x06" * 5,  # padding eats header
    ],
)
def test_malformed_packets_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        RtpPacket.parse(data)


def test_padding_may_consume_whole_payload_but_not_header() -> None:
    pkt = RtpPacket.parse(_header(p=1) + b"\x00\x02")
    assert pkt.payload == b""
    assert pkt.padding_length == 2
    with pytest.raises(ParseError):
        RtpPacket.parse(_header(p=1) + b"\x00\x03")


# --------------------------------------------------------------------------- serialize


def test_serialize_from_fields() -> None:
    pkt = RtpPacket(
        marker=True,
        payload_type=111,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=1,
        payload=b"opus",
    )
    data = pkt.serialize()
    assert data[:2] == b"\x80\xef"
    assert data[2:4] == b"\xff\xff"
    assert data[12:] == b"opus"
    assert RtpPacket.parse(data) == pkt


@pytest.mark.parametrize(
    "pkt",
    [
        RtpPacket(payload_type=128),
        RtpPacket(payload_type=-1),
        RtpPacket(sequence_number=65536),
        RtpPacket(timestamp=1 << 32),
        RtpPacket(ssrc=-1),
        RtpPacket(csrcs=tuple(range(16))),
        RtpPacket(csrcs=(1 << 32,)),
        RtpPacket(extension_profile=ONE_BYTE_PROFILE, extension_data=b"\x10\x01\x00"),
        RtpPacket(extension_profile=0x10000, extension_data=b""),
        RtpPacket(extension_data=b"\x00\x00\x00\x00"),
        RtpPacket(padding_length=256),
        RtpPacket(padding_length=3, padding=b"\x01"),
        RtpPacket(padding=b"\x01"),
    ],
)
def test_serialize_rejects_out_of_range_fields(pkt: RtpPacket) -> None:
    with pytest.raises(ValueError):
        pkt.serialize()


# --------------------------------------------------------------------------- extensions


def test_one_byte_elements_padding_and_stop_id() -> None:
    body = b"\x00\x10\xaa\x00\x21\xbb\xcc" + b"\xf5" + b"\x30\xdd"
    assert parse_extension_elements(ONE_BYTE_PROFILE, body) == [(1, b"\xaa"), (2, b"\xbb\xcc")]


def test_one_byte_element_overrun_raises() -> None:
    with pytest.raises(ParseError):
        parse_extension_elements(ONE_BYTE_PROFILE, b"\x13\x01\x02")
    pkt = RtpPacket(extension_profile=ONE_BYTE_PROFILE, extension_data=b"\x12\x01\x02\x03")
    assert pkt.get_extension(1) == b"\x01\x02\x03"
    bad = RtpPacket(extension_profile=ONE_BYTE_PROFILE, extension_data=b"\x00\x00\x00\x17")
    with pytest.raises(ParseError):
        bad.get_extension(1)
    with pytest.raises(ParseError):
        bad.extensions()


def test_two_byte_element_errors() -> None:
    with pytest.raises(ParseError):
        parse_extension_elements(TWO_BYTE_PROFILE, b"\x05")  # no length byte
    with pytest.raises(ParseError):
        parse_extension_elements(TWO_BYTE_PROFILE, b"\x05\x04abc")  # overrun
    with pytest.raises(ParseError):
        parse_extension_elements(0x1234, b"")  # not an RFC 8285 profile


def test_build_one_byte_form() -> None:
    profile, body = build_extension_block([(1, b"\xab\xcd\xef"), (14, b"x" * 16)])
    assert profile == ONE_BYTE_PROFILE
    assert body[:4] == b"\x12\xab\xcd\xef"
    assert body[4] == 0xEF  # id 14, length 16
    assert len(body) % 4 == 0
    assert parse_extension_elements(profile, body) == [(1, b"\xab\xcd\xef"), (14, b"x" * 16)]


@pytest.mark.parametrize(
    "elements",
    [
        [(15, b"a")],  # id 15 is reserved in the one-byte form
        [(1, b"")],  # zero-length needs the two-byte form
        [(1, b"y" * 17)],  # longer than 16 bytes
        [(200, b"abc"), (1, b"z")],
    ],
)
def test_build_two_byte_form(elements: list[tuple[int, bytes]]) -> None:
    profile, body = build_extension_block(elements)
    assert profile == TWO_BYTE_PROFILE
    assert len(body) % 4 == 0
    assert parse_extension_elements(profile, body) == elements


def test_build_forced_two_byte_and_errors() -> None:
    profile, body = build_extension_block([(1, b"a")], force_two_byte=True)
    assert (profile, body) == (TWO_BYTE_PROFILE, b"\x01\x01a\x00")
    with pytest.raises(ValueError):
        build_extension_block([(256, b"a")])
    with pytest.raises(ValueError):
        build_extension_block([(0, b"")])
    with pytest.raises(ValueError):
        build_extension_block([(1, b"a" * 256)])
    assert build_extension_block([]) == (ONE_BYTE_PROFILE, b"")


def test_with_and_without_extension() -> None:
    pkt = RtpPacket.parse(CHROME_LIKE)
    updated = pkt.with_extension(3, b"\x99\x98")
    assert updated.get_extension(3) == b"\x99\x98"
    assert [i for i, _ in updated.extensions()] == [1, 3, 4]
    assert updated.payload == pkt.payload
    assert pkt.get_extension(3) == b"\x01\x02"  # original untouched
    appended = pkt.with_extension(9, b"\x01")
    assert appended.extensions()[-1] == (9, b"\x01")
    removed = pkt.without_extension(1)
    assert removed.get_extension(1) is None
    assert RtpPacket.parse(removed.serialize()) == removed
    bare = pkt.with_extensions([])
    assert bare.extension_profile is None
    assert bare.serialize()[0] & 0x10 == 0
    two = RtpPacket(payload_type=96).with_extensions([(20, b"ab")])
    assert two.extension_profile == TWO_BYTE_PROFILE
    assert two.with_extension(1, b"q").extension_profile == TWO_BYTE_PROFILE


def test_peek_rtp_header() -> None:
    assert peek_rtp_header(CHROME_LIKE) == (0xDEADBEEF, 0x1234, 123456, 96)
    assert peek_rtp_header(memoryview(CHROME_LIKE)) == (0xDEADBEEF, 0x1234, 123456, 96)
    assert peek_rtp_header(CHROME_LIKE[:11]) is None
    assert peek_rtp_header(b"\x40" + CHROME_LIKE[1:]) is None


# --------------------------------------------------------------------------- properties

_elements_one = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=6
)
_elements_any = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=40)), max_size=6)


@st.composite
def rtp_packets(draw: st.DrawFn) -> RtpPacket:
    ext_kind = draw(st.sampled_from(["none", "one", "two", "raw"]))
    profile: int | None = None
    ext_data = b""
    if ext_kind == "one":
        profile, ext_data = build_extension_block(draw(_elements_one))
    elif ext_kind == "two":
        profile, ext_data = build_extension_block(draw(_elements_any), force_two_byte=True)
    elif ext_kind == "raw":
        profile = draw(st.integers(0, 0xFFFF))
        ext_data = draw(st.binary(max_size=16).map(lambda b: b + bytes(-len(b) % 4)))
    padding_length = draw(st.integers(0, 255))
    padding = b""
    if padding_length > 1 and draw(st.booleans()):
        padding = draw(st.binary(min_size=padding_length - 1, max_size=padding_length - 1))
        if not any(padding):
            padding = b""
    return RtpPacket(
        marker=draw(st.booleans()),
        payload_type=draw(st.integers(0, 127)),
        sequence_number=draw(st.integers(0, 0xFFFF)),
        timestamp=draw(st.integers(0, 0xFFFFFFFF)),
        ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        csrcs=tuple(draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=15))),
        extension_profile=profile,
        extension_data=ext_data,
        payload=draw(st.binary(max_size=64)),
        padding_length=padding_length,
        padding=padding,
    )


@settings(max_examples=300, deadline=None)
@given(rtp_packets())
def test_property_object_round_trip(pkt: RtpPacket) -> None:
    data = pkt.serialize()
    parsed = RtpPacket.parse(data)
    assert parsed == pkt
    assert parsed.serialize() == data
    assert peek_rtp_header(data) == (pkt.ssrc, pkt.sequence_number, pkt.timestamp, pkt.payload_type)


@settings(max_examples=300, deadline=None)
@given(_elements_any)
def test_property_extension_block_round_trip(elements: list[tuple[int, bytes]]) -> None:
    profile, body = build_extension_block(elements)
    assert len(body) % 4 == 0
    assert parse_extension_elements(profile, body) == elements
    pkt = RtpPacket(payload_type=100).with_extensions(elements)
    reparsed = RtpPacket.parse(pkt.serialize())
    assert reparsed.extensions() == elements
    for ext_id, _ in elements:
        assert reparsed.get_extension(ext_id) == next(v for i, v in elements if i == ext_id)


def _check_parse_or_error(data: bytes) -> None:
    try:
        pkt = RtpPacket.parse(data)
    except ParseError:
        return
    assert pkt.serialize() == data
    try:
        elements = pkt.extensions()
        for ext_id, _ in elements:
            assert pkt.get_extension(ext_id) is not None
    except ParseError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_property_random_bytes(data: bytes) -> None:
    _check_parse_or_error(b"\x80" + data)  # bias towards version 2
    _check_parse_or_error(data)


@settings(max_examples=400, deadline=None)
@given(rtp_packets(), st.data())
def test_property_mutations(pkt: RtpPacket, data: st.DataObject) -> None:
    _check_parse_or_error(edited(data, pkt.serialize()))


@pytest.mark.parametrize(
    "data",
    [
        b"\x8f" + bytes(11),  # CSRC count 15, no CSRCs
        _header(x=1) + b"\x10\x00\xff\xff",  # 256 KiB extension claimed
        _header(p=1) + b"\xff",  # padding of 255 claimed
        _header(x=1) + b"\xbe\xde\x00\x01" + b"\x1f\x00\x00\x00",
        b"\x9f" + bytes(11) + bytes(60) + b"\x10\x00\xff\xff",
    ],
)
def test_bounded_allocation(data: bytes) -> None:
    peak = peak_allocation(lambda d: RtpPacket.parse(d).extensions(), data, repeat=20)
    assert peak < allocation_bound(data)


# --------------------------------------------------------------------------- parse_rtp


def test_parse_rtp_chrome_like_packet() -> None:
    view = parse_rtp(CHROME_LIKE)
    assert view == RtpView(
        ssrc=0xDEADBEEF,
        seq=0x1234,
        timestamp=123456,
        payload_type=96,
        marker=True,
        payload_offset=28,
        payload_end=len(CHROME_LIKE),
        extensions={1: bytes.fromhex("abcdef"), 3: b"\x01\x02", 4: b"0"},
    )
    assert parse_rtp(bytearray(CHROME_LIKE)) == view
    assert parse_rtp(memoryview(CHROME_LIKE)) == view


def test_parse_rtp_first_element_of_an_id_wins_and_stop_id_ends_the_walk() -> None:
    body = bytes([0x10, 0xAA, 0x10, 0xBB, 0xF0, 0x20, 0xCC, 0x00])  # id 1 twice, stop, id 2
    view = parse_rtp(_header(x=1) + b"\xbe\xde\x00\x02" + body)
    assert view.extensions == {1: b"\xaa"}
    assert find_extension(_header(x=1) + b"\xbe\xde\x00\x02" + body, 2) is None


def test_parse_rtp_unknown_profile_has_no_elements_and_does_not_raise() -> None:
    data = _header(x=1) + b"\x12\x34\x00\x01" + b"\x1f\xff\xff\xff" + b"pay"
    view = parse_rtp(data)
    assert view.extensions == {} and view.payload_offset == 20
    assert find_extension(data, 1) is None


def test_parse_rtp_padding_only_and_csrcs() -> None:
    probe = _header(p=1, cc=2) + bytes(8) + bytes(9) + b"\x0a"  # 10 octets of padding
    view = parse_rtp(probe)
    assert view.payload_offset == 20 and view.payload_end == 20
    # An over-long count is not validated (as in the forwarder): no payload, end never < 0.
    assert parse_rtp(_header(p=1) + b"\xff").payload_end == 0


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        b"\x40" + bytes(11),  # version 1
        b"\x81" + bytes(11),  # one CSRC announced, none present
        _header(x=1) + b"\xbe\xde",  # extension header truncated
        _header(x=1) + b"\xbe\xde\x00\x02" + bytes(4),  # block longer than the packet
        _header(x=1) + b"\xbe\xde\x00\x01" + b"\x13\x00\x00\x00",  # element overruns
        _header(x=1) + b"\x10\x00\x00\x01" + b"\x00\x00\x00\x07",  # two-byte, no length
    ],
)
def test_parse_rtp_malformed_raises(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_rtp(data)


def _raises(fn: Callable[..., object], *args: object) -> bool:
    try:
        fn(*args)
    except ParseError:
        return True
    return False


def _check_view_agrees(data: bytes) -> None:
    """parse_rtp raises ParseError (nothing else) exactly where the piecewise helpers do, and
    otherwise every field equals what they read."""
    try:
        view = parse_rtp(data)
    except ParseError:
        # Id 256 matches no element, so find_extension walks (and validates) the whole block.
        assert (
            peek_rtp_header(data) is None
            or _raises(payload_offset, data)
            or _raises(find_extension, data, 256)
        )
        return
    assert peek_rtp_header(data) == (view.ssrc, view.seq, view.timestamp, view.payload_type)
    assert view.marker == bool(data[1] & 0x80)
    assert view.payload_offset == payload_offset(data)
    pad = data[-1] if data[0] & 0x20 else 0
    assert view.payload_end == max(len(data) - pad, 0)
    for ext_id in range(257):
        assert view.extensions.get(ext_id) == find_extension(data, ext_id)
    assert all(isinstance(v, bytes) for v in view.extensions.values())
    assert parse_rtp(bytearray(data)) == view


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_property_parse_rtp_random_bytes(data: bytes) -> None:
    _check_view_agrees(b"\x80" + data)  # version 2, no extension
    _check_view_agrees(b"\x90" + data)  # version 2 with an extension block
    _check_view_agrees(data)


@settings(max_examples=400, deadline=None)
@given(rtp_packets(), st.data())
def test_property_parse_rtp_agrees_on_packets_and_mutations(
    pkt: RtpPacket, data: st.DataObject
) -> None:
    wire = pkt.serialize()
    _check_view_agrees(wire)
    _check_view_agrees(edited(data, wire))


def _outcome(fn: Callable[..., object], *args: object) -> object:
    try:
        return fn(*args)
    except ParseError:
        return ParseError


def _check_extensions_agree(data: bytes) -> None:
    """Extensions (one pass) answers every lookup as the per-id find_extension does, errors
    included, and the payload offset as payload_offset does."""
    if peek_rtp_header(data) is None:
        return  # callers check the fixed header first
    ext = Extensions(data)
    for ext_id in range(-1, 258):
        assert _outcome(ext.get, ext_id) == _outcome(find_extension, data, ext_id)
    assert _outcome(ext.payload_offset) == _outcome(payload_offset, data)


@settings(max_examples=300, deadline=None)
@given(rtp_packets(), st.data())
def test_property_extensions_agree_with_per_id_lookups(pkt: RtpPacket, data: st.DataObject) -> None:
    wire = pkt.serialize()
    _check_extensions_agree(wire)
    _check_extensions_agree(edited(data, wire))
    _check_extensions_agree(b"\x90" + data.draw(st.binary(max_size=60)))
