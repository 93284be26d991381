"""SDP model tests against real Chromium/aiortc captures, builders, and hostile input."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.sdp import (
    MAX_LINE_CHARS,
    MAX_LINES,
    MAX_MEDIA_SECTIONS,
    MAX_SDP_CHARS,
    Candidate,
    Connection,
    Direction,
    ExtMap,
    Fingerprint,
    Fmtp,
    Group,
    IceOptions,
    Line,
    MediaSection,
    Msid,
    MsidSemantic,
    Origin,
    Rid,
    Rtcp,
    RtcpFb,
    RtpMap,
    SdpAttribute,
    SessionDescription,
    Setup,
    Simulcast,
    SimulcastRid,
    Ssrc,
    SsrcGroup,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdp"
FIXTURE_NAMES = sorted(p.name for p in FIXTURES.glob("*.sdp"))


def load(name: str) -> str:
    # Bytes, not text mode: text mode would translate the CRLFs we want to check.
    return (FIXTURES / name).read_bytes().decode("utf-8")


def parsed(name: str) -> SessionDescription:
    return SessionDescription.parse(load(name))


def exercise_accessors(sd: SessionDescription) -> None:
    """Touch every typed view; on a successfully parsed description none may raise."""
    _ = (sd.origin, sd.session_name, sd.groups, sd.bundle, sd.ice_lite, sd.msid_semantic)
    _ = (sd.ice_ufrag, sd.ice_pwd, sd.ice_options, sd.fingerprints, sd.setup, sd.connection)
    _ = (sd.extmap_allow_mixed, sd.extmaps, sd.to_dict())
    for m in sd.media:
        _ = (m.media, m.mid, m.msid, m.msids, m.direction, m.rtcp_mux, m.rtcp_rsize, m.rtcp)
        _ = (m.rtpmaps, m.fmtps, m.rtcp_fbs, m.extmaps, m.ssrcs, m.ssrc_groups, m.rids)
        _ = (m.simulcast, m.candidates, m.end_of_candidates, m.sctp_port, m.max_message_size)
        _ = (m.connection, m.bundle_only, [f.params for f in m.fmtps])
        _ = (sd.ice_ufrag_for(m), sd.ice_pwd_for(m), sd.fingerprints_for(m), sd.setup_for(m))


# -- real fixtures ------------------------------------------------------------------------------


def test_fixtures_present() -> None:
    assert len(FIXTURE_NAMES) >= 6
    assert {"chromium_av_offer.sdp", "chromium_simulcast_offer.sdp", "aiortc_av_offer.sdp"} <= set(
        FIXTURE_NAMES
    )


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_round_trips_byte_identically(name: str) -> None:
    text = load(name)
    assert "\r\n" in text
    sd = SessionDescription.parse(text)
    assert sd.line_ending == "\r\n"
    assert sd.serialize() == text
    assert SessionDescription.parse(sd.serialize()) == sd
    exercise_accessors(sd)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_with_lf_endings_round_trips(name: str) -> None:
    text = load(name).replace("\r\n", "\n")
    sd = SessionDescription.parse(text)
    assert sd.line_ending == "\n"
    assert sd.serialize() == text
    assert sd.lines == parsed(name).lines


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_common_webrtc_shape(name: str) -> None:
    sd = parsed(name)
    assert sd.origin.nettype == "IN"
    assert sd.bundle == tuple(m.mid for m in sd.media)
    for m in sd.media:
        fps = sd.fingerprints_for(m)
        assert "sha-256" in [f.algorithm for f in fps]
        for f in fps:
            assert len(f.digest) == {"sha-256": 32, "sha-384": 48, "sha-512": 64}[f.algorithm]
        ufrag, pwd = sd.ice_ufrag_for(m), sd.ice_pwd_for(m)
        assert ufrag is not None and len(ufrag) >= 4
        assert pwd is not None and len(pwd) >= 22
        expected_setup = Setup.ACTPASS if "offer" in name else Setup.ACTIVE
        assert sd.setup_for(m) is expected_setup
        if m.kind != "application":
            assert m.rtcp_mux
            pts = [int(f) for f in m.formats]
            assert [r.payload_type for r in m.rtpmaps] == pts  # one rtpmap per format, in order
            rtx_pts = [r.payload_type for r in m.rtpmaps if r.encoding_name == "rtx"]
            for pt in rtx_pts:
                fmtp = m.fmtp(pt)
                assert fmtp is not None and int(fmtp.params["apt"]) in pts


def test_chromium_av_offer_typed_values() -> None:
    sd = parsed("chromium_av_offer.sdp")
    assert sd.extmap_allow_mixed
    assert not sd.ice_lite
    semantic = sd.msid_semantic
    assert semantic is not None and semantic.semantic == "WMS"
    audio, video = sd.media
    assert (audio.kind, audio.proto, audio.mid) == ("audio", "UDP/TLS/RTP/SAVPF", "0")
    assert (video.kind, video.mid, video.direction) == ("video", "1", Direction.SENDRECV)
    assert audio.connection == Connection("IN", "IP4", "127.0.0.1")
    assert audio.rtcp == Rtcp(9, Connection("IN", "IP4", "0.0.0.0"))
    assert audio.rtcp_rsize and audio.ice_options == ("trickle",)
    assert audio.rtpmap(111) == RtpMap(111, "opus", 48000, 2)
    opus_fmtp = audio.fmtp(111)
    assert opus_fmtp is not None and opus_fmtp.params["useinbandfec"] == "1"
    # Stream id of a=msid matches the session-level msid-semantic and the a=ssrc msid.
    msid = video.msid
    assert msid is not None and msid.track_id and msid.stream_id in semantic.identifiers
    assert Msid.parse(next(s.value for s in video.ssrcs if s.attribute == "msid") or "") == msid
    vp8 = next(r for r in video.rtpmaps if r.encoding_name == "VP8")
    fbs = {(fb.type, fb.subtype) for fb in video.rtcp_fb(vp8.payload_type)}
    assert {("nack", None), ("nack", "pli"), ("ccm", "fir"), ("transport-cc", None)} <= fbs
    uris = {e.uri for e in video.extmaps}
    assert "urn:ietf:params:rtp-hdrext:sdes:mid" in uris
    (fid,) = [g for g in video.ssrc_groups if g.semantics == "FID"]
    assert len(fid.ssrcs) == 2 and {s.ssrc for s in video.ssrcs} == set(fid.ssrcs)
    loop = [c for c in audio.candidates if c.address == "127.0.0.1"]
    assert {c.transport for c in loop} == {"udp", "tcp"}
    for c in loop:
        assert c.type == "host" and c.component == 1
        assert c.extension("generation") == "0"
        assert c.tcptype == ("active" if c.transport == "tcp" else None)
        assert c.port == audio.port or c.transport == "tcp"


def test_chromium_simulcast_offer() -> None:
    sd = parsed("chromium_simulcast_offer.sdp")
    audio, video = sd.media
    assert audio.kind == "audio" and video.kind == "video"
    assert video.direction is Direction.SENDONLY
    assert [(r.rid, r.direction) for r in video.rids] == [
        ("q", "send"),
        ("h", "send"),
        ("f", "send"),
    ]
    assert video.simulcast == Simulcast.from_rids(send=["q", "h", "f"])
    assert video.attribute("simulcast") == "send q;h;f"
    assert "a=simulcast:send q;h;f\r\n" in load("chromium_simulcast_offer.sdp")
    uris = {e.uri for e in video.extmaps}
    assert "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id" in uris
    assert "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id" in uris
    assert video.ssrcs == [] and video.ssrc_groups == []  # rid-based, no a=ssrc in offers


def test_chromium_answer_to_simulcast_is_recvonly_without_rids() -> None:
    sd = parsed("chromium_answer_to_simulcast.sdp")
    assert [m.direction for m in sd.media] == [Direction.RECVONLY, Direction.RECVONLY]
    assert all(m.rids == [] and m.simulcast is None for m in sd.media)
    # Bundled: only the first section carries candidates; the second is port 9 / 0.0.0.0.
    assert sd.media[0].candidates and not sd.media[1].candidates
    assert sd.media[1].port == 9 and sd.media[1].connection == Connection(address="0.0.0.0")


def test_chromium_datachannel_offer() -> None:
    sd = parsed("chromium_datachannel_offer.sdp")
    (app,) = sd.media
    assert (app.kind, app.proto, app.formats) == (
        "application",
        "UDP/DTLS/SCTP",
        ("webrtc-datachannel",),
    )
    assert app.sctp_port == 5000
    assert app.max_message_size == 262144
    assert app.rtpmaps == [] and app.direction is Direction.SENDRECV
    with pytest.raises(ParseError):
        _ = app.media.payload_types


def test_aiortc_offer_typed_values() -> None:
    sd = parsed("aiortc_av_offer.sdp")
    semantic = sd.msid_semantic
    assert semantic == MsidSemantic("WMS", ("*",))
    audio, video = sd.media
    for m in (audio, video):
        assert m.end_of_candidates
        (cand,) = m.candidates
        assert (cand.address, cand.port, cand.transport, cand.type) == (
            "127.0.0.1",
            m.port,
            "udp",
            "host",
        )
        assert [f.algorithm for f in m.fingerprints] == ["sha-256", "sha-384", "sha-512"]
    (fid,) = video.ssrc_groups
    assert fid.semantics == "FID" and len(fid.ssrcs) == 2
    cnames = {s.ssrc: s.value for s in video.ssrcs if s.attribute == "cname"}
    assert set(cnames) == set(fid.ssrcs) and len(set(cnames.values())) == 1
    vp8, rtx = video.rtpmaps[:2]
    assert (vp8.encoding_name, rtx.encoding_name) == ("VP8", "rtx")
    assert video.fmtp(rtx.payload_type) == Fmtp(rtx.payload_type, f"apt={vp8.payload_type}")


def test_answers_match_their_offers() -> None:
    offer, answer = parsed("aiortc_av_offer.sdp"), parsed("chromium_answer_to_aiortc.sdp")
    assert [m.mid for m in answer.media] == [m.mid for m in offer.media]
    assert [m.kind for m in answer.media] == [m.kind for m in offer.media]
    offer2, answer2 = parsed("chromium_av_offer.sdp"), parsed("aiortc_answer_to_chromium.sdp")
    assert [m.mid for m in answer2.media] == [m.mid for m in offer2.media]
    for o, a in zip(offer2.media, answer2.media, strict=True):
        assert set(a.formats) <= set(o.formats)  # an answer only narrows the codec list


# -- builders -----------------------------------------------------------------------------------


def build_answer() -> SessionDescription:
    fp = Fingerprint.from_digest("sha-256", bytes(range(32)))
    sd = SessionDescription.create(Origin("-", 4611686018427387904, 2))
    sd.add(Group("BUNDLE", ("0", "1", "2")), MsidSemantic("WMS", ("*",)))
    sd.add_attribute("ice-lite")
    sd.add_attribute("extmap-allow-mixed")
    audio = MediaSection.create(
        "audio", 9, "UDP/TLS/RTP/SAVPF", ["111"], connection=Connection("IN", "IP4", "0.0.0.0")
    )
    audio.add_attribute("ice-ufrag", "abcd").add_attribute("ice-pwd", "a" * 22)
    audio.add(IceOptions(("trickle",)), fp).add_attribute("setup", Setup.PASSIVE)
    audio.add_attribute("mid", "0").add_attribute("recvonly").add_attribute("rtcp-mux")
    audio.add(
        ExtMap(1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        RtpMap(111, "opus", 48000, 2),
        Fmtp.from_params(111, {"minptime": "10", "useinbandfec": "1"}),
        RtcpFb(111, "transport-cc"),
        Candidate("1", 1, "udp", 2130706431, "127.0.0.1", 40000, "host"),
    )
    audio.add_attribute("end-of-candidates")
    video = MediaSection.create("video", 9, "UDP/TLS/RTP/SAVPF", ["96", "97"], Connection())
    video.add_attribute("mid", "1").add_attribute("sendonly").add_attribute("rtcp-rsize")
    video.add(
        Msid("stream", "track"),
        ExtMap(3, "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", Direction.RECVONLY),
        RtpMap(96, "VP8", 90000),
        RtpMap(97, "rtx", 90000),
        Fmtp.from_params(97, {"apt": "96"}),
        RtcpFb(None, "nack"),
        RtcpFb(96, "nack", "pli"),
        SsrcGroup("FID", (1111, 2222)),
        Ssrc(1111, "cname", "sfu"),
        Ssrc(2222, "cname", "sfu"),
        Rid("lo", "recv", (96,), (("max-width", "320"),)),
        Rid("hi", "recv"),
        Simulcast((), ((SimulcastRid("lo"),), (SimulcastRid("hi", paused=True),))),
    )
    app = MediaSection.create("application", 9, "UDP/DTLS/SCTP", ["webrtc-datachannel"])
    app.add_attribute("mid", "2").add_attribute("sctp-port", "5000")
    app.add_attribute("max-message-size", "262144")
    return sd.add_media(audio, video, app)


def test_built_answer_parses_back_to_equal_values() -> None:
    sd = build_answer()
    text = sd.serialize()
    assert text.startswith("v=0\r\no=- 4611686018427387904 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")
    assert text.endswith("a=max-message-size:262144\r\n")
    back = SessionDescription.parse(text)
    assert back == sd
    assert back.serialize() == text
    assert back.bundle == ("0", "1", "2") and back.ice_lite and back.extmap_allow_mixed
    audio, video, app = back.media
    assert back.fingerprints_for(audio) == [Fingerprint.from_digest("sha-256", bytes(range(32)))]
    assert back.fingerprints_for(audio)[0].digest == bytes(range(32))
    assert audio.setup is Setup.PASSIVE and audio.direction is Direction.RECVONLY
    assert audio.ice_ufrag == "abcd" and audio.ice_pwd == "a" * 22
    assert audio.fmtp(111) == Fmtp(111, "minptime=10;useinbandfec=1")
    assert audio.candidates == [Candidate("1", 1, "udp", 2130706431, "127.0.0.1", 40000, "host")]
    assert audio.end_of_candidates and audio.rtcp_mux and not audio.rtcp_rsize
    assert video.direction is Direction.SENDONLY and video.rtcp_rsize
    assert video.extmaps[0].direction is Direction.RECVONLY
    assert [fb.payload_type for fb in video.rtcp_fb(96)] == [None, 96]
    assert video.fmtp(97) is not None and video.fmtp(97) == Fmtp(97, "apt=96")
    assert video.ssrc_groups == [SsrcGroup("FID", (1111, 2222))]
    assert video.rids[0].payload_types == (96,) and video.rids[0].params == {"max-width": "320"}
    assert video.attribute("simulcast") == "recv lo;~hi"
    assert video.simulcast is not None and video.simulcast.recv[1][0].paused
    assert (app.sctp_port, app.max_message_size, app.formats) == (
        5000,
        262144,
        ("webrtc-datachannel",),
    )


def test_mutators_keep_typed_views_in_sync() -> None:
    sd = parsed("chromium_simulcast_offer.sdp")
    video = sd.media[1]
    position = next(i for i, ln in enumerate(video.lines) if ln.value == "sendonly")
    video.set_direction(Direction.RECVONLY)
    assert video.direction is Direction.RECVONLY
    assert video.lines[position] == Line("a", "recvonly")  # replaced in place
    video.set_attribute("mid", "video0")
    assert video.mid == "video0" and sd.media_by_mid("video0") is video
    video.remove_attribute("rid").remove_attribute("simulcast")
    assert video.rids == [] and video.simulcast is None
    assert "a=rid:" not in sd.serialize()
    sd.media[0].set_direction(Direction.INACTIVE)
    assert SessionDescription.parse(sd.serialize()).media[0].direction is Direction.INACTIVE


def test_builders_reject_bad_values() -> None:
    m = MediaSection.create("audio", 9, "RTP/AVP", ["0"])
    with pytest.raises(ParseError):
        m.add_attribute("rtpmap", "300 foo/8000")
    with pytest.raises(ParseError):
        m.add_line(Line("v", "0"))  # v= is session-level only
    with pytest.raises(ParseError):
        m.add_attribute("mid", "a\r\nm=video 9 RTP/AVP 0")  # line injection
    with pytest.raises(ParseError):
        MediaSection.create("audio", 70000, "RTP/AVP", ["0"])
    assert m.serialize_lines() == ["m=audio 9 RTP/AVP 0"]


# -- typed values -------------------------------------------------------------------------------

ROUND_TRIP_VALUES: list[tuple[type[SdpAttribute], str]] = [
    (Group, "BUNDLE 0 1 data"),
    (Group, "LS"),
    (ExtMap, "3/sendrecv urn:ietf:params:rtp-hdrext:sdes:mid"),
    (ExtMap, "4096 urn:x:y some attributes"),
    (RtcpFb, "* nack"),
    (RtcpFb, "96 ccm tmmbr smaxpr=120"),
    (RtpMap, "0 PCMU/8000"),
    (Fmtp, "63 111/111"),
    (Ssrc, "123 cname:a:b"),
    (Ssrc, "4294967295 x-flag"),
    (Rid, "1 recv pt=96,97;max-width=1280;max-fps=30"),
    (Rid, "r_0 send max-br=64000;depend=a"),
    (Simulcast, "recv 1,~2;3 send ~4"),
    (
        Candidate,
        "842163049 1 udp 1677729535 198.51.100.7 3478 typ srflx raddr 10.0.0.1 rport 54 x y",
    ),
    (Candidate, "1 2 tcp 1 a.local 9 typ host tcptype passive"),
    (Rtcp, "9"),
    (Msid, "only-stream"),
    (MsidSemantic, "WMS"),
    (Fingerprint, "sha-1 0a:FF"),
]


@pytest.mark.parametrize(("cls", "value"), ROUND_TRIP_VALUES)
def test_typed_value_round_trip(cls: type[SdpAttribute], value: str) -> None:
    typed = cls.parse(value)
    again = cls.parse(typed.to_value())
    assert again == typed


def test_grammar_details() -> None:
    sim = Simulcast.parse("recv 1,~2;3 send ~4")
    assert sim.recv == ((SimulcastRid("1"), SimulcastRid("2", True)), (SimulcastRid("3"),))
    assert sim.send == ((SimulcastRid("4", True),),)
    assert sim.to_value() == "send ~4 recv 1,~2;3"
    cand = Candidate.parse("1 1 udp 5 198.51.100.7 3478 typ srflx raddr 10.0.0.1 rport 54 ufrag u")
    assert (cand.related_address, cand.related_port, cand.extension("ufrag")) == (
        "10.0.0.1",
        54,
        "u",
    )
    assert Candidate.parse_trickle("candidate:" + cand.to_value()) == cand
    assert Candidate.parse_trickle("a=candidate:" + cand.to_value()) == cand
    assert Fmtp.parse("100 a=1; b=2;flag").params == {"a": "1", "b": "2", "flag": ""}
    assert Rid.parse("x send pt=1,2").payload_types == (1, 2)
    assert RtcpFb.parse("* nack").payload_type is None
    assert Origin.parse("- 1 2 IN IP6 ::1").address == "::1"
    assert MsidSemantic.parse(" WMS a b").identifiers == ("a", "b")


BAD_VALUES: list[tuple[type[SdpAttribute], str]] = [
    (RtpMap, "128 x/90000"),
    (RtpMap, "96 VP8"),
    (RtpMap, "96 VP8/9_0000"),
    (RtpMap, "٣ VP8/90000"),  # non-ASCII digit
    (Fmtp, "96"),
    (ExtMap, "0 urn:x"),
    (ExtMap, "300 urn:x"),
    (ExtMap, "1/sideways urn:x"),
    (Ssrc, "4294967296 cname:x"),
    (Ssrc, "12"),
    (SsrcGroup, "FID"),
    (Rid, "q both"),
    (Rid, "q! send"),
    (Rid, "q send pt=x"),
    (Simulcast, "send"),
    (Simulcast, "send a send b"),
    (Simulcast, "up a"),
    (Simulcast, "send a;;b"),
    (Candidate, "1 1 udp 1 127.0.0.1 9 host"),
    (Candidate, "1 1 udp 1 127.0.0.1 9 typ host generation"),
    (Candidate, "f~ 1 udp 1 127.0.0.1 9 typ host"),
    (Candidate, "1 0 udp 1 127.0.0.1 9 typ host"),
    (Candidate, "1 1 udp 1 127.0.0.1  9 typ host"),
    (Fingerprint, "sha-256 0G:00"),
    (Fingerprint, "sha-256 000"),
    (Group, ""),
    (Msid, "a b c"),
]


@pytest.mark.parametrize(("cls", "value"), BAD_VALUES)
def test_typed_value_rejects(cls: type[SdpAttribute], value: str) -> None:
    with pytest.raises(ParseError):
        cls.parse(value)


def test_setup_parse() -> None:
    assert Setup.parse("actpass") is Setup.ACTPASS
    with pytest.raises(ParseError):
        Setup.parse("ACTPASS")


# -- malformed documents ------------------------------------------------------------------------

MINIMAL = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"


def test_minimal_description() -> None:
    sd = SessionDescription.parse(MINIMAL)
    assert sd.media == [] and sd.serialize() == MINIMAL and sd.bundle is None
    no_final = SessionDescription.parse(MINIMAL[:-2])
    assert not no_final.final_line_ending and no_final.serialize() == MINIMAL[:-2]


BAD_DOCUMENTS = [
    "",
    "\r\n",
    "v=1\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
    "o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\ns=-\r\nt=0 0\r\n",
    "v=0\r\ns=-\r\nt=0 0\r\n",
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\n",
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\ns=x\r\nt=0 0\r\n",
    "v=0\r\no=- x 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
    "v=0\r\no=- 1 1 IN IP4\r\ns=-\r\nt=0 0\r\n",
    MINIMAL + "x=unknown\r\n",
    MINIMAL + "\r\na=ice-lite\r\n",
    MINIMAL + "a =ice-lite\r\n",
    MINIMAL + "A=ice-lite\r\n",
    MINIMAL + "a=ice\rlite\r\n",
    MINIMAL + "a=ice\0lite\r\n",
    MINIMAL + "a=\r\n",
    MINIMAL + "a=:x\r\n",
    MINIMAL + "a=setup:sometimes\r\n",
    MINIMAL + "a=mid\r\n",
    MINIMAL + "a=ice-ufrag:no spaces\r\n",
    MINIMAL + "m=audio 9\r\n",
    MINIMAL + "m=audio 9 RTP/AVP 0\r\no=- 1 1 IN IP4 0.0.0.0\r\n",
    MINIMAL + "m=audio 9 RTP/AVP 0\r\nt=0 0\r\n",
    MINIMAL + "m=audio 9 RTP/AVP 0\r\nc=IN IP4\r\n",
    MINIMAL + "m=audio 9 RTP/AVP 0\r\na=sctp-port:65536\r\n",
    MINIMAL + "m=audio 9 RTP/AVP 0\r\na=max-message-size:-1\r\n",
    MINIMAL + "a=" + "x" * MAX_LINE_CHARS + "\r\n",
    MINIMAL + "a=x\r\n" * MAX_LINES,
    MINIMAL + "m=audio 9 RTP/AVP 0\r\n" * (MAX_MEDIA_SECTIONS + 1),
    MINIMAL + "s" * MAX_SDP_CHARS,
]


@pytest.mark.parametrize("text", BAD_DOCUMENTS, ids=range(len(BAD_DOCUMENTS)))
def test_malformed_documents_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        SessionDescription.parse(text)


def test_limits_are_inclusive_and_parse_error_is_value_error() -> None:
    sections = MINIMAL + "m=audio 9 RTP/AVP 0\r\n" * MAX_MEDIA_SECTIONS
    assert len(SessionDescription.parse(sections).media) == MAX_MEDIA_SECTIONS
    assert issubclass(ParseError, ValueError)


# -- fuzzing ------------------------------------------------------------------------------------

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

ATTR_NAMES = [
    "group",
    "ice-options",
    "msid-semantic",
    "fingerprint",
    "setup",
    "ice-ufrag",
    "ice-pwd",
    "mid",
    "msid",
    "rtpmap",
    "fmtp",
    "rtcp-fb",
    "extmap",
    "ssrc",
    "ssrc-group",
    "rid",
    "simulcast",
    "candidate",
    "rtcp",
    "sctp-port",
    "max-message-size",
    "sendrecv",
    "unknown-thing",
]
SDP_ALPHABET = string.ascii_letters + string.digits + " :;,/=~*.-_+\r\n\t\0é٣"


def check_parse_contract(text: str) -> None:
    """Either ParseError, or a description whose accessors work and which round-trips."""
    try:
        sd = SessionDescription.parse(text)
    except ParseError:
        return
    exercise_accessors(sd)
    again = SessionDescription.parse(sd.serialize())
    assert again == sd
    assert again.serialize() == sd.serialize()


@FUZZ
@given(st.text(alphabet=SDP_ALPHABET, max_size=400))
def test_fuzz_random_text(text: str) -> None:
    check_parse_contract(text)
    check_parse_contract(MINIMAL + text)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ATTR_NAMES),
            st.text(alphabet=string.ascii_letters + string.digits + " :;,/=~*.-_", max_size=60),
        ),
        max_size=8,
    )
)
def test_fuzz_random_attribute_lines(attrs: list[tuple[str, str]]) -> None:
    body = "".join(f"a={name}:{value}\r\n" for name, value in attrs)
    check_parse_contract(MINIMAL + body)
    check_parse_contract(MINIMAL + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n" + body)


@st.composite
def mutated_fixture(draw: st.DrawFn) -> str:
    text = load(draw(st.sampled_from(FIXTURE_NAMES)))
    lines = text.split("\r\n")
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "char", "insert", "truncate"]))
        i = draw(st.integers(0, len(lines) - 1))
        j = draw(st.integers(0, len(lines) - 1))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(j, lines[i])
        elif op == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "char" and lines[i]:
            k = draw(st.integers(0, len(lines[i]) - 1))
            c = draw(st.sampled_from(SDP_ALPHABET))
            lines[i] = lines[i][:k] + c + lines[i][k + 1 :]
        elif op == "insert":
            k = draw(st.integers(0, len(lines[i])))
            junk = draw(st.text(alphabet=SDP_ALPHABET, max_size=12))
            lines[i] = lines[i][:k] + junk + lines[i][k:]
        elif op == "truncate":
            k = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:k]
    mutated = "\r\n".join(lines)
    if draw(st.booleans()):
        mutated = mutated[: draw(st.integers(0, len(mutated)))]
    return mutated


@FUZZ
@given(mutated_fixture())
def test_fuzz_mutated_real_offers(text: str) -> None:
    check_parse_contract(text)
