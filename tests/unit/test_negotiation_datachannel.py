"""Negotiating ``m=application ... UDP/DTLS/SCTP webrtc-datachannel`` (RFC 8841) when the
caller serves data channels: accepted, bundled, answered with a=sctp-port and a=max-message-size.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.negotiation import CodecPreferences, NegotiationError, build_answer, negotiate
from sfu.packet.sdp import SessionDescription

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "sdp"
PREFS = CodecPreferences()
OUR_ICE = ("SfuU", "sfupasswordsfupassword")
OUR_FP = ("sha-256", ":".join(f"{i:02X}" for i in range(32)))
HOSTS = [("127.0.0.1", 40000)]


def _text(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode("utf-8")


def _av_plus_datachannel() -> str:
    app = _text("chromium_datachannel_offer")
    app_section = app[app.index("m=application") :].replace("a=mid:0", "a=mid:2")
    av = _text("chromium_av_offer").replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2")
    # One BUNDLE transport: the data section repeats the media sections' ICE and DTLS lines.
    transport = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:")
    theirs = [ln for ln in app_section.split("\r\n") if ln.startswith(transport)]
    ours = [next(ln for ln in av.split("\r\n") if ln.startswith(t)) for t in transport]
    for old, new in zip(theirs, ours, strict=True):
        app_section = app_section.replace(old, new)
    return av + app_section


def _answer(sd: SessionDescription) -> SessionDescription:
    neg = negotiate(sd, prefs=PREFS, data_channels=True)
    return build_answer(sd, neg, ice=OUR_ICE, fingerprint=OUR_FP, setup=neg.setup, candidates=HOSTS)


def test_datachannel_only_offer_is_accepted_with_candidates() -> None:
    sd = SessionDescription.parse(_text("chromium_datachannel_offer"))
    neg = negotiate(sd, prefs=PREFS, data_channels=True)
    assert neg.media == () and neg.rejected == ()
    assert neg.data_channel is not None
    assert (neg.data_channel.mid, neg.data_channel.remote_port) == ("0", 5000)
    assert neg.data_channel.remote_max_message_size == 262144
    assert neg.bundle_mids == ("0",)
    answer = _answer(sd)
    (app,) = answer.media
    assert (app.kind, app.port, app.proto, app.formats) == (
        "application",
        40000,
        "UDP/DTLS/SCTP",
        ("webrtc-datachannel",),
    )
    assert app.sctp_port == 5000 and app.max_message_size == 65536
    assert app.candidates and app.mid == "0" and answer.bundle == ("0",)
    # The answer must parse back as SDP (round trip through our own parser).
    assert SessionDescription.parse(answer.serialize()).media[0].sctp_port == 5000


def test_datachannel_bundled_after_media() -> None:
    sd = SessionDescription.parse(_av_plus_datachannel())
    neg = negotiate(sd, prefs=PREFS, data_channels=True)
    assert neg.bundle_mids == ("0", "1", "2") and neg.rejected == ()
    answer = _answer(sd)
    assert answer.bundle == ("0", "1", "2")
    app = answer.media[2]
    assert (app.port, app.sctp_port, app.candidates) == (9, 5000, [])


def test_defaults_when_port_and_size_absent() -> None:
    text = _text("chromium_datachannel_offer")
    text = text.replace("a=sctp-port:5000\r\n", "").replace("a=max-message-size:262144\r\n", "")
    neg = negotiate(SessionDescription.parse(text), prefs=PREFS, data_channels=True)
    assert neg.data_channel is not None
    assert (neg.data_channel.remote_port, neg.data_channel.remote_max_message_size) == (5000, 65536)


def test_legacy_sctp_proto_is_rejected_per_section() -> None:
    text = _av_plus_datachannel().replace("UDP/DTLS/SCTP webrtc-datachannel", "DTLS/SCTP 5000")
    neg = negotiate(SessionDescription.parse(text), prefs=PREFS, data_channels=True)
    assert neg.data_channel is None
    (rejected,) = neg.rejected
    assert "unsupported data channel transport" in rejected.reason


def test_second_application_section_is_rejected() -> None:
    app = _text("chromium_datachannel_offer")
    section = app[app.index("m=application") :]
    text = app.replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1") + section.replace(
        "a=mid:0", "a=mid:1"
    )
    neg = negotiate(SessionDescription.parse(text), prefs=PREFS, data_channels=True)
    assert neg.data_channel is not None and neg.data_channel.mid == "0"
    assert [r.mid for r in neg.rejected] == ["1"]


def test_sctp_port_zero_rejects_the_section_and_a_lone_one_the_offer() -> None:
    text = _text("chromium_datachannel_offer").replace("a=sctp-port:5000", "a=sctp-port:0")
    with pytest.raises(NegotiationError, match=r"m=application .*sctp-port 0"):
        negotiate(SessionDescription.parse(text), prefs=PREFS, data_channels=True)


def test_not_served_by_default() -> None:
    sd = SessionDescription.parse(_av_plus_datachannel())
    neg = negotiate(sd, prefs=PREFS)
    assert neg.data_channel is None and [r.kind for r in neg.rejected] == ["application"]
