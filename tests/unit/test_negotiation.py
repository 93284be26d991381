"""Offer/answer negotiation against real Chromium/aiortc offers, error cases and mutations."""

from __future__ import annotations

import asyncio
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.negotiation import (
    CodecPreferences,
    NegotiatedSession,
    NegotiationError,
    SendStream,
    build_answer,
    candidate_priority,
    negotiate,
)
from sfu.packet.errors import ParseError
from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    DEPENDENCY_DESCRIPTOR_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TOFFSET_URI,
    TRANSPORT_CC_URI,
    VIDEO_ORIENTATION_URI,
)
from sfu.packet.sdp import Direction, SessionDescription, Setup, SimulcastRid

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdp"
OFFERS = ["chromium_av_offer", "chromium_simulcast_offer", "aiortc_av_offer"]
PREFS = CodecPreferences()
OUR_ICE = ("SfuU", "sfupasswordsfupassword")
OUR_FP = ("sha-256", ":".join(f"{i:02X}" for i in range(32)))
HOSTS = [("127.0.0.1", 40000), ("::1", 40000)]


def text(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode("utf-8")


def offer(name: str) -> SessionDescription:
    return SessionDescription.parse(text(name))


def edit(sdp: str, *, drop: tuple[str, ...] = (), replace: tuple[tuple[str, str], ...] = ()) -> str:
    """Drop lines starting with any of ``drop``; then apply plain-text replacements."""
    lines = [ln for ln in sdp.split("\r\n") if not (ln and ln.startswith(drop))]
    out = "\r\n".join(lines)
    for old, new in replace:
        assert old in out, old
        out = out.replace(old, new)
    return out


def answer_for(
    sd: SessionDescription,
    neg: NegotiatedSession | None = None,
    send: dict[str, SendStream] | None = None,
) -> SessionDescription:
    neg = neg or negotiate(sd, prefs=PREFS)
    return build_answer(
        sd,
        neg,
        ice=OUR_ICE,
        fingerprint=OUR_FP,
        setup=neg.setup,
        candidates=HOSTS,
        send_streams=send or {},
    )


def fails(sdp: str, message: str, prefs: CodecPreferences = PREFS) -> None:
    with pytest.raises(NegotiationError) as info:
        negotiate(SessionDescription.parse(sdp), prefs=prefs)
    assert message in str(info.value)


# --------------------------------------------------------------------------- fixtures


def test_chromium_av_offer() -> None:
    neg = negotiate(offer("chromium_av_offer"), prefs=PREFS)
    assert neg.bundle_mids == ("0", "1") and neg.rejected == ()
    assert (neg.remote_ufrag, neg.remote_pwd) == ("/iIX", "iFj4mGSfBEzbVjrgoOD8oWL3")
    assert neg.fingerprint.algorithm == "sha-256"
    assert neg.remote_setup is Setup.ACTPASS and neg.setup is Setup.PASSIVE and neg.dtls_server
    assert neg.extmap_allow_mixed and neg.ice_trickle
    audio, video = neg.media
    assert (audio.kind, audio.mid, audio.direction) == ("audio", "0", Direction.SENDRECV)
    (opus,) = audio.codecs
    assert (opus.payload_type, opus.name, opus.clock_rate, opus.channels) == (111, "opus", 48000, 2)
    assert opus.fmtp == "minptime=10;useinbandfec=1" and opus.rtcp_feedback == ("transport-cc",)
    assert opus.rtx_payload_type is None and opus.mime_type == "audio/opus"
    assert audio.extensions == {
        1: AUDIO_LEVEL_URI,
        2: ABS_SEND_TIME_URI,
        3: TRANSPORT_CC_URI,
        4: MID_URI,
    }
    assert audio.ssrcs == (2481734127,) and audio.cname == "8rNVFHbKHhl+pwt0"
    assert audio.msid is not None and audio.msid.track_id == "5e0d815c-a53d-47ff-acd3-a13ade9dbcd5"
    # VP8, then H.264 mode 1 with the preferred constrained-baseline profiles first, VP9
    # profile 0, AV1; mode-0 H.264, VP9 profile 2, RED and ulpfec are dropped.
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [
        ("VP8", 96, 97),
        ("H264", 108, 109),
        ("H264", 102, 103),
        ("H264", 116, 117),
        ("VP9", 98, 99),
        ("AV1", 45, 46),
    ]
    assert video.payload_types == (96, 97, 108, 109, 102, 103, 116, 117, 98, 99, 45, 46)
    assert video.codecs[0].rtcp_feedback == (
        "goog-remb",
        "transport-cc",
        "ccm fir",
        "nack",
        "nack pli",
    )
    assert video.codecs[1].parameters["profile-level-id"] == "42e01f"
    assert video.codecs[0].rtx_fmtp == "apt=96"
    assert video.extensions == {
        2: ABS_SEND_TIME_URI,
        13: VIDEO_ORIENTATION_URI,
        3: TRANSPORT_CC_URI,
        4: MID_URI,
        10: RID_URI,
        11: REPAIRED_RID_URI,
    }
    assert video.extension_id(TOFFSET_URI) is None and video.extension_id(RID_URI) == 10
    assert video.fid == ((3549562858, 3305877391),)
    assert video.rtx_ssrcs == {3549562858: 3305877391} and video.has_rtx
    assert video.ssrcs == (3549562858, 3305877391)
    assert video.rids == () and video.simulcast == () and video.rid_ssrcs == {}
    assert video.rtcp_rsize


def test_chromium_simulcast_offer() -> None:
    neg = negotiate(offer("chromium_simulcast_offer"), prefs=PREFS)
    video = neg.media_by_mid("1")
    assert video is not None and video.direction is Direction.SENDONLY
    assert video.rids == ("q", "h", "f")
    assert video.simulcast == (SimulcastRid("q"), SimulcastRid("h"), SimulcastRid("f"))
    assert video.ssrcs == () and video.rid_ssrcs == {}
    assert video.extensions[12] == DEPENDENCY_DESCRIPTOR_URI
    assert video.codecs[0].name == "VP8"
    answer = answer_for(offer("chromium_simulcast_offer"), neg)
    section = answer.media_by_mid("1")
    assert section is not None and section.direction is Direction.RECVONLY
    assert section.simulcast is not None and section.simulcast.to_value() == "recv q;h;f"
    assert [(r.rid, r.direction) for r in section.rids] == [
        ("q", "recv"),
        ("h", "recv"),
        ("f", "recv"),
    ]


def test_aiortc_av_offer() -> None:
    neg = negotiate(offer("aiortc_av_offer"), prefs=PREFS)
    audio, video = neg.media
    assert [(c.name, c.payload_type) for c in audio.codecs] == [("opus", 96)]
    assert audio.extensions == {1: MID_URI, 2: AUDIO_LEVEL_URI}
    assert [(c.name, c.payload_type, c.rtx_payload_type) for c in video.codecs] == [
        ("VP8", 97, 98),
        ("H264", 101, 102),
        ("H264", 99, 100),
    ]
    assert video.codecs[0].rtcp_feedback == ("nack", "nack pli", "goog-remb")
    assert video.extensions == {1: MID_URI, 3: ABS_SEND_TIME_URI}
    assert video.fid == ((2491339966, 3930028964),)
    assert video.cname == "51a78e97-4b59-48a8-b602-f3f73f3a47b3"
    # Three fingerprints offered; sha-256 is the one to check the certificate against.
    assert neg.fingerprint.algorithm == "sha-256" and len(neg.fingerprints) == 3
    assert not neg.extmap_allow_mixed and not neg.ice_trickle


def test_datachannel_only_offer_is_refused() -> None:
    fails(text("chromium_datachannel_offer"), "m=application (mid '0'): data channels are not")


def _av_plus_datachannel() -> str:
    app = text("chromium_datachannel_offer")
    app_section = app[app.index("m=application") :].replace("a=mid:0", "a=mid:2")
    av = text("chromium_av_offer").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
    return av + app_section


def test_datachannel_section_is_rejected_with_port_zero() -> None:
    sd = SessionDescription.parse(_av_plus_datachannel())
    neg = negotiate(sd, prefs=PREFS)
    assert neg.bundle_mids == ("0", "1")
    (rejected,) = neg.rejected
    assert (rejected.index, rejected.mid, rejected.kind) == (2, "2", "application")
    assert "data channels are not supported" in rejected.reason
    answer = answer_for(sd, neg)
    assert answer.bundle == ("0", "1") and len(answer.media) == 3
    app = answer.media[2]
    assert (app.port, app.kind, app.mid, app.proto) == (0, "application", "2", "UDP/DTLS/SCTP")
    assert app.candidates == [] and app.sctp_port is None


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("name", OFFERS)
def test_answer_structure(name: str) -> None:
    sd = offer(name)
    neg = negotiate(sd, prefs=PREFS)
    answer = answer_for(sd, neg)
    text_answer = answer.serialize()
    again = SessionDescription.parse(text_answer)
    assert again.serialize() == text_answer and again == answer
    assert answer.ice_lite and answer.bundle == neg.bundle_mids
    assert answer.msid_semantic is not None and answer.msid_semantic.identifiers == ("*",)
    assert text_answer.count("a=msid-semantic: WMS *") == 1
    assert answer.extmap_allow_mixed == sd.extmap_allow_mixed
    assert [m.mid for m in answer.media] == [m.mid for m in sd.media]
    for index, (ours, theirs) in enumerate(zip(answer.media, sd.media, strict=True)):
        media = neg.media[index]
        assert ours.kind == theirs.kind
        assert [int(f) for f in ours.formats] == list(media.payload_types)
        assert {e.id: e.uri for e in ours.extmaps} == dict(media.extensions)
        assert (ours.ice_ufrag, ours.ice_pwd) == OUR_ICE
        assert [f.to_value() for f in ours.fingerprints] == [" ".join(OUR_FP)]
        assert ours.setup is Setup.PASSIVE and ours.rtcp_mux
        assert ours.rtcp_rsize == theirs.rtcp_rsize
        for codec in media.codecs:
            rtpmap = ours.rtpmap(codec.payload_type)
            assert rtpmap is not None and rtpmap.encoding_name == codec.name
            fmtp = ours.fmtp(codec.payload_type)
            assert (fmtp.parameters if fmtp else None) == codec.fmtp
            assert [
                f"{fb.type} {fb.subtype or ''}".strip() for fb in ours.rtcp_fb(codec.payload_type)
            ] == list(codec.rtcp_feedback)
    first, *rest = answer.media
    assert first.end_of_candidates and (first.port, first.connection) == (
        40000,
        first.connection,
    )
    assert first.connection is not None and first.connection.address == "127.0.0.1"
    for section in rest:
        assert section.candidates == [] and section.port == 9


def test_candidates_follow_rfc_8445() -> None:
    answer = answer_for(offer("chromium_av_offer"))
    v4, v6 = answer.media[0].candidates
    assert (v4.address, v4.port, v4.transport, v4.type, v4.component) == (
        "127.0.0.1",
        40000,
        "udp",
        "host",
        1,
    )
    assert v4.priority == (126 << 24) + (65535 << 8) + 255 == candidate_priority(65535)
    assert v6.priority == candidate_priority(65534) and v6.address == "::1"
    assert v4.foundation == str(zlib.crc32(b"host udp 127.0.0.1")) != v6.foundation
    # Stable per address: another answer uses the same foundation.
    again = answer_for(offer("aiortc_av_offer")).media[0].candidates[0]
    assert again.foundation == v4.foundation


def test_ipv6_first_candidate_sets_ip6_connection() -> None:
    sd = offer("aiortc_av_offer")
    neg = negotiate(sd, prefs=PREFS)
    answer = build_answer(
        sd, neg, ice=OUR_ICE, fingerprint=OUR_FP, setup=neg.setup, candidates=[("::1", 5)]
    )
    conn = answer.media[0].connection
    assert conn is not None and (conn.addrtype, conn.address) == ("IP6", "::1")
    with pytest.raises(ValueError):
        build_answer(
            sd, neg, ice=OUR_ICE, fingerprint=OUR_FP, setup=neg.setup, candidates=[("host", 5)]
        )


@pytest.mark.parametrize(
    ("offered", "sending", "expected"),
    [
        ("sendonly", False, Direction.RECVONLY),
        ("sendrecv", False, Direction.RECVONLY),
        ("sendrecv", True, Direction.SENDRECV),
        ("recvonly", True, Direction.SENDONLY),
        ("recvonly", False, Direction.INACTIVE),
        ("inactive", False, Direction.INACTIVE),
    ],
)
def test_answer_direction_mirrors_offer(offered: str, sending: bool, expected: Direction) -> None:
    sd = SessionDescription.parse(text("aiortc_av_offer").replace("a=sendrecv", f"a={offered}"))
    neg = negotiate(sd, prefs=PREFS)
    assert neg.media[1].direction is Direction(offered)
    stream = SendStream(1111, 2222, "sfu-cname", "stream", "track")
    answer = answer_for(sd, neg, {"1": stream} if sending else None)
    video = answer.media_by_mid("1")
    assert video is not None and video.direction is expected
    assert bool(video.ssrcs) == sending


def test_send_stream_lines() -> None:
    sd = offer("chromium_av_offer")
    streams = {
        "0": SendStream(1111, 9999, "sfu-cname", "stream", "audio-track"),
        "1": SendStream(2222, 3333, "sfu-cname", "stream", "video-track"),
    }
    answer = answer_for(sd, send=streams)
    audio, video = answer.media
    assert audio.msid is not None and audio.msid.to_value() == "stream audio-track"
    # No RTX negotiated for audio: the rtx SSRC is not announced.
    assert {s.ssrc for s in audio.ssrcs} == {1111} and audio.ssrc_groups == []
    assert [g.to_value() for g in video.ssrc_groups] == ["FID 2222 3333"]
    assert [s.to_value() for s in video.ssrcs] == [
        "2222 cname:sfu-cname",
        "2222 msid:stream video-track",
        "3333 cname:sfu-cname",
        "3333 msid:stream video-track",
    ]
    assert video.direction is Direction.SENDRECV


def test_send_stream_validation() -> None:
    with pytest.raises(ValueError):
        SendStream(2**32, None, "c", "s", "t")
    with pytest.raises(ValueError):
        SendStream(1, None, "bad cname", "s", "t")
    sd = offer("chromium_simulcast_offer")  # video is sendonly: we cannot send on it
    with pytest.raises(ValueError, match="does not receive"):
        answer_for(sd, send={"1": SendStream(1, None, "c", "s", "t")})
    with pytest.raises(ValueError, match="does not receive"):
        answer_for(sd, send={"9": SendStream(1, None, "c", "s", "t")})


@pytest.mark.parametrize(
    ("role", "actpass_role", "ours"),
    [
        ("actpass", Setup.PASSIVE, Setup.PASSIVE),
        ("actpass", Setup.ACTIVE, Setup.ACTIVE),
        ("active", Setup.ACTIVE, Setup.PASSIVE),
        ("passive", Setup.PASSIVE, Setup.ACTIVE),
    ],
)
def test_dtls_roles(role: str, actpass_role: Setup, ours: Setup) -> None:
    sd = SessionDescription.parse(text("aiortc_av_offer").replace("setup:actpass", f"setup:{role}"))
    neg = negotiate(sd, prefs=PREFS, actpass_role=actpass_role)
    assert neg.remote_setup is Setup(role) and neg.setup is ours
    assert all(m.setup is ours for m in answer_for(sd, neg).media)


def test_missing_setup_means_active_offerer() -> None:
    sd = SessionDescription.parse(edit(text("aiortc_av_offer"), drop=("a=setup",)))
    neg = negotiate(sd, prefs=PREFS)
    assert neg.remote_setup is Setup.ACTIVE and neg.setup is Setup.PASSIVE


def test_build_answer_rejects_conflicting_setup() -> None:
    sd = SessionDescription.parse(text("aiortc_av_offer").replace("setup:actpass", "setup:active"))
    neg = negotiate(sd, prefs=PREFS)
    for bad in (Setup.ACTIVE, Setup.ACTPASS):
        with pytest.raises(ValueError, match="setup"):
            build_answer(sd, neg, ice=OUR_ICE, fingerprint=OUR_FP, setup=bad, candidates=HOSTS)


# --------------------------------------------------------------------------- simulcast details


def test_paused_simulcast_and_sim_group() -> None:
    sdp = edit(
        text("chromium_simulcast_offer"),
        replace=(
            ("a=simulcast:send q;h;f", "a=simulcast:send q;~h;f"),
            ("a=rid:f send", "a=rid:f send\r\na=ssrc-group:SIM 11 12 13"),
        ),
    )
    sd = SessionDescription.parse(sdp)
    neg = negotiate(sd, prefs=PREFS)
    video = neg.media[1]
    assert video.simulcast == (SimulcastRid("q"), SimulcastRid("h", True), SimulcastRid("f"))
    assert video.rid_ssrcs == {"q": 11, "h": 12, "f": 13}
    section = answer_for(sd, neg).media[1]
    assert section.simulcast is not None and section.simulcast.to_value() == "recv q;~h;f"


def test_rids_restricted_to_unaccepted_formats_are_dropped() -> None:
    sdp = edit(
        text("chromium_simulcast_offer"),
        replace=(
            ("a=rid:q send", "a=rid:q send pt=120"),  # ulpfec only: unusable
            ("a=rid:h send", "a=rid:h send pt=96,120;max-width=640"),
            ("a=simulcast:send q;h;f", "a=simulcast:send q,h;f;zz"),
        ),
    )
    sd = SessionDescription.parse(sdp)
    neg = negotiate(sd, prefs=PREFS)
    video = neg.media[1]
    assert video.rids == ("h", "f")
    assert video.simulcast == (SimulcastRid("h"), SimulcastRid("f"))
    section = answer_for(sd, neg).media[1]
    assert [r.to_value() for r in section.rids] == ["h recv pt=96;max-width=640", "f recv"]


def test_recvonly_offer_ignores_send_simulcast() -> None:
    sd = SessionDescription.parse(
        text("chromium_simulcast_offer").replace("a=sendonly", "a=recvonly")
    )
    neg = negotiate(sd, prefs=PREFS)
    assert neg.media[1].rids == () and neg.media[1].simulcast == ()
    assert answer_for(sd, neg).media[1].simulcast is None


# --------------------------------------------------------------------------- preferences


def test_preferences_limit_codecs_feedback_and_extensions() -> None:
    prefs = CodecPreferences(
        video_codecs=("h264",),
        h264_profiles=("42001f",),
        rtx=False,
        rtcp_feedback=frozenset({"nack pli"}),
        header_extensions=frozenset({MID_URI}),
    )
    neg = negotiate(offer("chromium_av_offer"), prefs=prefs)
    video = neg.media[1]
    assert [c.payload_type for c in video.codecs] == [102, 108, 116]
    assert all(
        c.rtx_payload_type is None and c.rtcp_feedback == ("nack pli",) for c in video.codecs
    )
    assert video.extensions == {4: MID_URI} and not video.has_rtx
    with pytest.raises(ValueError, match="unsupported codec"):
        CodecPreferences(video_codecs=("H265",))


def test_extmap_handling() -> None:
    sdp = text("aiortc_av_offer").replace(
        "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        f"a=extmap:3/sendonly {ABS_SEND_TIME_URI}\r\na=extmap:4096 {TRANSPORT_CC_URI}",
    )
    sd = SessionDescription.parse(sdp)
    neg = negotiate(sd, prefs=PREFS)
    assert neg.media[1].extensions == {1: MID_URI, 3: ABS_SEND_TIME_URI}
    video = answer_for(sd, neg).media[1]
    assert [e.to_value() for e in video.extmaps] == [
        f"1 {MID_URI}",
        f"3/recvonly {ABS_SEND_TIME_URI}",
    ]


def test_port_zero_and_bundle_only_sections() -> None:
    base = text("aiortc_av_offer")
    rejected = SessionDescription.parse(base.replace("m=audio 51169", "m=audio 0"))
    neg = negotiate(rejected, prefs=PREFS)
    assert neg.bundle_mids == ("1",) and "port 0" in neg.rejected[0].reason
    answer = answer_for(rejected, neg)
    assert answer.media[0].port == 0 and answer.bundle == ("1",)
    assert answer.media[1].candidates  # the first accepted section carries candidates
    bundle_only = SessionDescription.parse(
        base.replace("m=video 39709", "m=video 0").replace("a=mid:1", "a=mid:1\r\na=bundle-only")
    )
    assert negotiate(bundle_only, prefs=PREFS).bundle_mids == ("0", "1")


def test_unbundled_and_unknown_sections_are_rejected() -> None:
    sdp = text("aiortc_av_offer").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0")
    neg = negotiate(SessionDescription.parse(sdp), prefs=PREFS)
    assert neg.bundle_mids == ("0",) and "not in the BUNDLE group" in neg.rejected[0].reason
    plain = text("aiortc_av_offer").replace("m=video 39709 UDP/TLS/RTP/SAVPF", "m=video 9 RTP/AVP")
    neg = negotiate(SessionDescription.parse(plain), prefs=PREFS)
    assert "unsupported transport protocol" in neg.rejected[0].reason


# --------------------------------------------------------------------------- errors


def test_error_no_fingerprint() -> None:
    fails(edit(text("chromium_av_offer"), drop=("a=fingerprint",)), "offer has no a=fingerprint")


def test_error_fingerprint_hash_and_length() -> None:
    base = text("aiortc_av_offer")
    only_md5 = edit(base, drop=("a=fingerprint:sha-384", "a=fingerprint:sha-512"))
    only_md5 = only_md5.replace("fingerprint:sha-256", "fingerprint:md5")
    fails(only_md5, "no a=fingerprint with a supported hash function")
    fails(base.replace("fingerprint:sha-256 A4:E3:", "fingerprint:sha-256 "), "wrong length")


def test_error_no_ice_credentials() -> None:
    fails(edit(text("chromium_av_offer"), drop=("a=ice-ufrag",)), "no a=ice-ufrag")
    fails(edit(text("chromium_av_offer"), drop=("a=ice-pwd",)), "no a=ice-pwd")
    fails(text("aiortc_av_offer").replace("ice-ufrag:MZjz", "ice-ufrag:MZj"), "4-256")
    fails(text("aiortc_av_offer").replace("ice-pwd:LOdw", "ice-pwd:Lw"), "22-256")
    mixed = text("aiortc_av_offer").replace("a=ice-ufrag:MZjz", "a=ice-ufrag:OTHER", 1)
    fails(mixed, "different ICE credentials")


def test_session_level_credentials_are_used() -> None:
    base = edit(text("aiortc_av_offer"), drop=("a=ice-ufrag", "a=ice-pwd"))
    sdp = base.replace("t=0 0", "t=0 0\r\na=ice-ufrag:MZjz\r\na=ice-pwd:LOdwEE6rXKEPI498sY7Zwz")
    neg = negotiate(SessionDescription.parse(sdp), prefs=PREFS)
    assert (neg.remote_ufrag, neg.remote_pwd) == ("MZjz", "LOdwEE6rXKEPI498sY7Zwz")


def test_error_no_bundle_or_rtcp_mux() -> None:
    fails(edit(text("chromium_av_offer"), drop=("a=group:BUNDLE",)), "not BUNDLEd with rtcp-mux")
    no_mux = edit(text("chromium_av_offer"), drop=("a=rtcp-mux",))
    fails(no_mux, "m=audio (mid '0'): offer is not BUNDLEd with rtcp-mux")


def test_error_no_supported_codec_anywhere() -> None:
    prefs = CodecPreferences(audio_codecs=(), video_codecs=())
    fails(text("chromium_av_offer"), "m=video (mid '1'): no supported codec", prefs)
    only_mode0 = edit(text("aiortc_av_offer"), drop=("a=rtpmap:96 opus", "a=rtpmap:97 VP8"))
    only_mode0 = only_mode0.replace("packetization-mode=1", "packetization-mode=0")
    fails(only_mode0, "offer has no acceptable media section: m=audio (mid '0'): no supported")


def test_error_setup_combinations() -> None:
    base = text("aiortc_av_offer")
    mixed = base.replace("a=setup:actpass", "a=setup:active", 1).replace(
        "a=setup:actpass", "a=setup:passive"
    )
    fails(mixed, "offer uses setup:active and setup:passive in different sections")
    fails(base.replace("a=setup:actpass", "a=setup:holdconn"), "setup:holdconn")


def test_error_structure() -> None:
    base = text("aiortc_av_offer")
    fails(base.replace("a=mid:1", "a=mid:0"), "mid '0' is used by two m= sections")
    fails(base.replace("BUNDLE 0 1", "BUNDLE 0 1 7"), "BUNDLE names unknown mid '7'")
    fails(base.replace("BUNDLE 0 1", "BUNDLE 0 1 1"), "names a mid twice")
    fails(edit(base, drop=("a=mid:1",)), "m=video (index 1) has no a=mid")
    fails(base.replace("t=0 0", "t=0 0\r\na=ice-lite"), "ICE lite agent")
    fails(base.replace("ssrc:3509896204", "ssrc:2491339966"), "SSRC 2491339966 appears in mid")
    fails(
        base.replace("a=extmap:3 http://www.webrtc", "a=extmap:2 http://www.webrtc"),
        "extmap id 2 maps to different extensions",
    )
    fails(
        base.replace("a=extmap:3 http://www.webrtc", "a=extmap:1 http://www.webrtc"),
        "extmap id 1 is used twice",
    )
    fails(base.replace("SAVPF 97 98", "SAVPF 97 97 98"), "payload type 97 listed twice")
    fails(base.replace("SAVPF 97 98", "SAVPF x97 98"), "payload type 'x97' is not a number")
    fails(
        base.replace("a=rtpmap:98 rtx", "a=rtpmap:97 H264/90000\r\na=rtpmap:98 rtx"), "two rtpmaps"
    )
    fails(base.replace("ssrc-group:FID 2491339966 3930028964", "ssrc-group:FID 1"), "FID needs two")


def test_error_message_clips_identifiers() -> None:
    long_mid = "m" * 200
    sdp = text("aiortc_av_offer").replace("a=mid:1", f"a=mid:{long_mid}")
    with pytest.raises(NegotiationError) as info:
        negotiate(SessionDescription.parse(sdp), prefs=PREFS)
    assert long_mid not in str(info.value) and len(str(info.value)) < 120


# --------------------------------------------------------------------------- fuzzing

_FIXTURE_LINES = {
    name: text(name).split("\r\n") for name in [*OFFERS, "chromium_datachannel_offer"]
}


@st.composite
def mutated_offers(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(sorted(_FIXTURE_LINES)))
    lines = list(_FIXTURE_LINES[name])
    for _ in range(draw(st.integers(1, 6))):
        index = draw(st.integers(0, len(lines) - 2))
        op = draw(st.sampled_from(["drop", "dup", "move"]))
        if op == "drop":
            del lines[index]
        elif op == "dup":
            lines.insert(draw(st.integers(0, len(lines) - 1)), lines[index])
        else:
            lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(index))
    return "\r\n".join(lines)


