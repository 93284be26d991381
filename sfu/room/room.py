"""Rooms and participants: who is in a meeting, what they publish, who hears about what.

A :class:`Room` holds its admitted participants, the participants held before admission
(``waiting``: the waiting room), the publications by track id and the active-speaker
detector. Everything here is
sans-I/O: messages for participants go to each participant's ``sink`` (the signaling adapter
queues them on the WebSocket), and the room reads no clock.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sfu.core.peer import Peer
from sfu.core.publication import Publication
from sfu.core.speaker import ActiveSpeakerDetector
from sfu.room.identity import Grant

__all__ = ["Message", "Participant", "ParticipantState", "Room", "Sink"]

Message = dict[str, Any]
Sink = Callable[[Message], None]

#: Ended track ids a room remembers, so that a subscription offer racing the
#: ``track_unpublished`` event is answered inactive instead of failing.
_ENDED_TRACKS: Final = 512
#: How often the active speaker list is recomputed.
SPEAKER_INTERVAL: Final = 0.2


class ParticipantState(enum.Enum):
    """Where a participant is in the join flow."""

    WAITING = "waiting"
    JOINED = "joined"
    LEFT = "left"


def _no_sink(message: Message) -> None:
    """The sink of participants without a signaling channel (WHIP, WHEP)."""


@dataclass(eq=False, slots=True)
class Participant:
    """One person (or WHIP/WHEP client) in one room."""

    id: str
    identity: str = field(repr=False)
    name: str | None = field(repr=False)
    grants: Grant
    room: Room
    kind: str = "websocket"
    state: ParticipantState = ParticipantState.WAITING
    sink: Sink = _no_sink
    #: Called once when the server ends the participant: (close code, reason).
    on_close: Callable[[int, str], None] | None = None
    peer: Peer | None = None
    #: The DTLS setup we answered with first; later answers keep it (RFC 8842 §5.5).
    setup: Any = None
    #: The remote certificate fingerprints of the transport, fixed at the first offer.
    fingerprints: tuple[tuple[str, str], ...] = ()
    cname: str = ""
    #: When it started waiting for admission (the service's clock).
    waiting_since: float = 0.0
    #: Refused moderation attempts of this participant written to the audit log so far.
    refusals_audited: int = 0
    #: The client's address as signaling saw it (for per-source limits); never logged.
    source: str | None = field(default=None, repr=False)
    #: While its signaling is gone: when its place is given up (the service's clock).
    detached_until: float | None = None
    #: It resumed after its signaling dropped: its next offer may bring a new transport.
    resumed: bool = False
    #: A host muted its chat: the relay refuses its messages (see :mod:`sfu.room.chat`).
    chat_muted: bool = False

    @property
    def moderator(self) -> bool:
        """Whether its token lets it admit and moderate (``host`` or ``admin`` grant)."""
        return bool(self.grants & (Grant.HOST | Grant.ADMIN))

    def describe_waiting(self) -> Message:
        """The participant as hosts see it in the waiting list: id and display name only."""
        return {"id": self.id, "name": self.name}

    def describe(self) -> Message:
        """The participant as others see it (identity and name come from its token)."""
        tracks = [] if self.peer is None else self.peer.publications.values()
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "kind": self.kind,
            "tracks": [p.describe() for p in tracks],
        }

    def send(self, message: Message) -> None:
        """Queue ``message`` for this participant (nothing if it has no signaling channel)."""
        self.sink(message)


class Room:
    """One meeting: participants, publications and the active speaker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.participants: dict[str, Participant] = {}
        self.waiting: dict[str, Participant] = {}
        self.publications: dict[str, Publication] = {}
        #: Participants of the room's other shards (``sfu.room.shards``), as others see
        #: them (without tracks: their tracks are stand-ins in ``publications``).
        self.remote: dict[str, Message] = {}
        #: The worker (shard) each remote participant is on.
        self.remote_shard: dict[str, int] = {}
        #: Remote participants with the ``admin`` grant (only an admin moderates an admin).
        self.remote_admins: set[str] = set()
        self.speakers = ActiveSpeakerDetector()
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._last_speaker_poll = -1e9

    @property
    def empty(self) -> bool:
        """No one is in the room or waiting for it."""
        return not self.participants and not self.waiting

    def by_identity(self, identity: str) -> Participant | None:
        """The admitted or waiting participant with this token identity."""
        for group in (self.participants, self.waiting):
            for participant in group.values():
                if participant.identity == identity:
                    return participant
        return None

    def moderators(self) -> list[Participant]:
        """The admitted participants who may admit and moderate."""
        return [p for p in self.participants.values() if p.moderator]

    def broadcast(self, message: Message, exclude: Participant | None = None) -> None:
        """Send ``message`` to every admitted participant but ``exclude``."""
        for participant in tuple(self.participants.values()):
            if participant is not exclude:
                participant.send(message)

    def track_ended(self, track_id: str) -> bool:
        """Whether ``track_id`` was a track of this room that has ended."""
        return track_id in self._ended

    def forget_track(self, track_id: str) -> Publication | None:
        """Remove a publication, remembering its id as ended."""
        publication = self.publications.pop(track_id, None)
        if publication is not None:
            self._ended[track_id] = None
            while len(self._ended) > _ENDED_TRACKS:
                self._ended.popitem(last=False)
        return publication

    def poll_speakers(self, now: float) -> None:
        """Broadcast the active speakers when the list changed."""
        if now - self._last_speaker_poll < SPEAKER_INTERVAL:
            return
        self._last_speaker_poll = now
        changed = self.speakers.poll(now)
        if changed is not None:
            active = [pid for pid in changed if pid in self.participants or pid in self.remote]
            speakers = frozenset(active)
            for participant in self.participants.values():
                if participant.peer is not None:
                    participant.peer.speakers = speakers  # their cameras rank higher
            self.broadcast({"type": "speakers", "speakers": active})
