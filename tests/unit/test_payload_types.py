"""Every payload type the answer accepted is forwarded, mapped per codec (issue 18, bug 2),
and a section the server cannot forward is rejected alone (issue 18, per-m-line rejection).

A publisher may send any format of the answer (RFC 3264 §6.1): aiortc, following its own
preference, sent H.264 on the answer's second H.264 format. Each of the publisher's payload
types goes to the subscriber's payload type of the same format (H.264: packetization mode and
profile), RTX repairs are restored with the type they repair and retransmissions use the RTX
type of the format they were sent in. Socket-free, through the room service.
"""

from __future__ import annotations

import pytest
from fixture_files import FIXTURES
from room_fixtures import CHROMIUM_IDS, answer_ssrcs, harness, recvonly_offer

from sfu._fastpath.values import REFUSED_PAYLOAD_TYPE
from sfu.core.subscription import Subscription
from sfu.negotiation import forwardable, policy
from sfu.negotiation.answer import REJECTED_ATTRIBUTE
from sfu.packet.extensions import MID_URI, build_sdes_item
from sfu.packet.rtcp_feedback import Nack
from sfu.packet.rtp import RtpPacket, build_extension_block
from sfu.packet.sdp import SessionDescription
from sfu.room.service import ROOM_CODECS

ROOM = "codecs"
ALL_VIDEO = "96 97 102 103 104 107 108 109 114 115 116 117 39 40 45 46 98 99 100 101 118 119 120"
#: Chromium's offer: 102 is H.264 42001f and 108 42e01f (both packetization-mode 1), with
#: RTX 103 and 109; 45 is AV1.
VIDEO_SSRC, VIDEO_RTX_SSRC = 3549562858, 3305877391
FMTP_102 = "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"
FMTP_108 = "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"


def _chromium(formats: str) -> str:
    text = (FIXTURES / "sdp" / "chromium_av_offer.sdp").read_text()
    assert ALL_VIDEO in text
    return text.replace(ALL_VIDEO, formats)


def _viewer_swapped() -> str:
    """A receiver whose H.264 payload types are the other way round: 102 is 42e01f."""
    text = recvonly_offer().replace(ALL_VIDEO, "102 103 108 109")
    text = text.replace(FMTP_102, "@102@").replace(FMTP_108, "@108@")
    return text.replace("@102@", FMTP_102.replace("42001f", "42e01f")).replace(
        "@108@", FMTP_108.replace("42e01f", "42001f")
    )


def _h264(ssrc: int, seq: int, ts: int, pt: int, *, idr: bool) -> bytes:
    """A single-NAL H.264 packet (RFC 6184 §5.6) with the mid element: an IDR or a P slice,
    first_mb_in_slice 0 (the start of a picture)."""
    profile, body = build_extension_block([(CHROMIUM_IDS[MID_URI], build_sdes_item("1"))])
    nal = bytes([0x65 if idr else 0x41, 0x88]) + bytes(40)
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq,
        timestamp=ts,
        ssrc=ssrc,
        extension_profile=profile,
        extension_data=body,
        payload=nal,
    ).serialize()


def _rtx(seq: int, osn: int, pt: int, original: bytes) -> bytes:
    """The RFC 4588 repair of ``original`` on the declared RTX SSRC."""
    parsed = RtpPacket.parse(original)
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq,
        timestamp=parsed.timestamp,
        ssrc=VIDEO_RTX_SSRC,
        extension_profile=parsed.extension_profile,
        extension_data=parsed.extension_data,
        payload=osn.to_bytes(2, "big") + parsed.payload,
    ).serialize()