@settings(max_examples=200, deadline=None)
@given(mutated_offers())
def test_mutated_offers_fail_cleanly_or_answer(sdp: str) -> None:
    try:
        sd = SessionDescription.parse(sdp)
    except ParseError:
        return
    try:
        neg = negotiate(sd, prefs=PREFS)
    except NegotiationError as exc:
        assert str(exc)
        return
    answer = answer_for(sd, neg)
    reparsed = SessionDescription.parse(answer.serialize())
    assert reparsed.serialize() == answer.serialize()
    assert reparsed.bundle == neg.bundle_mids and reparsed.ice_lite
    assert [m.mid for m in reparsed.media] == [m.mid for m in sd.media]
    # The answer re-negotiates cleanly when read back as an offer would be (same codecs).
    for ours, media in zip(
        (reparsed.media_by_mid(m.mid) for m in neg.media), neg.media, strict=True
    ):
        assert ours is not None and [int(f) for f in ours.formats] == list(media.payload_types)


# --------------------------------------------------------------------------- aiortc


def test_aiortc_accepts_the_answer_to_its_own_offer() -> None:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

    async def exchange() -> tuple[str, list[str | None]]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTrack(AudioStreamTrack())
            pc.addTrack(VideoStreamTrack())
            pc.createDataChannel("chat")
            await pc.setLocalDescription(await pc.createOffer())
            sd = SessionDescription.parse(pc.localDescription.sdp)
            neg = negotiate(sd, prefs=PREFS)
            assert [r.kind for r in neg.rejected] == ["application"]
            stream = SendStream(1234, 5678, "sfu", "sfu-stream", "sfu-video")
            answer = answer_for(sd, neg, {neg.media[1].mid: stream})
            await pc.setRemoteDescription(RTCSessionDescription(answer.serialize(), "answer"))
            return pc.signalingState, [t.currentDirection for t in pc.getTransceivers()]
        finally:
            await pc.close()

    try:
        state, directions = asyncio.run(exchange())
    finally:
        aioice.ice.get_host_addresses = original
    assert state == "stable"
    # Audio: we only receive (aiortc sends); video: both ways.
    assert directions == ["sendonly", "sendrecv"]


