"""The room service and router, socket-free: join flow, offers, forwarding, RTCP, cleanup."""

from __future__ import annotations

import pytest
from room_fixtures import (
    CHROMIUM_IDS,
    OPUS_PT,
    Harness,
    answer_ssrcs,
    harness,
    opus_packet,
    recvonly_offer,
    simulcast_offer,
    vp8_packet,
)

from sfu.core.subscription import Subscription
from sfu.packet.extensions import MID_URI, RID_URI, TRANSPORT_CC_URI, parse_transport_cc_seq
from sfu.packet.rtcp import parse_compound
from sfu.packet.rtcp_feedback import Nack, Pli
from sfu.packet.rtp import RtpPacket
from sfu.room.identity import Grant
from sfu.room.room import Participant, ParticipantState
from sfu.room.service import RoomError
from sfu.transport.transport import TransportState

ROOM = "standup"
SSRC_Q, SSRC_H, SSRC_F = 1111, 2222, 3333
AUDIO_SSRC = 4444


def _meeting(h: Harness) -> tuple[str, str, str]:
    """Alice publishes audio + 3-layer simulcast; Bob subscribes to both. Returns the
    video track id and the out SSRCs (video, audio) Bob's answer declares."""
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    h.capture("alice", alice)
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in h.messages("bob", "track_published")}
    answer = h.service.offer(
        bob, recvonly_offer(), 0.0, subscriptions={"0": tracks["audio"], "1": tracks["video"]}
    )
    h.capture("bob", bob)
    ssrcs = answer_ssrcs(answer)
    return tracks["video"], str(ssrcs["1"][0]), str(ssrcs["0"][0])


def _video_subscription(h: Harness) -> tuple[Participant, Participant, Subscription]:
    """The meeting of :func:`_meeting`: Alice, Bob and Bob's subscription to Alice's video."""
    _meeting(h)
    room = h.service.rooms[ROOM]
    alice, bob = room.by_identity("alice"), room.by_identity("bob")
    assert alice and bob and alice.peer and bob.peer
    sub = next(s for s in bob.peer.subscriptions.values() if s.selector)
    assert sub.selector is not None
    return alice, bob, sub


def test_join_announces_participants_to_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    joined = h.messages("alice", "joined")[0]
    assert joined["participant"]["id"] == alice.id and joined["participants"] == []
    assert joined["grants"] == ["publish", "subscribe"]
    bob = h.join(ROOM, "bob")
    assert h.messages("alice", "participant_joined")[0]["participant"]["id"] == bob.id
    assert [p["id"] for p in h.messages("bob", "joined")[0]["participants"]] == [alice.id]
    h.service.leave(bob, now=1.0)
    assert h.messages("alice", "participant_left") == [
        {"type": "participant_left", "participant": bob.id}
    ]


def test_participant_can_be_held_before_admission(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch, admission=lambda room, claims: claims.identity != "guest")
    h.join(ROOM, "host")
    guest = h.join(ROOM, "guest")
    assert guest.state is ParticipantState.WAITING
    assert h.messages("guest", "waiting") and not h.messages("guest", "joined")
    assert not h.messages("host", "participant_joined")  # nobody sees a held participant
    with pytest.raises(RoomError) as err:
        h.service.offer(guest, simulcast_offer(), 0.0)
    assert err.value.code == "not_joined"
    assert h.service.admit(guest.room, guest.id)
    assert guest.state is ParticipantState.JOINED
    assert h.messages("guest", "joined") and h.messages("host", "participant_joined")


