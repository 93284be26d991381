"""Tests for sfu.packet.extensions: URIs, the extmap id map and per-extension codecs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.packet import extensions as ext
from sfu.packet.errors import ParseError
from sfu.packet.rtp import RtpPacket

CHROME_VIDEO_EXTMAPS = """\
m=video 9 UDP/TLS/RTP/SAVPF 96 97
a=extmap-allow-mixed
a=extmap:1 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 urn:3gpp:video-orientation
a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=extmap:12/sendonly https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension
a=rtpmap:96 VP8/90000
""".splitlines()


def test_uri_constants() -> None:
    assert ext.MID_URI == "urn:ietf:params:rtp-hdrext:sdes:mid"
    assert ext.RID_URI == "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
    assert ext.REPAIRED_RID_URI == "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
    assert ext.ABS_SEND_TIME_URI == "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
    assert ext.TRANSPORT_CC_URI.endswith("draft-holmer-rmcat-transport-wide-cc-extensions-01")
    assert ext.AUDIO_LEVEL_URI == "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
    assert ext.DEPENDENCY_DESCRIPTOR_URI.endswith("#dependency-descriptor-rtp-header-extension")


# --------------------------------------------------------------------------- extmap


def test_extension_map_from_sdp() -> None:
    emap = ext.ExtensionMap.from_sdp(CHROME_VIDEO_EXTMAPS)
    assert len(emap) == 8
    assert emap.id_for(ext.MID_URI) == 9
    assert emap.id_for(ext.RID_URI) == 10
    assert emap.id_for(ext.DEPENDENCY_DESCRIPTOR_URI) == 12
    assert emap.uri_for(4) == ext.TRANSPORT_CC_URI
    assert emap.uri_for(5) is None
    assert emap.id_for(ext.AUDIO_LEVEL_URI) is None
    assert 2 in emap and ext.ABS_SEND_TIME_URI in emap and 7 not in emap
    assert [i for i, _ in emap] == [1, 2, 3, 4, 9, 10, 11, 12]
    assert ext.ExtensionMap.from_sdp(emap.to_sdp()) == emap


def test_parse_extmap_fields() -> None:
    e = ext.parse_extmap("a=extmap:12/recvonly urn:x:y attr1 attr2")
    assert e == ext.Extmap(12, "urn:x:y", "recvonly", "attr1 attr2")
    e = ext.parse_extmap("extmap:255 urn:z")
    assert e == ext.Extmap(255, "urn:z", None, None)


@pytest.mark.parametrize(
    "line",
    [
        "a=extmap:0 urn:x",
        "a=extmap:256 urn:x",
        "a=extmap:-1 urn:x",
        "a=extmap:abc urn:x",
        "a=extmap:1",
        "a=extmap:1/sideways urn:x",
        "a=extmap-allow-mixed",
        "a=rtpmap:96 VP8/90000",
        "a=extmap:\u0661 urn:x",  # non-ASCII digit
    ],
)
def test_parse_extmap_rejects(line: str) -> None:
    with pytest.raises(ParseError):
        ext.parse_extmap(line)


def test_extension_map_conflicts() -> None:
    emap = ext.ExtensionMap([(1, ext.MID_URI)])
    emap.add(1, ext.MID_URI)  # idempotent
    with pytest.raises(ValueError):
        emap.add(1, ext.RID_URI)
    with pytest.raises(ValueError):
        emap.add(2, ext.MID_URI)
    with pytest.raises(ValueError):
        emap.add(0, ext.RID_URI)
    with pytest.raises(ParseError):
        ext.ExtensionMap.from_sdp(["a=extmap:1 urn:a", "a=extmap:1 urn:b"])


def test_extension_map_with_packet() -> None:
    emap = ext.ExtensionMap.from_sdp(CHROME_VIDEO_EXTMAPS)
    mid_id = emap.id_for(ext.MID_URI)
    tcc_id = emap.id_for(ext.TRANSPORT_CC_URI)
    assert mid_id is not None and tcc_id is not None
    pkt = RtpPacket(payload_type=96).with_extensions(
        [(mid_id, ext.build_mid("video0")), (tcc_id, ext.build_transport_cc_seq(513))]
    )
    parsed = RtpPacket.parse(pkt.serialize())
    mid = parsed.get_extension(mid_id)
    seq = parsed.get_extension(tcc_id)
    assert mid is not None and seq is not None
    assert ext.parse_mid(mid) == "video0"
    assert ext.parse_transport_cc_seq(seq) == 513


# --------------------------------------------------------------------------- SDES


def test_sdes_items() -> None:
    assert ext.parse_rid(b"hi") == "hi"
    assert ext.parse_repaired_rid(b"q-1_x") == "q-1_x"
    assert ext.parse_mid(b"0\x00\x00") == "0"  # null padding ends the value
    assert ext.build_rid("f") == b"f"
    for bad in (b"", b"\x00abc", b"a b", b"\xc3\xa9", b"a\x7f"):
        with pytest.raises(ParseError):
            ext.parse_sdes_item(bad)
    for value in ("", "x" * 256, "a b", "\u00e9"):
        with pytest.raises(ValueError):
            ext.build_sdes_item(value)


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255))
def test_property_sdes_round_trip(value: str) -> None:
    assert ext.parse_sdes_item(ext.build_sdes_item(value)) == value


# --------------------------------------------------------------------------- abs-send-time


def test_abs_send_time() -> None:
    assert ext.parse_abs_send_time(b"\x04\x00\x00") == 1 << 18
    assert ext.abs_send_time_to_seconds(1 << 18) == 1.0
    assert ext.abs_send_time_from_seconds(1.5) == 0x060000
    assert ext.abs_send_time_from_seconds(64.0) == 0  # wraps every 64 s
    assert ext.abs_send_time_from_us(1_000_000) == 1 << 18
    assert ext.abs_send_time_from_us(65_000_000) == 1 << 18
    assert ext.abs_send_time_to_us(1 << 18) == 1_000_000
    assert ext.build_abs_send_time(0xABCDEF) == b"\xab\xcd\xef"
    with pytest.raises(ParseError):
        ext.parse_abs_send_time(b"\x00\x00")
    with pytest.raises(ValueError):
        ext.build_abs_send_time(1 << 24)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 64_000_000 - 1))
def test_property_abs_send_time_precision(us: int) -> None:
    raw = ext.abs_send_time_from_us(us)
    assert ext.parse_abs_send_time(ext.build_abs_send_time(raw)) == raw
    back = ext.abs_send_time_to_us(raw)
    # One step is 1/2**18 s ~ 3.8 us; rounding both ways stays within one step (mod 64 s).
    assert min(abs(back - us), 64_000_000 - abs(back - us)) <= 4


# --------------------------------------------------------------------------- tcc, level


def test_transport_cc_seq() -> None:
    assert ext.parse_transport_cc_seq(b"\xff\xfe") == 0xFFFE
    assert ext.build_transport_cc_seq(0x10001) == b"\x00\x01"
    for bad in (b"", b"\x01", b"\x01\x02\x03"):
        with pytest.raises(ParseError):
            ext.parse_transport_cc_seq(bad)


def test_audio_level() -> None:
    assert ext.parse_audio_level(b"\x9e") == ext.AudioLevel(True, 30)
    assert ext.parse_audio_level(b"\x7f") == ext.AudioLevel(False, 127)
    assert ext.build_audio_level(True, 0) == b"\x80"
    assert ext.build_audio_level(False, 127) == b"\x7f"
    with pytest.raises(ValueError):
        ext.build_audio_level(False, 128)
    for bad in (b"", b"\x01\x02"):
        with pytest.raises(ParseError):
            ext.parse_audio_level(bad)


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.integers(0, 127), st.integers(0, 0xFFFF))
def test_property_fixed_size_round_trips(voice: bool, level: int, seq: int) -> None:
    assert ext.parse_audio_level(ext.build_audio_level(voice, level)) == (voice, level)
    assert ext.parse_transport_cc_seq(ext.build_transport_cc_seq(seq)) == seq


_PARSERS: list[Callable[[bytes], object]] = [
    ext.parse_sdes_item,
    ext.parse_abs_send_time,
    ext.parse_transport_cc_seq,
    ext.parse_audio_level,
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=20))
def test_property_parsers_only_raise_parse_error(data: bytes) -> None:
    for parser in _PARSERS:
        with contextlib.suppress(ParseError):
            parser(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_property_extmap_only_raises_parse_error(text: str) -> None:
    for line in (text, "a=extmap:" + text):
        try:
            e = ext.parse_extmap(line)
        except ParseError:
            continue
        assert 1 <= e.ext_id <= 255
        assert e.uri


def test_extension_map_from_fixture_sdps() -> None:
    """Every captured SDP (BUNDLE: one id space per session) yields a consistent map."""
    root = Path(__file__).resolve().parents[1] / "fixtures" / "sdp"
    for path in sorted(root.glob("*.sdp")):
        lines = path.read_text().splitlines()
        extmaps = {ext.parse_extmap(ln) for ln in lines if ln.startswith("a=extmap:")}
        emap = ext.ExtensionMap.from_sdp(lines)
        assert len(emap) == len({(e.ext_id, e.uri) for e in extmaps}), path.name
        for e in extmaps:
            assert emap.uri_for(e.ext_id) == e.uri
            assert emap.id_for(e.uri) == e.ext_id