def test_duplicate_identical_lines_are_tolerated() -> None:
    line = f"a=extmap:1 {MID_URI}"
    sdp = text("aiortc_av_offer").replace(line, f"{line}\r\n{line}")
    sdp = sdp.replace("a=rtpmap:97 VP8/90000", "a=rtpmap:97 VP8/90000\r\na=rtpmap:97 VP8/90000")
    neg = negotiate(SessionDescription.parse(sdp), prefs=PREFS)
    assert neg.media[0].extensions == {1: MID_URI, 2: AUDIO_LEVEL_URI}
    assert neg.media[1].codecs[0].payload_type == 97


def test_more_malformed_section_errors() -> None:
    base = text("aiortc_av_offer")
    fails(base.replace("a=fmtp:98 apt=97", "a=fmtp:98 apt=97\r\na=fmtp:98 apt=99"), "two fmtps")
    fails(
        base.replace(
            "a=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            f"a=extmap:3 {MID_URI}",
        ),
        "is mapped twice",
    )
    fails(base.replace("ssrc-group:FID 2491339966 3930028964", "ssrc-group:SIM 5 5"), "SIM repeats")
    overlap = "a=ssrc-group:FID 2491339966 3930028964\r\na=ssrc-group:FID 3930028964 7"
    fails(base.replace("a=ssrc-group:FID 2491339966 3930028964", overlap), "FID pairs overlap")
    bad_msid = "a=ssrc:3509896204 msid:a b c\r\na=ssrc:3509896204 cname"
    fails(base.replace("a=ssrc:3509896204 cname", bad_msid), "malformed a=ssrc msid")
    with pytest.raises(ValueError, match="actpass_role"):
        negotiate(offer("aiortc_av_offer"), prefs=PREFS, actpass_role=Setup.HOLDCONN)


def test_unknown_kind_rejected_and_candidates_deduplicated() -> None:
    sdp = text("aiortc_av_offer").replace("m=video 39709", "m=text 39709")
    sd = SessionDescription.parse(sdp)
    neg = negotiate(sd, prefs=PREFS)
    assert "unsupported media kind" in neg.rejected[0].reason
    answer = build_answer(
        sd,
        neg,
        ice=OUR_ICE,
        fingerprint=OUR_FP,
        setup=neg.setup,
        candidates=[("127.0.0.1", 5), ("127.0.0.1", 5)],
    )
    assert len(answer.media[0].candidates) == 1 and answer.media[1].port == 0
    with pytest.raises(ValueError, match="port"):
        build_answer(
            sd, neg, ice=OUR_ICE, fingerprint=OUR_FP, setup=neg.setup, candidates=[("::1", 0)]
        )
