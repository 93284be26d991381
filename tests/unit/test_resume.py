"""Resuming a participant whose signaling dropped (docs/protocol.md, "Reconnecting"),
socket-free with a fake clock: same participant, no leave or join seen by others, tracks
and subscriptions kept, a new connection may replace the transport, the grace expires."""

from __future__ import annotations

import pytest
from room_fixtures import Harness, claims, harness, recvonly_offer, simulcast_offer

from sfu.room.room import Participant, ParticipantState

ROOM = "resume"
GRACE = 15.0


def _meeting(monkeypatch: pytest.MonkeyPatch) -> tuple[Harness, Participant, Participant]:
    h = harness(monkeypatch)
    h.service.resume_grace_s = GRACE
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in h.messages("bob", "track_published")}
    h.service.offer(bob, recvonly_offer(), 0.0, subscriptions={"1": tracks["video"]})
    return h, alice, bob


def _rejoin(h: Harness, identity: str, *, now: float, resume: bool = False) -> Participant:
    box = h.inbox.setdefault(identity, [])
    box.clear()
    return h.service.join(claims(ROOM, identity), box.append, now=now, resume=resume)


def test_a_dropped_participant_resumes_within_the_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    h, _alice, bob = _meeting(monkeypatch)
    assert bob.peer is not None
    transport, subscriptions = bob.peer.transport, dict(bob.peer.subscriptions)
    h.inbox["alice"].clear()
    h.service.detach(bob, now=1.0)
    h.service.poll(1.0 + GRACE - 0.5, 0.0)
    again = _rejoin(h, "bob", now=GRACE)
    assert again is bob and bob.state is ParticipantState.JOINED
    assert bob.peer is not None and bob.peer.transport is transport
    assert bob.peer.subscriptions == subscriptions
    joined = h.messages("bob", "joined")
    assert len(joined) == 1 and joined[0]["resumed"] is True
    assert [p["identity"] for p in joined[0]["participants"]] == ["alice"]
    # Alice saw nothing: no leave, no join, and the room holds one bob.
    assert not h.messages("alice", "participant_left")
    assert not h.messages("alice", "participant_joined")
    assert [p.identity for p in bob.room.participants.values()] == ["alice", "bob"]
    # The grace no longer runs.
    h.service.poll(100.0, 0.0)
    assert bob.state is ParticipantState.JOINED


def test_the_grace_expires_into_a_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    h, _alice, bob = _meeting(monkeypatch)
    transport = bob.peer.transport if bob.peer else None
    h.service.detach(bob, now=1.0)
    h.service.poll(1.0 + GRACE, 0.0)
    assert bob.state is ParticipantState.LEFT and transport is not None and transport.finished
    assert [m["participant"] for m in h.messages("alice", "participant_left")] == [bob.id]
    fresh = _rejoin(h, "bob", now=20.0)
    assert fresh is not bob and h.messages("bob", "joined")[0]["resumed"] is False


def test_without_grace_a_drop_is_a_leave(monkeypatch: pytest.MonkeyPatch) -> None:
    h, _alice, bob = _meeting(monkeypatch)
    h.service.resume_grace_s = 0.0
    h.service.detach(bob, now=1.0)
    assert bob.state is ParticipantState.LEFT


def test_resume_takes_over_a_session_still_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    h, _alice, bob = _meeting(monkeypatch)
    closed: list[tuple[int, str]] = []
    bob.on_close = lambda code, reason: closed.append((code, reason))
    again = _rejoin(h, "bob", now=2.0, resume=True)
    assert again is bob and closed == [(4009, "resumed elsewhere")]
    assert not h.messages("alice", "participant_left")


def test_a_resumed_client_may_bring_a_new_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    h, alice, _bob = _meeting(monkeypatch)
    assert alice.peer is not None
    old = alice.peer.transport
    old_tracks = set(alice.peer.publications)
    h.service.detach(alice, now=1.0)
    _rejoin(h, "alice", now=2.0)
    new_fingerprint = _other_fingerprint(simulcast_offer())
    h.service.offer(alice, new_fingerprint, 2.0, names={"1": "camera"})
    assert alice.peer is not None and alice.peer.transport is not old and old.finished
    assert set(alice.peer.publications) == old_tracks  # same mids, new publications
    assert h.messages("bob", "track_unpublished") and len(h.messages("bob", "track_published")) >= 4
    # Only right after a resume: a second change of certificate is refused as before.
    with pytest.raises(Exception, match="fingerprint"):
        h.service.offer(alice, simulcast_offer(), 3.0, names={"1": "camera"})


def _other_fingerprint(sdp: str) -> str:
    """The same offer from a new connection: another certificate's fingerprint."""
    assert "a=fingerprint:sha-256 3C:0E:" in sdp
    return sdp.replace("a=fingerprint:sha-256 3C:0E:", "a=fingerprint:sha-256 00:0E:")