def test_every_answered_h264_format_reaches_the_viewer_in_its_own_types(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    answer = SessionDescription.parse(h.service.offer(alice, _chromium("108 109 102 103"), 0.0))
    assert answer.media[1].formats == ("108", "109", "102", "103")  # both formats answered
    h.capture("alice", alice)
    published = [m["track"] for m in h.messages("bob", "track_published")]
    track = next(t["id"] for t in published if t["kind"] == "video")
    viewer = h.service.offer(bob, _viewer_swapped(), 0.0, subscriptions={"1": track})
    h.capture("bob", bob)
    assert str(answer_ssrcs(viewer)["1"][0])
    assert bob.peer is not None and alice.peer is not None
    sub: Subscription = bob.peer.subscriptions["1"]
    assert sub.pt_map == {108: 102, 102: 108}
    t = alice.peer.transport
    # As aiortc did: the answer's second H.264 format (42001f).
    first = _h264(VIDEO_SSRC, 10, 1000, 102, idr=True)
    alice.peer.on_rtp(t, first, 1.0)
    lost = _h264(VIDEO_SSRC, 11, 4000, 102, idr=False)
    alice.peer.on_rtp(t, _h264(VIDEO_SSRC, 12, 7000, 108, idr=False), 1.066)
    # The repair of 11 on RTX 103 (apt=102): restored with 102, sent as the viewer's 42001f.
    alice.peer.on_rtp(t, _rtx(500, 11, 103, lost), 1.07)
    sent = [RtpPacket.parse(p) for p in h.sent_rtp["bob"]]
    assert [(p.payload_type, p.payload[:1]) for p in sent] == [
        (108, b"\x65"),
        (102, b"\x41"),
        (108, b"\x41"),
    ]
    assert all(p.ssrc == sub.out_ssrc for p in sent)
    # A NACK for the packet sent as 108 is answered on 108's RTX type (109), not 102's (103).
    nack = Nack.from_seqs(0x1234, sub.out_ssrc, [sent[0].sequence_number])
    bob.peer.on_rtcp(bob.peer.transport, nack.serialize(), 1.3)
    rtx = RtpPacket.parse(h.sent_rtp["bob"][-1])
    assert rtx.ssrc == sub.rtx_ssrc and rtx.payload_type == 109
    assert int.from_bytes(rtx.payload[:2], "big") == sent[0].sequence_number


def test_a_payload_type_the_answer_refused_is_not_forwarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    h.service.offer(alice, _chromium("108 109"), 0.0)
    h.capture("alice", alice)
    assert alice.peer is not None
    alice.peer.on_rtp(alice.peer.transport, _h264(VIDEO_SSRC, 10, 1000, 102, idr=True), 1.0)
    publication = alice.peer.publications["1"]
    assert publication.payload_types == frozenset({108})
    # Refused and counted: a format the answer never allowed reaches nobody.
    assert alice.peer.counters.rtp_refused[REFUSED_PAYLOAD_TYPE] == 1
    assert publication.layers[0].last_keyframe_at is None


def test_av1_section_is_published(monkeypatch: pytest.MonkeyPatch) -> None:
    """The forwarding core reads AV1's Dependency Descriptor: an AV1-only send section is
    answered with AV1 (and its RTX) and becomes a video publication."""
    assert forwardable("AV1") and forwardable("h264") and forwardable("opus")
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    answer = SessionDescription.parse(h.service.offer(alice, _chromium("45 46"), 0.0))
    audio, video = answer.media
    assert audio.port != 0 and video.port != 0 and video.formats == ("45", "46")
    assert video.attribute(REJECTED_ATTRIBUTE) is None
    published = [m["track"]["kind"] for m in h.messages("alice", "track_published")]
    assert sorted(published) == ["audio", "video"]


def test_unforwardable_section_is_rejected_alone_with_a_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A codec the core could not forward (AV1 taken off the one list ``forwardable`` reads)
    rejects its m-line only, with the reason."""
    monkeypatch.setattr(policy, "_FORWARDABLE_CODECS", policy._FORWARDABLE_CODECS - {"av1"})
    assert not forwardable("AV1")
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    answer = SessionDescription.parse(h.service.offer(alice, _chromium("45 46"), 0.0))
    audio, video = answer.media
    assert audio.port != 0 and video.port == 0
    reason = video.attribute(REJECTED_ATTRIBUTE)
    assert reason is not None and "cannot forward 'AV1' publications" in reason
    assert alice.peer is not None and set(alice.peer.publications) == {"0"}
    published = [m["track"]["kind"] for m in h.messages("alice", "track_published")]
    assert published == ["audio"]


def test_a_send_section_answers_one_codec_the_room_forwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    answer = SessionDescription.parse(h.service.offer(alice, _chromium("45 46 102 103 96 97"), 0.0))
    assert answer.media[1].formats == ("96", "97")  # VP8, the room's first choice; no AV1
    joined = h.messages("alice", "joined")[0]
    assert joined["codecs"] == {kind: list(names) for kind, names in ROOM_CODECS.items()}
    assert joined["codecs"]["video"] == ["VP8", "H264", "VP9", "AV1"]
