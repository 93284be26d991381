"""Meeting security in the room service, socket-free: waiting room, passwords, lock, E2EE
flag, moderation scoped to one participant in one room, force-mute and the audit log."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from room_fixtures import Harness, harness, recvonly_offer, simulcast_offer, vp8_packet

from sfu.packet.rtp import RtpPacket
from sfu.room.audit import AuditLog
from sfu.room.identity import Grant
from sfu.room.moderation import MAX_REFUSALS_AUDITED, Moderation
from sfu.room.policy import RoomDefaults, RoomPolicy, hash_password
from sfu.room.room import Participant, ParticipantState
from sfu.room.service import RoomError

ROOM, OTHER = "board", "elsewhere"
BOTH = Grant.PUBLISH | Grant.SUBSCRIBE
HOST = BOTH | Grant.HOST
ADMIN = BOTH | Grant.ADMIN
WAITING_ROOMS = RoomDefaults(RoomPolicy(waiting_room=True), waiting_timeout_s=600.0)
SSRC_Q = 1111


def closes(participant: Participant) -> list[tuple[int, str]]:
    """Record the close codes the service ends ``participant`` with."""
    closed: list[tuple[int, str]] = []
    participant.on_close = lambda code, reason: closed.append((code, reason))
    return closed


def snapshot(h: Harness) -> Any:
    """Everything a refused action must leave as it was."""
    service = h.service
    return (
        {
            name: (
                sorted(room.participants),
                sorted(room.waiting),
                sorted((t, p.muted, p.force_muted) for t, p in room.publications.items()),
                [p.state for p in room.participants.values()],
            )
            for name, room in service.rooms.items()
        },
        {name: service.policies.get(name) for name in (ROOM, OTHER)},
        len(service.bans),
        service.port.transport_count,
        {who: len(box) for who, box in h.inbox.items()},
    )


def audit_records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl")) for line in f.open()]


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


def secured(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path, defaults: RoomDefaults = WAITING_ROOMS
) -> tuple[Harness, Moderation]:
    h = harness(monkeypatch, defaults=defaults, audit=AuditLog(audit_dir))
    return h, Moderation(h.service)


# -- the waiting room ------------------------------------------------------------------------


def test_waiting_participant_gets_nothing_until_a_host_admits_it(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir)
    host = h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice")
    assert host.state is ParticipantState.JOINED and alice.state is ParticipantState.WAITING
    h.service.offer(host, simulcast_offer(), 0.0)
    # The guest got exactly one message: no participant list, no tracks.
    assert h.inbox["alice"] == [
        {
            "type": "waiting",
            "reason": "waiting for a host to admit you",
            "room": ROOM,
            "e2ee_required": False,
        }
    ]
    assert not h.messages("host", "participant_joined")
    assert h.messages("host", "waiting_list")[-1] == {
        "type": "waiting_list",
        "waiting": [{"id": alice.id, "name": "Alice"}],
    }
    # Offers and other requests are refused while waiting.
    with pytest.raises(RoomError) as err:
        h.service.offer(alice, recvonly_offer(), 0.0)
    assert err.value.code == "not_joined" and alice.peer is None
    with pytest.raises(RoomError) as err:
        mod.admit(alice, alice.id)
    assert err.value.code == "not_joined"

    mod.admit(host, alice.id)
    joined = h.messages("alice", "joined")[0]
    assert [p["id"] for p in joined["participants"]] == [host.id]
    assert len(joined["participants"][0]["tracks"]) == 2  # now it sees the host's tracks
    assert joined["e2ee_required"] is False and joined["policy"]["waiting_room"] is True
    assert h.messages("host", "waiting_list")[-1]["waiting"] == []
    assert h.messages("host", "participant_joined")[-1]["participant"]["id"] == alice.id
    assert audit_records(audit_dir)[-1] | {"time": ""} == {
        "time": "",
        "room": ROOM,
        "actor": "host",
        "action": "admit",
        "target": "alice",
        "outcome": "ok",
    }


def test_host_joining_later_sees_who_waits_and_can_admit_all(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir)
    guests = [h.join(ROOM, name) for name in ("alice", "bob", "carol")]
    host = h.join(ROOM, "host", HOST)
    assert [w["id"] for w in h.messages("host", "waiting_list")[0]["waiting"]] == [
        g.id for g in guests
    ]
    assert mod.admit_all(host) == 3
    assert all(g.state is ParticipantState.JOINED for g in guests)
    assert h.messages("host", "waiting_list")[-1]["waiting"] == []
    assert audit_records(audit_dir)[-1]["count"] == 3


def test_denied_participant_is_closed_and_leaves_no_state(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir)
    host = h.join(ROOM, "host", HOST)
    mallory = h.join(ROOM, "mallory")
    closed = closes(mallory)
    mod.deny(host, mallory.id, now=1.0)
    assert closed == [(4003, "a host denied you entry")]
    assert mallory.state is ParticipantState.LEFT
    room = h.service.rooms[ROOM]
    assert room.waiting == {} and list(room.participants) == [host.id]
    assert h.messages("host", "waiting_list")[-1]["waiting"] == []
    assert not h.messages("host", "participant_left")  # it never was in the meeting
    h.service.leave(host, now=1.0)
    assert h.service.rooms == {} and h.service.port.transport_count == 0
    assert audit_records(audit_dir)[-1]["action"] == "deny"


def test_waiting_times_out_and_leaves_no_state(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, _mod = secured(monkeypatch, audit_dir)
    guest = h.join(ROOM, "guest", now=100.0)
    closed = closes(guest)
    h.service.poll(699.0, 1.7e9)
    assert guest.state is ParticipantState.WAITING and closed == []
    h.service.poll(700.0, 1.7e9)
    assert closed == [(4006, "nobody admitted you in time")]
    assert h.service.rooms == {} and guest.state is ParticipantState.LEFT


def test_whip_and_hosts_bypass_the_waiting_room(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, _mod = secured(monkeypatch, audit_dir)
    caster = h.join(ROOM, "caster", Grant.PUBLISH, kind="whip")
    admin = h.join(ROOM, "admin", ADMIN)
    assert caster.state is ParticipantState.JOINED and admin.state is ParticipantState.JOINED


# -- passwords, lock, size, E2EE -------------------------------------------------------------


def test_password_lock_size_and_e2ee_policy(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    stored = hash_password("letmein")
    h.service.policies.update(ROOM, {"password": stored, "e2ee_required": True})

    def refused(identity: str, code: str, **kwargs: Any) -> None:
        before = snapshot(h)
        with pytest.raises(RoomError) as err:
            h.join(ROOM, identity, **kwargs)
        assert err.value.code == code
        assert snapshot(h)[:4] == before[:4]

    refused("alice", "password_required")
    refused("alice", "password_required", password=hash_password("letmein"))  # not the room's
    alice = h.join(ROOM, "alice", password=stored)
    assert h.messages("alice", "joined")[0]["e2ee_required"] is True
    assert h.messages("alice", "joined")[0]["policy"]["password_set"] is True
    host = h.join(ROOM, "host", HOST)  # hosts need no password
    refused("caster", "e2ee_required", grants=Grant.PUBLISH, kind="whip")
    h.join(ROOM, "viewer", Grant.SUBSCRIBE, kind="whep")  # watching needs no encryption

    mod.lock(host, True)
    assert h.messages("alice", "policy")[-1]["policy"]["locked"] is True
    refused("bob", "room_locked", password=stored)
    h.join(ROOM, "alice", password=stored)  # someone already inside may reconnect
    h.join(ROOM, "cohost", HOST)  # hosts pass the lock
    mod.lock(host, False)
    h.service.policies.update(ROOM, {"max_participants": 5})
    h.join(ROOM, "bob", password=stored)
    refused("carol", "room_full", password=stored)
    assert alice.state is ParticipantState.LEFT  # replaced by its reconnection


def test_switching_the_waiting_room_off_admits_everyone_waiting(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, _mod = secured(monkeypatch, audit_dir)
    guest = h.join(ROOM, "guest")
    old, new = h.service.policies.update(ROOM, {"waiting_room": False})
    assert h.service.policy_changed(ROOM, old, new) == 1
    assert guest.state is ParticipantState.JOINED


# -- moderation scope ------------------------------------------------------------------------


def test_moderation_is_scoped_to_one_room_and_needs_the_grant(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    host = h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice")
    admin = h.join(ROOM, "admin", ADMIN)
    h.service.offer(alice, simulcast_offer(), 0.0)
    outsider = h.join(OTHER, "outsider")
    h.service.offer(outsider, simulcast_offer(), 0.0)
    other_track = next(iter(h.service.rooms[OTHER].publications))
    alice_track = next(iter(h.service.rooms[ROOM].publications))
    h.service.policies.update(OTHER, {"waiting_room": True})
    waiting_elsewhere = h.join(OTHER, "waiting-elsewhere")

    cases = [
        # another room's participants and tracks are unknown here
        (lambda: mod.remove(host, outsider.id, 60, now=1.0), "unknown_participant"),
        (lambda: mod.remove(host, "PA_nobody", None, now=1.0), "unknown_participant"),
        (lambda: mod.admit(host, waiting_elsewhere.id), "unknown_participant"),
        (lambda: mod.deny(host, waiting_elsewhere.id, now=1.0), "unknown_participant"),
        (lambda: mod.admit(host, alice.id), "unknown_participant"),  # admitted, not waiting
        (lambda: mod.force_mute(host, other_track, True), "unknown_track"),
        (lambda: mod.request_mute(host, other_track), "unknown_track"),
        # no host grant
        (lambda: mod.remove(alice, host.id, None, now=1.0), "forbidden"),
        (lambda: mod.force_mute(alice, alice_track, True), "forbidden"),
        (lambda: mod.lock(alice, True), "forbidden"),
        (lambda: mod.admit_all(alice), "forbidden"),
        (lambda: mod.end_meeting(alice, now=1.0), "forbidden"),
        (lambda: mod.remove(outsider, alice.id, None, now=1.0), "forbidden"),
        # a host cannot act on an admin, nobody on themselves, ban_s must be in range
        (lambda: mod.remove(host, admin.id, None, now=1.0), "forbidden"),
        (lambda: mod.remove(host, host.id, None, now=1.0), "bad_message"),
        (lambda: mod.remove(host, alice.id, -1, now=1.0), "bad_message"),
        (lambda: mod.remove(host, alice.id, 10**9, now=1.0), "bad_message"),
    ]
    for action, code in cases:
        before = snapshot(h)
        with pytest.raises(RoomError) as err:
            action()
        assert err.value.code == code, (err.value.code, err.value.message)
        assert snapshot(h) == before
    records = audit_records(audit_dir)
    assert [r["outcome"] for r in records] == [code for _action, code in cases]
    assert records[0] == records[0] | {"actor": "host", "action": "remove", "target": None}
    assert records[13]["target"] == "admin" and records[13]["outcome"] == "forbidden"
    # An admin may act on what a host may not.
    mod.remove(admin, host.id, None, now=2.0)
    assert host.state is ParticipantState.LEFT


def test_refusals_of_non_moderators_are_audited_only_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice")
    for _ in range(MAX_REFUSALS_AUDITED + 20):
        with pytest.raises(RoomError):
            mod.lock(alice, True)
    assert len(audit_records(audit_dir)) == MAX_REFUSALS_AUDITED


def test_remove_with_ban_bars_the_identity_from_this_room_only(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    host = h.join(ROOM, "host", HOST)
    bob = h.join(ROOM, "bob")
    carol = h.join(ROOM, "carol")
    closed = closes(bob)
    mod.remove(host, bob.id, 60, now=1000.0)
    assert closed == [(4004, "a host removed you from the meeting")]
    assert h.messages("carol", "participant_left")[-1]["participant"] == bob.id
    assert carol.state is ParticipantState.JOINED and host.state is ParticipantState.JOINED
    with pytest.raises(RoomError) as err:
        h.join(ROOM, "bob", now=1059.0)
    assert err.value.code == "banned"
    h.join(OTHER, "bob", now=1059.0)  # no global ban
    h.join(ROOM, "bob", now=1060.0)  # the ban has expired
    mod.remove(host, carol.id, None, now=1061.0)  # without a ban: may come back at once
    h.join(ROOM, "carol", now=1062.0)
    assert [(r["action"], r["target"], r.get("ban_s")) for r in audit_records(audit_dir)] == [
        ("remove", "bob", 60),
        ("remove", "carol", None),
    ]


def test_end_meeting_ends_everyone_in_the_room_only(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir)
    host = h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice")  # waiting
    mod.admit(host, alice.id)
    waiting = h.join(ROOM, "bob")
    outsider = h.join(OTHER, "outsider", HOST)
    codes = {p.identity: closes(p) for p in (host, alice, waiting, outsider)}
    assert mod.end_meeting(host, now=1.0) == 3
    assert {k: [c for c, _r in v] for k, v in codes.items()} == {
        "host": [4005],
        "alice": [4005],
        "bob": [4005],
        "outsider": [],
    }
    assert list(h.service.rooms) == [OTHER]


# -- force-mute ------------------------------------------------------------------------------


def test_force_mute_stops_forwarding_and_the_publisher_cannot_lift_it(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    host = h.join(ROOM, "host", HOST | Grant.SUBSCRIBE)
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0)
    h.capture("alice", alice)
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in h.messages("bob", "track_published")}
    video = tracks["video"]
    h.service.offer(bob, recvonly_offer(), 0.0, subscriptions={"1": video})
    h.capture("bob", bob)
    assert alice.peer is not None and bob.peer is not None
    sub = next(iter(bob.peer.subscriptions.values()))
    assert sub.selector is not None
    sub.selector.set_target(0, None)
    t = alice.peer.transport
    seq = 0

    def send(keyframe: bool, now: float) -> int:
        """Alice sends one packet of layer q; returns how many reached bob."""
        nonlocal seq
        seq += 1
        before = len(h.sent_rtp.get("bob", []))
        packet = vp8_packet(SSRC_Q, seq, 3000 * seq, keyframe=keyframe, rid="q", picture_id=seq)
        alice.peer.on_rtp(t, packet, now)  # type: ignore[union-attr]
        return len(h.sent_rtp.get("bob", [])) - before

    assert send(True, 1.0) == 1 and send(False, 1.03) == 1
    mod.force_mute(host, video, True)
    told = {"type": "track_muted", "track": video, "muted": True, "force_muted": True}
    assert h.messages("alice", "track_muted")[-1] == told  # the publisher is told
    assert h.messages("bob", "track_muted")[-1] == told
    assert [send(k, 1.1 + i / 30) for i, k in enumerate((True, False, False))] == [0, 0, 0]
    with pytest.raises(RoomError) as err:
        h.service.set_muted(alice, video, False)
    assert err.value.code == "force_muted" and err.value.track == video
    assert [send(False, 1.3)] == [0]
    # A subscription made while force-muted gets nothing either.
    carol = h.join(ROOM, "carol")
    h.service.offer(carol, recvonly_offer("sub3"), 1.3, subscriptions={"1": video})
    h.capture("carol", carol)
    assert send(True, 1.35) == 0 and not h.sent_rtp["carol"]

    mod.force_mute(host, video, False)
    lifted = h.messages("alice", "track_muted")[-1]
    assert lifted == {"type": "track_muted", "track": video, "muted": True, "force_muted": False}
    h.service.set_muted(alice, video, False)  # now the publisher may unmute
    out_before = [RtpPacket.parse(p).sequence_number for p in h.sent_rtp["bob"]]
    assert send(True, 1.5) == 1 and send(False, 1.53) == 1
    out = [RtpPacket.parse(p).sequence_number for p in h.sent_rtp["bob"]]
    assert out[len(out_before)] == (out_before[-1] + 1) & 0xFFFF  # no gap for the subscriber
    records = audit_records(audit_dir)
    assert [(r["action"], r["target"], r["muted"], r["track"]) for r in records] == [
        ("force_mute", "alice", True, video),
        ("force_mute", "alice", False, video),
    ]


def test_request_mute_asks_the_publisher_only(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    host = h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0)
    audio = next(m["track"]["id"] for m in h.messages("bob", "track_published"))
    mod.request_mute(host, audio)
    assert h.messages("alice", "mute_requested") == [
        {"type": "mute_requested", "track": audio, "by": host.id}
    ]
    assert not h.messages("bob", "mute_requested")
    assert h.service.rooms[ROOM].publications[audio].muted is False  # only asked
    caster = h.join(ROOM, "caster", Grant.PUBLISH, kind="whip")
    h.service.offer(caster, simulcast_offer(), 0.0)
    cast = next(
        t for t, p in h.service.rooms[ROOM].publications.items() if p.participant_id == caster.id
    )
    with pytest.raises(RoomError) as err:
        mod.request_mute(host, cast)
    assert err.value.code == "unsupported"
    assert bob.state is ParticipantState.JOINED


# -- the audit log holds no personal extras --------------------------------------------------


def test_audit_records_hold_no_addresses_sdp_names_or_passwords(
    monkeypatch: pytest.MonkeyPatch, audit_dir: Path
) -> None:
    h, mod = secured(monkeypatch, audit_dir, RoomDefaults(RoomPolicy(waiting_room=False)))
    h.service.policies.update(ROOM, {"password": hash_password("hunter2")})
    host = h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice", password=h.service.policies.get(ROOM).password)
    h.service.offer(alice, simulcast_offer(), 0.0)
    track = next(iter(h.service.rooms[ROOM].publications))
    mod.request_mute(host, track)
    mod.force_mute(host, track, True)
    mod.lock(host, True)
    mod.remove(host, alice.id, 30, now=5.0)
    mod.end_meeting(host, now=1.0)
    text = "".join(f.read_text() for f in audit_dir.glob("*.jsonl"))
    records = audit_records(audit_dir)
    assert [r["action"] for r in records] == [
        "request_mute",
        "force_mute",
        "lock",
        "remove",
        "end_meeting",
    ]
    for record in records:
        assert {"time", "room", "actor", "action", "target", "outcome"} <= set(record)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
    for forbidden in ("v=0", "a=fingerprint", "127.0.0.1", "hunter2", "Alice", "Host", "ice-"):
        assert forbidden not in text, forbidden
    assert not re.search(r"\b\d{1,3}(\.\d{1,3}){3}\b", text)