def test_same_identity_replaces_the_earlier_session(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    first = h.join(ROOM, "alice")
    closed: list[tuple[int, str]] = []
    first.on_close = lambda code, reason: closed.append((code, reason))
    second = h.join(ROOM, "alice")
    assert closed == [(4009, "joined from elsewhere")]
    assert list(second.room.participants) == [second.id]


def test_publish_answers_simulcast_and_announces_tracks(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    answer = h.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    assert "a=simulcast:recv q;h;f" in answer
    published = [m["track"] for m in h.messages("bob", "track_published")]
    assert {t["kind"] for t in published} == {"audio", "video"}
    video = next(t for t in published if t["kind"] == "video")
    assert video["layers"] == ["q", "h", "f"] and video["name"] == "camera"
    assert video["participant"] == alice.id
    # The publisher hears about its own tracks too (that is how it learns their ids).
    assert len(h.messages("alice", "track_published")) == 2
    assert bob.peer is None  # nothing was created for bob, who has not offered


def test_refused_offers_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    viewer = h.join(ROOM, "viewer", Grant.SUBSCRIBE)
    cases = [
        (alice, "v=0\r\nthis is not sdp\r\n", {}, "bad_offer"),
        (alice, simulcast_offer().replace("a=fingerprint:", "a=x-fingerprint:"), {}, "bad_offer"),
        (viewer, simulcast_offer(), {}, "forbidden"),
        (alice, recvonly_offer(), {"1": "TR_doesnotexist"}, "unknown_track"),
        (alice, recvonly_offer(), {"7": "TR_x"}, "bad_message"),
    ]
    for who, sdp, subs, code in cases:
        with pytest.raises(RoomError) as err:
            h.service.offer(who, sdp, 0.0, subscriptions=subs)
        assert err.value.code == code, err.value.message
        assert who.peer is None
    assert h.service.port.transport_count == 0
    assert not h.service.rooms[ROOM].publications


def test_subscriber_gets_its_own_ssrc_payload_type_and_extension_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    _video, out_video, _out_audio = _meeting(h)
    bob = h.service.rooms[ROOM].by_identity("bob")
    alice = h.service.rooms[ROOM].by_identity("alice")
    assert bob is not None and alice is not None and alice.peer is not None
    sub = next(iter(s for s in bob.peer.subscriptions.values() if s.selector)) if bob.peer else None
    assert sub is not None
    sub.set_preferences(0, None, False)  # lowest layer only
    sub.selector.set_target(0, None)  # type: ignore[union-attr]
    transport = alice.peer.transport
    # Layer q starts with a keyframe; h is ignored for this subscriber.
    alice.peer.on_rtp(transport, vp8_packet(SSRC_Q, 100, 9000, keyframe=True, rid="q", twcc=7), 1.0)
    alice.peer.on_rtp(transport, vp8_packet(SSRC_H, 500, 5000, keyframe=True, rid="h"), 1.0)
    alice.peer.on_rtp(
        transport, vp8_packet(SSRC_Q, 101, 9000, keyframe=False, start=False, rid="q"), 1.0
    )
    out = [RtpPacket.parse(p) for p in h.sent_rtp["bob"]]
    assert len(out) == 2
    assert {p.ssrc for p in out} == {int(out_video)}
    assert out[1].sequence_number == (out[0].sequence_number + 1) & 0xFFFF
    assert all(p.payload_type == 96 for p in out)
    ids = dict(out[0].extensions())
    # The publisher's mid/rid must not reach the subscriber under any id it uses; its
    # transport-cc element carries bob's own transport-wide sequence (the first: 0) instead.
    bob_ids = {CHROMIUM_IDS[MID_URI], CHROMIUM_IDS[RID_URI]}
    assert not bob_ids & set(ids)
    assert ids[CHROMIUM_IDS[TRANSPORT_CC_URI]] == b"\x00\x00"
    assert bob.peer is not None and bob.peer.send_history is not None
    assert bob.peer.send_history.packets == 1  # the second packet carried no transport-cc
    # The uplink's transport-wide sequence number was recorded for congestion feedback.
    alice.peer.poll(2.0, 1.7e9)
    feedback = [p for p in h.sent_rtcp["alice"] if p[1] == 205 and p[0] & 0x1F == 15]
    assert feedback, "transport-cc feedback toward the publisher"
    assert parse_transport_cc_seq(b"\x00\x07") == 7


def test_layer_switch_waits_for_a_keyframe_and_keeps_sequence_continuous(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, _bob, sub = _video_subscription(h)
    sub.selector.set_target(0, None)
    t = alice.peer.transport
    alice.peer.on_rtp(t, vp8_packet(SSRC_Q, 10, 1000, keyframe=True, rid="q", picture_id=5), 1.0)
    alice.peer.on_rtp(t, vp8_packet(SSRC_F, 70, 7000, keyframe=False, rid="f", picture_id=90), 1.0)
    sub.selector.set_target(2, None)
    # A delta frame of f cannot start f; q continues meanwhile.
    alice.peer.on_rtp(
        t, vp8_packet(SSRC_F, 71, 10000, keyframe=False, rid="f", picture_id=91), 1.03
    )
    alice.peer.on_rtp(t, vp8_packet(SSRC_Q, 11, 3700, keyframe=False, rid="q", picture_id=6), 1.03)
    # The pending switch asks Alice for a keyframe on f (once per 500 ms).
    h.service.poll(1.04, 1.7e9)
    h.service.poll(1.05, 1.7e9)
    plis = [x for p in h.sent_rtcp["alice"] for x in parse_compound(p) if isinstance(x, Pli)]
    assert [p.media_ssrc for p in plis].count(SSRC_F) == 1
    alice.peer.on_rtp(t, vp8_packet(SSRC_F, 72, 13000, keyframe=True, rid="f", picture_id=92), 1.07)
    alice.peer.on_rtp(t, vp8_packet(SSRC_Q, 12, 6400, keyframe=False, rid="q", picture_id=7), 1.07)
    out = [RtpPacket.parse(p) for p in h.sent_rtp["bob"] if RtpPacket.parse(p).payload_type == 96]
    seqs = [p.sequence_number for p in out]
    assert seqs == [seqs[0] + i for i in range(3)]  # q, q, then f: no gap, no duplicate
    assert out[2].timestamp > out[1].timestamp
    # VP8 picture ids continue across the switch (RFC 7741 §4.2).
    pids = [(p.payload[2] & 0x7F) << 8 | p.payload[3] for p in out]
    assert pids == [pids[0], pids[0] + 1, pids[0] + 2]


def test_subscriber_nack_is_answered_with_rtx_from_the_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    assert sub.rtx_ssrc is not None
    sub.selector.set_target(0, None)
    t = alice.peer.transport
    for i in range(5):
        pkt = vp8_packet(SSRC_Q, 200 + i, 1000 + 3000 * i, keyframe=i == 0, rid="q", picture_id=i)
        alice.peer.on_rtp(t, pkt, 1.0 + i / 30)
    sent = [RtpPacket.parse(p) for p in h.sent_rtp["bob"]]
    lost = sent[2]
    nack = Nack.from_seqs(0x1234, sub.out_ssrc, [lost.sequence_number])
    bob.peer.on_rtcp(bob.peer.transport, nack.serialize(), 1.3)
    rtx = RtpPacket.parse(h.sent_rtp["bob"][-1])
    assert rtx.ssrc == sub.rtx_ssrc and rtx.payload_type == 97
    assert int.from_bytes(rtx.payload[:2], "big") == lost.sequence_number  # OSN, RFC 4588 §4
    assert rtx.payload[2:] == lost.payload and rtx.timestamp == lost.timestamp
    # A repeated NACK within one round trip is not answered twice.
    bob.peer.on_rtcp(bob.peer.transport, nack.serialize(), 1.301)
    assert len(h.sent_rtp["bob"]) == 6
    assert bob.peer.counters.retransmits == 1


def test_many_plis_from_subscribers_become_one_upstream_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    sub.selector.set_target(0, None)
    t = alice.peer.transport
    alice.peer.on_rtp(t, vp8_packet(SSRC_Q, 1, 1000, keyframe=True, rid="q"), 1.0)
    before = len(h.sent_rtcp["alice"])
    for i in range(5):
        bob.peer.on_rtcp(bob.peer.transport, Pli(1, sub.out_ssrc).serialize(), 2.0 + i * 0.05)
    upstream = [x for p in h.sent_rtcp["alice"][before:] for x in parse_compound(p)]
    assert [(type(x), x.media_ssrc) for x in upstream if isinstance(x, Pli)] == [(Pli, SSRC_Q)]


def test_audio_levels_drive_active_speaker_events(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    _meeting(h)
    room = h.service.rooms[ROOM]
    alice = room.by_identity("alice")
    assert alice and alice.peer
    t = alice.peer.transport
    for i in range(100):
        alice.peer.on_rtp(t, opus_packet(AUDIO_SSRC, i, 960 * i, level=20), 1.0 + i * 0.02)
        h.service.poll(1.0 + i * 0.02, 1.7e9)
    speakers = h.messages("bob", "speakers")
    assert speakers and speakers[-1]["speakers"] == [alice.id]
    audio = [
        RtpPacket.parse(p) for p in h.sent_rtp["bob"] if RtpPacket.parse(p).payload_type == OPUS_PT
    ]
    assert len(audio) == 100


def test_leaving_frees_routes_caches_and_transports(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    video, _v, _a = _meeting(h)
    room = h.service.rooms[ROOM]
    alice, bob = room.by_identity("alice"), room.by_identity("bob")
    assert alice and bob and alice.peer and bob.peer
    publication = room.publications[video]
    assert len(publication.fanout) == 1
    h.service.leave(bob, now=1.0)
    assert publication.fanout == ()
    assert bob.peer is None and bob.state is ParticipantState.LEFT
    h.service.leave(alice, now=1.0)
    assert alice.peer is None and not room.publications
    assert ROOM not in h.service.rooms
    assert h.service.port.transport_count == 0


def test_unpublish_by_renegotiation_ends_subscriptions(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    video, _v, _a = _meeting(h)
    room = h.service.rooms[ROOM]
    alice, bob = room.by_identity("alice"), room.by_identity("bob")
    assert alice and bob and bob.peer
    # Alice renegotiates with her video section stopped (port 0).
    offer = simulcast_offer()
    head, video_part = offer.split("m=video ", 1)
    video_part = "0 " + video_part.split(" ", 1)[1]
    h.service.offer(alice, head + "m=video " + video_part, 1.0)
    assert h.messages("bob", "track_unpublished") == [{"type": "track_unpublished", "track": video}]
    assert all(s.publication.id != video for s in bob.peer.subscriptions.values())
    # Bob's next offer still binds the ended track (it raced the event): answered inactive.
    answer = h.service.offer(bob, recvonly_offer(), 1.1, subscriptions={"1": video})
    assert "1" not in answer_ssrcs(answer)


def test_transport_failure_ends_the_participant(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    closed: list[int] = []
    alice.on_close = lambda code, reason: closed.append(code)
    h.service.offer(alice, simulcast_offer(), 0.0)
    assert alice.peer is not None
    alice.peer.on_state(alice.peer.transport, TransportState.FAILED, 1.0)
    assert closed == [4010] and alice.state is ParticipantState.LEFT
    assert ROOM not in h.service.rooms


def test_allocation_caps_layers_only_when_remb_signals_congestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sfu.packet.rtcp_feedback import Remb

    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    t = alice.peer.transport
    # Layer bitrates over the last second: q ~48 kbps, h ~144 kbps, f ~288 kbps.
    for i in range(30):
        now = 1.0 + i / 30
        for ssrc, rid, size in ((SSRC_Q, "q", 200), (SSRC_H, "h", 600), (SSRC_F, "f", 1200)):
            pkt = vp8_packet(ssrc, i, 3000 * i, keyframe=i == 0, rid=rid, payload=bytes(size))
            alice.peer.on_rtp(t, pkt, now)
    bob_t = bob.peer.transport
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 2_000_000, [sub.out_ssrc]).serialize(), 1.4)
    h.service.poll(1.45, 1.7e9)
    assert sub.selector.requested.spatial == 2  # a growing estimate does not cap
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 200_000, [sub.out_ssrc]).serialize(), 1.9)
    h.service.poll(2.0, 1.7e9)
    assert sub.selector.requested.spatial == 1  # q + h fit 190 kbps, f does not
    # A subscriber preference caps below what bandwidth allows.
    sub.set_preferences(0, None, False)
    h.service.poll(2.6, 1.7e9)
    assert sub.selector.target.spatial == 0


def test_a_declared_screen_share_is_announced_with_its_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    h.join(ROOM, "bob")
    with pytest.raises(RoomError) as err:
        h.service.offer(alice, simulcast_offer(), 0.0, sources={"0": "screen"})  # an audio mid
    assert err.value.code == "bad_message" and "source" in err.value.message
    h.service.offer(
        alice,
        simulcast_offer(),
        0.0,
        names={"1": "slides"},
        sources={"1": "screen"},
        heights={"0": 480, "1": 1080},
    )
    published = {m["track"]["kind"]: m["track"] for m in h.messages("bob", "track_published")}
    assert published["video"]["source"] == "screen"
    assert published["video"]["height"] == 1080
    assert "height" not in published["audio"]  # only video declares a picture height
    assert published["audio"]["source"] == "microphone"


def test_a_bandwidth_pause_and_resume_are_told_to_the_subscriber(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sfu.packet.rtcp_feedback import Remb

    h = harness(monkeypatch)
    alice, bob, sub = _video_subscription(h)
    t = alice.peer.transport
    assert t is not None and bob.peer is not None

    def publish(start: float) -> None:
        for i in range(30):  # one second of three layers: q ~48, h ~144, f ~288 kbit/s
            now = start + i / 30
            seq = int(start * 30) + i
            for ssrc, rid, size in ((SSRC_Q, "q", 200), (SSRC_H, "h", 600), (SSRC_F, "f", 1200)):
                pkt = vp8_packet(
                    ssrc, seq, 3000 * seq, keyframe=i == 0, rid=rid, payload=bytes(size)
                )
                alice.peer.on_rtp(t, pkt, now)

    bob_t = bob.peer.transport
    publish(1.0)
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 2_000_000, [sub.out_ssrc]).serialize(), 1.9)
    h.service.poll(2.0, 1.7e9)
    assert h.messages("bob", "stream_state") == []
    publish(2.0)
    # Below the lowest layer: paused, and Bob is told why.
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 30_000, [sub.out_ssrc]).serialize(), 2.9)
    h.service.poll(3.0, 1.7e9)
    assert sub.selector is not None and sub.selector.requested.spatial is None
    assert h.messages("bob", "stream_state") == [
        {
            "type": "stream_state",
            "track": sub.publication.id,
            "state": "paused",
            "reason": "bandwidth",
        }
    ]
    assert bob.peer.allocator.paused_count == 1
    publish(3.0)
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 2_000_000, [sub.out_ssrc]).serialize(), 5.5)
    publish(5.0)
    h.service.poll(6.0, 1.7e9)
    assert h.messages("bob", "stream_state")[1:] == [
        {"type": "stream_state", "track": sub.publication.id, "state": "active"}
    ]
    # Resumed at the lowest layer: no upgrade within the cooldown after the pause.
    assert sub.selector.requested.spatial == 0
