"""Moderation: what hosts and admins may do to one participant or one track of their room.

Every action is checked before anything changes. The actor must be admitted and hold the
``host`` or ``admin`` grant; its target is looked up in the actor's own room only, so an id
from another room is simply unknown here; a participant with the ``admin`` grant can only be
acted on by another admin; nobody acts on themselves. There is nothing wider than one room:
no global ban, no cross-room action. Every attempt, refused or not, goes to the audit log with
its outcome (refusals of participants who are no moderators at all only up to
:data:`MAX_REFUSALS_AUDITED` each, so nobody can fill the disk by spamming).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from sfu.core.publication import Publication
from sfu.room.identity import Grant
from sfu.room.policy import MAX_BAN_S, PolicyError
from sfu.room.room import Participant, ParticipantState
from sfu.room.service import (
    CLOSE_ENDED,
    CLOSE_REFUSED,
    CLOSE_REMOVED,
    RoomError,
    RoomService,
)

__all__ = ["MAX_REFUSALS_AUDITED", "Moderation"]

#: Refused attempts audited per participant without a moderator grant.
MAX_REFUSALS_AUDITED: Final = 10


@dataclass(slots=True)
class _Attempt:
    """What an audit record of one attempt says besides actor, action and outcome."""

    target: Participant | None = None
    details: dict[str, Any] = field(default_factory=dict)
    #: The identity of a target on another shard of the room (``sfu.room.shards``).
    remote_identity: str | None = None


class Moderation:
    """The moderation actions of the room protocol, over a :class:`RoomService`."""

    def __init__(self, service: RoomService) -> None:
        self.service = service

    # -- checks and audit ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _attempt(self, actor: Participant, action: str) -> Iterator[_Attempt]:
        """Audit the attempt in the ``with`` block: ``ok``, or the refusal's error code."""
        attempt = _Attempt()
        try:
            yield attempt
        except RoomError as exc:
            if actor.moderator or actor.refusals_audited < MAX_REFUSALS_AUDITED:
                actor.refusals_audited += 1
                self._audit(actor, action, attempt, exc.code)
            raise
        self._audit(actor, action, attempt, "ok")

    def _audit(self, actor: Participant, action: str, attempt: _Attempt, outcome: str) -> None:
        target = attempt.target.identity if attempt.target is not None else attempt.remote_identity
        self.service.audit.record(
            room=actor.room.name,
            actor=actor.identity,
            action=action,
            target=target,
            outcome=outcome,
            **attempt.details,
        )

    @staticmethod
    def _check_actor(actor: Participant, action: str) -> None:
        if actor.state is not ParticipantState.JOINED:
            raise RoomError("not_joined", "not admitted to the room")
        if not actor.moderator:
            raise RoomError("forbidden", f"only a host or an admin may {action.replace('_', ' ')}")

    @staticmethod
    def _check_target(actor: Participant, target: Participant, attempt: _Attempt) -> None:
        attempt.target = target
        if target is actor:
            raise RoomError("bad_message", "you cannot moderate yourself")
        if target.grants & Grant.ADMIN and not actor.grants & Grant.ADMIN:
            raise RoomError("forbidden", "only an admin may moderate an admin")

    @staticmethod
    def _remote(actor: Participant, participant_id: str, attempt: _Attempt) -> str | None:
        """``participant_id`` when it is a participant of another shard of the room (after
        the same checks as a local target), else None."""
        room = actor.room
        described = room.remote.get(participant_id)
        if described is None:
            return None
        attempt.remote_identity = str(described["identity"])
        if participant_id in room.remote_admins and not actor.grants & Grant.ADMIN:
            raise RoomError("forbidden", "only an admin may moderate an admin")
        return participant_id

    @staticmethod
    def _waiting(actor: Participant, participant_id: str) -> Participant:
        target = actor.room.waiting.get(participant_id)
        if target is None:
            raise RoomError(
                "unknown_participant", f"nobody {participant_id[:32]!r} waits in this room"
            )
        return target

    @staticmethod
    def _present(actor: Participant, participant_id: str) -> Participant:
        room = actor.room
        target = room.participants.get(participant_id) or room.waiting.get(participant_id)
        if target is None:
            raise RoomError(
                "unknown_participant", f"no participant {participant_id[:32]!r} in this room"
            )
        return target

    def _track(self, actor: Participant, track_id: str, attempt: _Attempt) -> Publication:
        room = actor.room
        publication = room.publications.get(track_id)
        if publication is None:
            raise RoomError("unknown_track", f"no track {track_id[:32]!r} in this room", track_id)
        attempt.details["track"] = publication.id
        owner = room.participants.get(publication.participant_id)
        if owner is None:
            if self._remote(actor, publication.participant_id, attempt) is not None:
                return publication  # a track of another shard's participant
            # pragma: no cover - publications leave with their participant
            raise RoomError("unknown_track", f"no track {track_id[:32]!r} in this room", track_id)
        self._check_target(actor, owner, attempt)
        return publication

    # -- the waiting room ---------------------------------------------------------------------

    def admit(self, actor: Participant, participant_id: str) -> None:
        """Let one waiting participant in."""
        with self._attempt(actor, "admit") as attempt:
            self._check_actor(actor, "admit")
            target = self._waiting(actor, participant_id)
            self._check_target(actor, target, attempt)
            self.service.admit(actor.room, target.id)

    def deny(self, actor: Participant, participant_id: str, *, now: float) -> None:
        """Turn one waiting participant away (closed with 4003)."""
        with self._attempt(actor, "deny") as attempt:
            self._check_actor(actor, "deny")
            target = self._waiting(actor, participant_id)
            self._check_target(actor, target, attempt)
            self.service.end(target, CLOSE_REFUSED, "a host denied you entry", now=now)

    def admit_all(self, actor: Participant) -> int:
        """Let everyone waiting in; returns how many."""
        with self._attempt(actor, "admit_all") as attempt:
            self._check_actor(actor, "admit_all")
            room = actor.room
            count = 0
            for participant_id in list(room.waiting):
                count += int(self.service.admit(room, participant_id, notify=False))
            if count:
                self.service.notify_waiting(room)
            attempt.details["count"] = count
        return count

    # -- participants and tracks --------------------------------------------------------------

    def remove(
        self, actor: Participant, participant_id: str, ban_s: int | None, *, now: float
    ) -> None:
        """End one participant (4004); with ``ban_s`` its identity may not rejoin this room
        for that long."""
        with self._attempt(actor, "remove") as attempt:
            if ban_s is not None:
                attempt.details["ban_s"] = ban_s
                if not 0 <= ban_s <= MAX_BAN_S:
                    raise RoomError("bad_message", f"'ban_s' must be 0-{MAX_BAN_S}")
            self._check_actor(actor, "remove")
            if participant_id not in actor.room.participants and self._remote(
                actor, participant_id, attempt
            ):
                if ban_s and attempt.remote_identity is not None:
                    self.service.bans.ban(
                        actor.room.name, attempt.remote_identity, now + ban_s, now
                    )
                # With the identity: a third shard may have seen the target leave (its own
                # shard's news) before this, and must still bar the identity.
                self.service.moderate_remote(
                    actor.room,
                    {
                        "action": "remove",
                        "target": participant_id,
                        "ban_s": ban_s,
                        "identity": attempt.remote_identity,
                    },
                )
                return
            target = self._present(actor, participant_id)
            self._check_target(actor, target, attempt)
            if ban_s:
                self.service.bans.ban(actor.room.name, target.identity, now + ban_s, now)
                # Every other shard of the room bars the identity too: its rejoin may be
                # placed on any of them.
                self.service.moderate_remote(
                    actor.room,
                    {
                        "action": "remove",
                        "target": target.id,
                        "ban_s": ban_s,
                        "identity": target.identity,
                    },
                )
            self.service.end(target, CLOSE_REMOVED, "a host removed you from the meeting", now=now)

    def request_mute(self, actor: Participant, track_id: str) -> None:
        """Ask the publisher of one track to mute it (its client decides)."""
        with self._attempt(actor, "request_mute") as attempt:
            self._check_actor(actor, "request_mute")
            publication = self._track(actor, track_id, attempt)
            owner = attempt.target
            if owner is None:  # on another shard of the room
                pid = publication.participant_id
                if actor.room.remote[pid].get("kind") != "websocket":
                    raise RoomError(
                        "unsupported", "that client cannot be asked; use force_mute", track_id
                    )
                self.service.moderate_remote(
                    actor.room,
                    {"action": "request_mute", "target": pid, "track": track_id, "by": actor.id},
                )
                return
            if owner.kind != "websocket":
                raise RoomError(
                    "unsupported",
                    f"a {owner.kind.upper()} client cannot be asked; use force_mute",
                    track_id,
                )
            owner.send({"type": "mute_requested", "track": publication.id, "by": actor.id})

    def force_mute(self, actor: Participant, track_id: str, muted: bool) -> None:
        """Stop (or resume) forwarding one track; its publisher cannot unmute it meanwhile."""
        with self._attempt(actor, "force_mute") as attempt:
            attempt.details["muted"] = muted
            self._check_actor(actor, "force_mute")
            publication = self._track(actor, track_id, attempt)
            self.service.set_force_muted(actor.room, publication, muted)

    def mute_chat(self, actor: Participant, participant_id: str, muted: bool) -> None:
        """Refuse (or accept again) one participant's chat messages; it and the room are told."""
        with self._attempt(actor, "mute_chat") as attempt:
            attempt.details["muted"] = muted
            self._check_actor(actor, "mute_chat")
            if participant_id not in actor.room.participants and self._remote(
                actor, participant_id, attempt
            ):
                actor.room.broadcast(
                    {"type": "chat_muted", "participant": participant_id, "muted": muted}
                )
                self.service.moderate_remote(
                    actor.room, {"action": "mute_chat", "target": participant_id, "muted": muted}
                )
                return
            target = self._present(actor, participant_id)
            self._check_target(actor, target, attempt)
            if target.chat_muted != muted:
                target.chat_muted = muted
                actor.room.broadcast(
                    {"type": "chat_muted", "participant": target.id, "muted": muted}
                )

    # -- the room -----------------------------------------------------------------------------

    def lock(self, actor: Participant, locked: bool) -> None:
        """Lock (nobody new may join) or unlock the room; it stays so until changed."""
        with self._attempt(actor, "lock") as attempt:
            attempt.details["locked"] = locked
            self._check_actor(actor, "lock")
            name = actor.room.name
            try:
                old, new = self.service.policies.update(name, {"locked": locked})
            except PolicyError as exc:
                raise RoomError("server_busy", str(exc)) from None
            self.service.policy_changed(name, old, new)

    def end_meeting(self, actor: Participant, *, now: float) -> int:
        """End the meeting for everyone in the room, the actor included (4005); returns how
        many participants were ended."""
        with self._attempt(actor, "end_meeting") as attempt:
            self._check_actor(actor, "end_meeting")
            room = actor.room
            everyone = [*room.waiting.values(), *room.participants.values()]
            attempt.details["count"] = len(everyone)
        for participant in everyone:
            if participant is not actor:
                self.service.end(participant, CLOSE_ENDED, "a host ended the meeting", now=now)
        self.service.end(actor, CLOSE_ENDED, "you ended the meeting", now=now)
        return len(everyone)
