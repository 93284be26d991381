"""The room service: joining, offers (publish/subscribe), preferences, leaving; sans-I/O.

The signaling adapters (WebSocket room protocol, WHIP, WHEP) turn requests into calls here and
:class:`RoomError` codes into protocol errors or HTTP statuses. Every call validates first and
changes state only when the whole request is acceptable, so an error leaves the server exactly
as it was. ``now`` comes from the caller; nothing here touches a socket or a clock.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from sfu.core.counters import RouterStats
from sfu.core.dataplane import DataPlane
from sfu.core.kernels import Kernels
from sfu.core.peer import Peer
from sfu.core.publication import Publication, new_id, new_ssrc
from sfu.core.subscription import Subscription
from sfu.negotiation import (
    CodecPreferences,
    HostCandidate,
    NegotiatedCodec,
    NegotiatedMedia,
    NegotiatedSession,
    NegotiationError,
    SendStream,
    build_answer,
    forwardable,
    negotiate,
)
from sfu.packet.errors import ParseError
from sfu.packet.sdp import Direction, SessionDescription, Setup
from sfu.room.audit import AuditLog
from sfu.room.chat import ChatRelay
from sfu.room.identity import MAX_IDENTITY_CHARS, Grant, JoinClaims, grant_names
from sfu.room.policy import (
    MAX_BAN_S,
    Bans,
    PasswordHash,
    PolicyStore,
    RoomPolicy,
    policy_from_wire,
    policy_to_wire,
)
from sfu.room.room import SPEAKER_INTERVAL, Message, Participant, ParticipantState, Room, Sink
from sfu.room.shards import (
    SHARED_EVENTS,
    RemoteTracks,
    RoomBus,
    RoomHomes,
    publication_from_relay,
    relay_description,
)
from sfu.timer_queue import TimerQueue
from sfu.transport.datachannel import DataChannels
from sfu.transport.dtls import DtlsRole
from sfu.transport.port import CapacityError, MediaPort
from sfu.transport.sctp import SctpAssociation
from sfu.transport.transport import TransportState

__all__ = [
    "HOUSEKEEPING_INTERVAL",
    "REPLAY_INTERVAL",
    "ROOM_PREFERENCES",
    "Admission",
    "RoomError",
    "RoomLimits",
    "RoomService",
]

log = logging.getLogger(__name__)

#: What the server accepts in offers: VP8 first (every browser has it, and its payload
#: descriptor lets the SFU keep picture ids continuous across simulcast switches).
ROOM_PREFERENCES: Final = CodecPreferences(
    video_codecs=("VP8", "H264", "VP9", "AV1"), publish_forwardable_only=True
)
#: What a room forwards, best first (``joined.codecs``): clients order their codecs by it.
ROOM_CODECS: Final = {
    "audio": tuple(n for n in ROOM_PREFERENCES.audio_codecs if forwardable(n)),
    "video": tuple(n for n in ROOM_PREFERENCES.video_codecs if forwardable(n)),
}
#: The track sources a publisher may declare for each kind of m= section.
_SOURCES_BY_KIND: Final = {
    "audio": frozenset({"microphone", "screen_audio"}),
    "video": frozenset({"camera", "screen"}),
}
#: Stands for an extension id another section of the subscriber's BUNDLE negotiated: taken,
#: and never the target of a rewrite.
_OTHER_SECTION_URI: Final = "urn:x-sfu:id-taken-by-another-bundle-section"

#: Close codes of the room protocol (docs/protocol.md).
CLOSE_REFUSED: Final = 4003
CLOSE_REMOVED: Final = 4004
CLOSE_ENDED: Final = 4005
CLOSE_WAIT_TIMEOUT: Final = 4006
CLOSE_REPLACED: Final = 4009
CLOSE_MEDIA_FAILED: Final = 4010
#: Go to another node of the cluster (a join placed elsewhere, or a draining node's
#: participants): the ``moved`` error or ``server_draining`` before it names where.
CLOSE_MOVED: Final = 4011

#: The data plane's log is replayed into the peers' receive bookkeeping this often while it
#: forwards anything (and before any peer's timer runs): TWCC feedback is due every 50 ms,
#: so a later replay would delay it, an earlier one only costs calls.
REPLAY_INTERVAL: Final = 0.05
#: Waiting-room and resume-grace expiry are checked this often (their timeouts are seconds).
HOUSEKEEPING_INTERVAL: Final = 0.25
#: Work that one run's peers wake in others (a layer change wakes the subscribers) is done in
#: the same run, at most this many passes deep (a longer chain waits for the next run).
CASCADE_PASSES: Final = 2
#: Timer keys of the service's own work (peers and rooms are keys themselves).
_REPLAY: Final = "replay"
_HOUSEKEEPING: Final = "housekeeping"
_FLUSH: Final = "flush"

#: Decides a join: True admits at once, False holds the participant in ``room.waiting``.
#: Without one, the room's policy decides (its waiting room holds all but hosts and admins).
Admission = Callable[[Room, JoinClaims], bool]


#: The message size assumed when the offer says ``a=max-message-size:0`` (no limit, RFC 8841
#: §6): the relay never sends more than a chat envelope anyway.
MAX_CHAT_CHANNEL_MESSAGE: Final = 65536


class RoomError(Exception):
    """A request refused; ``code`` is the protocol error code, the message says why."""

    def __init__(self, code: str, message: str, track: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The track the error is about, when there is one (sent as ``track``).
        self.track = track


@dataclass(frozen=True, slots=True)
class RoomLimits:
    """Bounds on what one participant and one room may hold."""

    max_participants: int = 100
    max_publications: int = 8
    max_subscriptions: int = 128
    max_rooms: int = 1000


def stream_state_event(sub: Subscription, state: str, reason: str | None) -> Message:
    """The ``stream_state`` event: the server paused (``paused``, reason ``bandwidth``) or
    resumed (``active``) forwarding one subscribed track (docs/protocol.md)."""
    message: Message = {"type": "stream_state", "track": sub.publication.id, "state": state}
    if reason is not None:
        message["reason"] = reason
    return message


#: Most of a room's bans sent to a shard that opens (the longest-lasting; the bus's queue
#: and rate are bounded too, and a room with more bans than this is a room to lock instead).
MAX_SHARED_BANS: Final = 1000
#: Bans per ``bans`` event: 16 identities of at most 128 characters, even JSON-escaped,
#: stay under the cluster bus's 16 KiB message bound.
BANS_PER_EVENT: Final = 16


def _shared_identity(value: object) -> str | None:
    """An identity another shard sent (a join token's subject), or None if it is none."""
    if isinstance(value, str) and 0 < len(value) <= MAX_IDENTITY_CHARS:
        return value
    return None


def not_joined(participant: Participant) -> RoomError:
    """The refusal of a request from someone not (or no longer) in the meeting."""
    if participant.state is ParticipantState.WAITING:
        return RoomError("not_joined", "you are in the waiting room until a host admits you")
    return RoomError("not_joined", "not admitted to the room")


def _format_identity(codec: NegotiatedCodec) -> tuple[str, ...]:
    """What makes two formats of one codec the same bitstream for a decoder: the name and,
    for H.264, the packetization mode and profile (RFC 6184 §8.1: profile_idc and
    profile-iop; the level may differ), the profile for VP9 and AV1."""
    name = codec.name.lower()
    params = codec.parameters
    if name == "h264":
        profile = params.get("profile-level-id", "420010").lower()[:4]
        return (name, params.get("packetization-mode", "0"), profile)
    if name == "vp9":
        return (name, params.get("profile-id", "0"))
    if name == "av1":
        return (name, params.get("profile", "0"))
    return (name,)


def _payload_type_maps(
    media: NegotiatedMedia, publication: Publication, match: NegotiatedCodec
) -> tuple[dict[int, int], dict[int, int]]:
    """Per codec (issue 18): each of the publisher's payload types -> the subscriber's
    payload type of the same format (``match``, the compatible one, when it accepted none
    identical); and each subscriber payload type -> its RTX payload type."""
    mapped: dict[int, int] = {}
    for codec in publication.codecs:
        identity = _format_identity(codec)
        same = next(
            (
                c
                for c in media.codecs
                if c.clock_rate == codec.clock_rate and _format_identity(c) == identity
            ),
            match,
        )
        mapped[codec.payload_type] = same.payload_type
    rtx = {
        c.payload_type: c.rtx_payload_type for c in media.codecs if c.rtx_payload_type is not None
    }
    return mapped, rtx


def _matching_codec(media: NegotiatedMedia, codec: NegotiatedCodec) -> NegotiatedCodec | None:
    """The subscriber's codec entry for the publisher's codec (H.264: same packetization)."""
    name = codec.name.lower()
    mode = codec.parameters.get("packetization-mode", "0") if name == "h264" else None
    for candidate in media.codecs:
        if candidate.name.lower() != name or candidate.clock_rate != codec.clock_rate:
            continue
        if mode is not None and candidate.parameters.get("packetization-mode", "0") != mode:
            continue
        return candidate
    return None


def _subscriber_extensions(media: NegotiatedMedia, bundle_ids: set[int]) -> dict[int, str]:
    """The section's extension ids plus every id another section of the BUNDLE uses, marked
    taken, so hidden extensions land on an id free in the whole transport."""
    extensions = dict(media.extensions)
    for ext_id in bundle_ids - extensions.keys():
        extensions[ext_id] = _OTHER_SECTION_URI
    return extensions


def _declared_streams(media: NegotiatedMedia) -> list[tuple[int, int | None]]:
    """(media ssrc, rtx ssrc) per layer as the SDP declares them (a=ssrc / ssrc-group)."""
    rtx_of = dict(media.fid)
    if media.rids and media.rid_ssrcs:
        return [
            (media.rid_ssrcs[r], rtx_of.get(media.rid_ssrcs[r]))
            for r in media.rids
            if r in media.rid_ssrcs
        ]
    if media.rids:
        return []  # rid-based simulcast: SSRCs are learned from the rid extension
    rtx = set(rtx_of.values())
    primaries = [s for s in media.ssrcs if s not in rtx]
    return [(primaries[0], rtx_of.get(primaries[0]))] if primaries else []


def _untracked(participant: Participant) -> Message:
    """A participant as another shard lists it (its tracks travel as their own events), and
    whether it is an admin (for moderation there; never shown to clients)."""
    described = {k: v for k, v in participant.describe().items() if k != "tracks"}
    return {**described, "admin": bool(participant.grants & Grant.ADMIN)}


def _detached_sink(message: Message) -> None:
    """Where messages to a participant without signaling go: nowhere (a resume sends the
    whole state again)."""


class RoomService:
    """All rooms of this process, and the operations the signaling adapters call."""

    def __init__(
        self,
        port: MediaPort,
        candidates: list[HostCandidate],
        *,
        kernels: Kernels,
        limits: RoomLimits | None = None,
        admission: Admission | None = None,
        policies: PolicyStore | None = None,
        audit: AuditLog | None = None,
        bans: Bans | None = None,
        clock: Callable[[], float] | None = None,
        dataplane: DataPlane | None = None,
        resume_grace_s: float = 0.0,
        ice_servers: Callable[[], list[Message]] | None = None,
        chat: ChatRelay | None = None,
        pacing: bool = True,
    ) -> None:
        self.port = port
        #: Pace subscribers' egress (``bandwidth.pacing``); False leaves every peer unpaced.
        self.pacing = pacing
        #: The room chat relay (data channels and the WebSocket fallback).
        self.chat = chat if chat is not None else ChatRelay()
        self.chat.channel_sender = self._send_chat
        self.chat.requires_e2ee = self._requires_e2ee
        #: Seconds a participant whose signaling dropped keeps its place (0: it leaves).
        self.resume_grace_s = resume_grace_s
        #: Signaling URLs of other cluster nodes to reconnect to should this node be lost
        #: (``joined.nodes``); None when not clustered.
        self.fallback_nodes: Callable[[], list[str]] | None = None
        #: The ``RTCIceServer`` list (TURN credentials) for each joined message; None: none.
        self.ice_servers = ice_servers
        #: The per-packet classes of every publication and subscription (the data plane's
        #: too, so that its forwarder is only ever given objects of its own kind).
        self.kernels = kernels
        if dataplane is not None and dataplane.kernels is not kernels:
            raise ValueError("the room service and its data plane must share one kernel bundle")
        #: The forwarder's control-plane side, shared by every peer; None: all media takes
        #: the Python path. The composition root connects it to the port's transport events.
        self.dataplane = dataplane
        self.candidates = candidates
        self.limits = limits or RoomLimits()
        self.admission = admission
        self.rooms: dict[str, Room] = {}
        #: Every room's policy (defaults plus what admins set), bans and the audit log.
        self.policies = policies if policies is not None else PolicyStore()
        self.bans = bans if bans is not None else Bans()
        self.audit = audit if audit is not None else AuditLog(None)
        #: Counters of ended peers and sampled forwarding latency, for the metrics collector.
        self.stats = RouterStats(clock=clock)
        #: Set when the server drains: new joins are refused (``server_draining``).
        self.draining = False
        #: Deadlines of every peer, room (speaker detection) and the service's own work.
        self._timers: TimerQueue[object] = TimerQueue()
        self._timers.schedule(_HOUSEKEEPING, -math.inf)
        #: Peers whose deadline must be recomputed at the next :meth:`poll` (media arrived
        #: on them, or an event woke them).
        self._dirty: set[Peer] = set()
        #: Participants whose signaling dropped, keeping their place until ``detached_until``.
        self._detached: set[Participant] = set()
        #: Whose peer each peer is (its room gets speaker detection).
        self._owners: dict[Peer, Participant] = {}
        #: Told the time the service next needs :meth:`poll` when an event made it earlier
        #: than it was; the asyncio adapter re-arms its one loop timer then.
        self.on_timer: Callable[[float], None] | None = None
        #: How many peer timer runs :meth:`poll` made (each ran one peer's due work).
        self.peer_runs = 0
        #: The other shards of spread rooms (``sfu.room.shards``): the bus their events
        #: travel on and the pipes that feed their tracks here. None: rooms are not spread.
        self.bus: RoomBus | None = None
        #: Told when a room opens and ends here (a cluster's home claims); None: nobody.
        self.homes: RoomHomes | None = None
        self.remote_tracks: RemoteTracks | None = None
        #: Events from the bus dropped as malformed or unknown (counted, never raised).
        self.bus_refused = 0
        self.chat.on_relayed = self._share_chat

    def own_publication(self, track_id: str) -> Publication | None:
        """The publication ``track_id`` of a publisher connected here (never a stand-in for
        another shard's or node's track: a relay carries only what its own publishers send)."""
        for room in self.rooms.values():
            publication = room.publications.get(track_id)
            if publication is not None and publication.participant_id in room.participants:
                return publication
        return None

    # -- joining and leaving ------------------------------------------------------------------

    def join(
        self,
        claims: JoinClaims,
        sink: Sink,
        *,
        kind: str = "websocket",
        now: float,
        password: PasswordHash | None = None,
        source: str | None = None,
        resume: bool = False,
    ) -> Participant:
        """Add a verified token holder to its room: admitted, or held in ``waiting``.

        A participant of the same identity whose signaling dropped (within the grace
        period), or any admitted one when ``resume`` is asked, is resumed: the same
        participant continues on ``sink`` (:meth:`_resume`).

        The room's policy applies first (bans, lock, password, size; see
        :meth:`_check_entry`); ``password`` is the room's hash the caller verified the
        client's password against. A participant with the same identity already in the room
        is ended (4009): one identity is one seat, and a reconnecting client replaces its
        stale session.
        """
        if self.draining:
            raise RoomError("server_draining", "the server is shutting down; join again shortly")
        room = self.rooms.get(claims.room)
        opened = room is None
        if room is None:
            if len(self.rooms) >= self.limits.max_rooms:
                raise RoomError("server_busy", "too many rooms")
            room = Room(claims.room)
        policy = self.policies.get(claims.room)
        previous = room.by_identity(claims.identity)
        self._check_entry(room, policy, claims, kind, previous is not None, now, password)
        self.rooms[claims.room] = room
        if opened:
            if self.homes is not None:
                self.homes.opened(room.name)
            self._share(room, {"type": "shard_opened"})  # the other shards answer with theirs
        if (
            previous is not None
            and previous.state is ParticipantState.JOINED
            and kind == previous.kind == "websocket"
            and self.resume_grace_s > 0
            and (resume or previous.detached_until is not None)
        ):
            self._resume(previous, claims, sink)
            return previous
        if previous is not None:
            self.end(previous, CLOSE_REPLACED, "joined from elsewhere", now=now)
        participant = Participant(
            id=new_id("PA"),
            identity=claims.identity,
            name=claims.name,
            grants=claims.grants,
            room=room,
            kind=kind,
            sink=sink,
            cname=secrets.token_urlsafe(9),
            source=source,
        )
        if self.admission is not None:
            held = not self.admission(room, claims)
        else:
            held = kind == "websocket" and policy.waiting_room and not participant.moderator
        if not held:
            self._admit(participant)
            return participant
        participant.waiting_since = now
        room.waiting[participant.id] = participant
        participant.send(
            {
                "type": "waiting",
                "reason": "waiting for a host to admit you",
                "room": room.name,
                "e2ee_required": policy.e2ee_required,
            }
        )
        self.notify_waiting(room)
        return participant

    def _check_entry(
        self,
        room: Room,
        policy: RoomPolicy,
        claims: JoinClaims,
        kind: str,
        rejoining: bool,
        now: float,
        password: PasswordHash | None,
    ) -> None:
        """Raise the :class:`RoomError` that keeps ``claims`` out of ``room``, if any.

        Hosts and admins pass the lock and the password (they run the meeting); a ban holds
        for everyone. WHIP and WHEP need no password (their bearer token admits them), but a
        WHIP publisher cannot encrypt end to end, so it is refused where that is required.
        """
        moderator = bool(claims.grants & (Grant.HOST | Grant.ADMIN))
        if self.bans.banned(room.name, claims.identity, now):
            raise RoomError("banned", "you were removed from this room and may not rejoin yet")
        if policy.locked and not moderator and not rejoining:
            raise RoomError("room_locked", "the room is locked: nobody new may join")
        if kind == "whip" and policy.e2ee_required:
            raise RoomError(
                "e2ee_required",
                "this room requires end-to-end encrypted media, which WHIP cannot signal",
            )
        needs_password = kind == "websocket" and policy.password is not None and not moderator
        if needs_password and password is not policy.password:
            raise RoomError("password_required", "this room needs a password")
        limit = min(policy.max_participants, self.limits.max_participants)
        # The limit is the room's, over all its shards: the others' participants count too
        # (but the seat of this identity there, which a join here takes over: ``seat_taken``).
        remote = sum(1 for shown in room.remote.values() if shown["identity"] != claims.identity)
        if not rejoining and len(room.participants) + len(room.waiting) + remote >= limit:
            raise RoomError("room_full", "the room is full")

    def waiting_list(self, room: Room) -> Message:
        """The ``waiting_list`` event hosts get: who waits, by id and display name."""
        return {
            "type": "waiting_list",
            "waiting": [p.describe_waiting() for p in room.waiting.values()],
        }

    def notify_waiting(self, room: Room) -> None:
        """Tell the room's hosts and admins who is waiting now."""
        moderators = room.moderators()
        if moderators:
            message = self.waiting_list(room)
            for moderator in moderators:
                moderator.send(message)

    def admit(self, room: Room, participant_id: str, *, notify: bool = True) -> bool:
        """Admit a held participant (the waiting room's "admit"); False if none is held.
        Hosts get the new waiting list unless ``notify`` is off (admitting many at once)."""
        participant = room.waiting.pop(participant_id, None)
        if participant is None:
            return False
        self._admit(participant)
        if notify:
            self.notify_waiting(room)
        return True

    def _joined(self, participant: Participant, *, resumed: bool) -> Message:
        """The ``joined`` message: who is there, what this participant may do, ICE servers."""
        room = participant.room
        policy = self.policies.get(room.name)
        message: Message = {
            "type": "joined",
            "protocol": 1,
            "room": room.name,
            "participant": participant.describe(),
            "grants": grant_names(participant.grants),
            "participants": [
                *(p.describe() for p in room.participants.values() if p is not participant),
                *(self._describe_remote(room, pid) for pid in room.remote),
            ],
            "e2ee_required": policy.e2ee_required,
            "policy": policy.public(),
            "resumed": resumed,
            "codecs": {kind: list(names) for kind, names in ROOM_CODECS.items()},
        }
        if self.ice_servers is not None:
            message["ice_servers"] = self.ice_servers()
        if self.fallback_nodes is not None:
            message["nodes"] = self.fallback_nodes()
        return message

    def _admit(self, participant: Participant) -> None:
        room = participant.room
        # One identity, one seat: its seat on another shard is this one's now. That shard ends
        # its session when it hears ``seat_taken``; a shard that died (a lost node, until its
        # lease lapses) never answers, so its stale entry goes here at once, not seconds later.
        self._drop_remote_seats(room, participant.identity, keep=None)
        message = self._joined(participant, resumed=False)
        room.participants[participant.id] = participant
        participant.state = ParticipantState.JOINED
        participant.send(message)
        room.broadcast(
            {"type": "participant_joined", "participant": participant.describe()},
            exclude=participant,
        )
        self._share(room, {"type": "participant_joined", "participant": _untracked(participant)})
        self._share(
            room,
            {"type": "seat_taken", "identity": participant.identity, "participant": participant.id},
        )
        if participant.moderator and room.waiting:
            participant.send(self.waiting_list(room))

    # -- resuming (docs/protocol.md, "Reconnecting") -------------------------------------------

    def detach(self, participant: Participant, *, now: float) -> None:
        """Its signaling dropped without a ``leave``: keep its place (transport, tracks,
        subscriptions, mutes) for ``resume_grace_s`` so a rejoin with the same identity
        resumes it; without grace, while draining, or if it was not admitted, it leaves."""
        if (
            self.resume_grace_s <= 0
            or self.draining
            or participant.state is not ParticipantState.JOINED
        ):
            self.leave(participant, now=now)
            return
        participant.sink = _detached_sink
        participant.on_close = None
        participant.detached_until = now + self.resume_grace_s
        self._detached.add(participant)

    def _resume(self, participant: Participant, claims: JoinClaims, sink: Sink) -> None:
        """A rejoin within the grace period: the same participant, now on ``sink``. Others
        see no leave or join; the client is told ``resumed`` and may ICE-restart its
        connection, or offer a new one (:meth:`offer` then replaces the transport)."""
        callback = participant.on_close
        participant.on_close = None
        if callback is not None:  # its old connection, if the server had not noticed the drop
            callback(CLOSE_REPLACED, "resumed elsewhere")
        participant.sink = sink
        participant.detached_until = None
        self._detached.discard(participant)
        participant.resumed = True
        participant.grants = claims.grants
        participant.send(self._joined(participant, resumed=True))
        if participant.moderator and participant.room.waiting:
            participant.send(self.waiting_list(participant.room))

    def expire_detached(self, now: float) -> None:
        """Participants whose grace period passed without a rejoin leave now."""
        for participant in [p for p in self._detached if p.detached_until is None]:
            self._detached.discard(participant)
        for participant in list(self._detached):
            until = participant.detached_until
            if until is not None and now >= until:
                self.leave(participant, now=now)

    def _drop_peer(self, participant: Participant, now: float, reason: str) -> None:
        """Forget the participant's transport and everything on it (tracks, subscriptions)."""
        peer = participant.peer
        if peer is None:
            return
        for mid in list(peer.publications):
            self._unpublish(participant, mid)
        for mid in list(peer.subscriptions):
            self._unsubscribe(peer, mid)
        participant.peer = None
        participant.setup = None
        participant.fingerprints = ()
        peer.on_wake = None
        peer.on_layers_changed = None
        self._owners.pop(peer, None)
        self._dirty.discard(peer)
        self._timers.cancel(peer)
        peer.on_state_change = None
        peer.on_audio_level = None
        self.port.close_transport(peer.transport, now, reason)

    def leave(self, participant: Participant, *, now: float) -> None:
        """Remove ``participant``: every route, cache and timer it had is freed."""
        if participant.state is ParticipantState.LEFT:
            return
        was_joined = participant.state is ParticipantState.JOINED
        was_waiting = participant.state is ParticipantState.WAITING
        participant.state = ParticipantState.LEFT
        room = participant.room
        room.waiting.pop(participant.id, None)
        room.participants.pop(participant.id, None)
        participant.detached_until = None
        self.chat.forget(participant)
        self._detached.discard(participant)
        self._drop_peer(participant, now, "left")
        room.speakers.remove(participant.id)
        if was_joined:
            room.broadcast({"type": "participant_left", "participant": participant.id})
            self._share(room, {"type": "participant_left", "participant": participant.id})
        if was_waiting:
            self.notify_waiting(room)
        if room.empty and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._close_shard(room)
            if self.homes is not None:
                self.homes.closed(room.name)

    def end(self, participant: Participant, code: int, reason: str, *, now: float) -> None:
        """The server ends ``participant`` (replaced, refused, media failed)."""
        callback = participant.on_close
        participant.on_close = None
        self.leave(participant, now=now)
        if callback is not None:
            callback(code, reason)

    # -- offers ---------------------------------------------------------------------------------

    def offer(
        self,
        participant: Participant,
        sdp: str,
        now: float,
        *,
        names: Mapping[str, str] | None = None,
        subscriptions: Mapping[str, str] | None = None,
        sources: Mapping[str, str] | None = None,
        heights: Mapping[str, int] | None = None,
        validate_only: bool = False,
    ) -> str:
        """Answer a (re)offer: its send sections are publications, bound recv sections are
        subscriptions (docs/protocol.md, "Media model"). Returns the answer SDP (``""`` and
        no change at all with ``validate_only``)."""
        if participant.state is not ParticipantState.JOINED:
            raise not_joined(participant)
        names = names or {}
        subscriptions = subscriptions or {}
        sources = sources or {}
        heights = heights or {}
        room = participant.room
        try:
            offer = SessionDescription.parse(sdp)
            negotiated = negotiate(offer, prefs=ROOM_PREFERENCES, data_channels=True)
        except (ParseError, NegotiationError) as exc:
            raise RoomError("bad_offer", str(exc)) from None
        peer = participant.peer
        # -- validate everything before changing anything --
        fingerprints = tuple(
            (f.algorithm.lower(), f.value.upper()) for f in negotiated.fingerprints
        )
        replaced = peer
        if peer is not None and not set(fingerprints) & set(participant.fingerprints):
            if not participant.resumed:
                raise RoomError("bad_offer", "the DTLS fingerprint changed; start a new session")
            peer = None  # a resumed client's new connection replaces the old one
        by_mid = {m.mid: m for m in negotiated.media}
        publishing = {
            m.mid: m
            for m in negotiated.media
            if m.direction in (Direction.SENDONLY, Direction.SENDRECV)
        }
        for mid in subscriptions:
            media = by_mid.get(mid)
            if media is None or media.direction is not Direction.RECVONLY:
                raise RoomError(
                    "bad_message",
                    f"subscriptions: mid {mid[:32]!r} is not an accepted recvonly section",
                )
        new_pubs = [mid for mid in publishing if peer is None or mid not in peer.publications]
        if new_pubs and not participant.grants & Grant.PUBLISH:
            raise RoomError("forbidden", "this token may not publish")
        if len(publishing) > self.limits.max_publications:
            raise RoomError("bad_offer", f"at most {self.limits.max_publications} published tracks")
        for mid in new_pubs:
            codec = publishing[mid].codecs[0]
            if not forwardable(codec.name):  # not reached: negotiation rejected the m-line
                raise RoomError("bad_offer", f"cannot forward {codec.name} publications")
            source = sources.get(mid)
            if source is not None and source not in _SOURCES_BY_KIND[publishing[mid].kind]:
                raise RoomError(
                    "bad_message",
                    f"tracks.{mid[:32]}.source {source!r} is not a {publishing[mid].kind} source",
                )
        bound: dict[str, tuple[Publication, NegotiatedCodec]] = {}
        if subscriptions and not participant.grants & Grant.SUBSCRIBE:
            raise RoomError("forbidden", "this token may not subscribe")
        if len(subscriptions) > self.limits.max_subscriptions:
            raise RoomError("bad_offer", f"at most {self.limits.max_subscriptions} subscriptions")
        for mid, track_id in subscriptions.items():
            publication = room.publications.get(track_id)
            if publication is None:
                if room.track_ended(track_id):
                    continue  # raced track_unpublished: answered inactive
                raise RoomError(
                    "unknown_track", f"no track {track_id[:32]!r} in this room", track_id
                )
            if publication.participant_id == participant.id:
                raise RoomError("bad_message", "cannot subscribe to your own track")
            media = by_mid[mid]
            if media.kind != publication.kind:
                raise RoomError(
                    "bad_offer",
                    f"mid {mid[:32]!r} is {media.kind} but the track is {publication.kind}",
                )
            match = _matching_codec(media, publication.codec)
            if match is None:
                raise RoomError(
                    "bad_offer", f"mid {mid[:32]!r} does not accept {publication.codec.name}"
                )
            bound[mid] = (publication, match)
        if validate_only:
            return ""
        # -- apply --
        if replaced is not None and peer is None:
            self._drop_peer(participant, now, "replaced")
        participant.resumed = False
        if peer is None:
            peer = self._create_peer(participant, negotiated, fingerprints, now)
        elif negotiated.remote_ufrag != peer.transport.ice.remote_ufrag:
            self.port.restart_ice(peer.transport, negotiated.remote_ufrag)
        dc = negotiated.data_channel
        if dc is not None and peer.transport.data_channels is None:
            association = SctpAssociation(
                server=peer.transport.dtls_role is DtlsRole.SERVER,
                remote_port=dc.remote_port,
                remote_max_message_size=dc.remote_max_message_size or MAX_CHAT_CHANNEL_MESSAGE,
                drops=self.chat.channel_drops,
            )
            peer.transport.enable_data_channels(
                DataChannels(association),
                lambda _t, event, now: self.chat.on_channel_event(participant, event, now),
            )
        # One id space per BUNDLE transport (RFC 8843 §9.2): the union of every section's.
        peer.set_extensions({i: u for m in negotiated.media for i, u in m.extensions.items()})
        for mid in list(peer.publications):
            if mid not in publishing:
                self._unpublish(participant, mid)
        for mid in list(peer.subscriptions):
            sub = peer.subscriptions[mid]
            target = bound.get(mid)
            if target is None or target[0] is not sub.publication:
                self._unsubscribe(peer, mid)
        for mid in new_pubs:
            self._publish(
                participant,
                peer,
                publishing[mid],
                names.get(mid),
                sources.get(mid),
                heights.get(mid),
            )
        taken = {s for m in negotiated.media for s in m.ssrcs}
        for existing in peer.subscriptions.values():
            taken.update(x for x in (existing.out_ssrc, existing.rtx_ssrc) if x is not None)
        bundle_ids = {i for m in negotiated.media for i in m.extensions}
        for mid, (publication, codec) in bound.items():
            kept = peer.subscriptions.get(mid)
            if kept is not None:
                # The BUNDLE's id space may have grown: re-derive the hidden ids.
                kept.extensions = kept.kernels.ExtensionRewriter(
                    publication.extensions, _subscriber_extensions(by_mid[mid], bundle_ids)
                )
                if publication.on_fanout is not None:
                    publication.on_fanout(publication)  # the data plane takes the new rewriter
            else:
                self._subscribe(
                    participant, peer, by_mid[mid], publication, codec, taken, bundle_ids, now
                )
        return self._answer(participant, peer, offer, negotiated)

    def _requires_e2ee(self, room: Room) -> bool:
        """Whether ``room``'s policy requires end-to-end encryption (the chat relay asks)."""
        return self.policies.get(room.name).e2ee_required

    def _send_chat(self, receiver: Participant, label: str, envelope: str, now: float) -> bool:
        """Send one chat envelope on ``receiver``'s data channel ``label``; False if it has none."""
        peer = receiver.peer
        channels = peer.transport.data_channels if peer is not None else None
        if peer is None or channels is None:
            return False
        channel = channels.by_label(label)
        if channel is None:
            return False
        out = channels.send(channel, envelope.encode("utf-8"), binary=False, now=now)
        return peer.transport.send_channel(out)

    def check_offer(
        self, claims: JoinClaims, sdp: str, *, subscriptions: Mapping[str, str] | None = None
    ) -> None:
        """Raise the :class:`RoomError` that :meth:`offer` would raise for the first offer
        of a participant joining with ``claims``, without joining or changing anything.

        WHIP and WHEP join and offer in one request; checking first keeps a refused request
        invisible (no join/leave shown to the room, no participant with the same identity
        replaced).
        """
        probe = Participant(
            id="",
            identity=claims.identity,
            name=claims.name,
            grants=claims.grants,
            room=self.rooms.get(claims.room) or Room(claims.room),
            state=ParticipantState.JOINED,
        )
        self.offer(probe, sdp, 0.0, subscriptions=subscriptions, validate_only=True)

    def _create_peer(
        self,
        participant: Participant,
        negotiated: NegotiatedSession,
        fingerprints: tuple[tuple[str, str], ...],
        now: float,
    ) -> Peer:
        try:
            transport = self.port.create_transport(
                remote_ufrag=negotiated.remote_ufrag,
                remote_fingerprints=list(fingerprints),
                dtls_role=DtlsRole.SERVER if negotiated.setup is Setup.PASSIVE else DtlsRole.CLIENT,
                now=now,
                source=participant.source,
                identity=participant.identity,
            )
        except CapacityError as exc:
            raise RoomError("server_busy", f"server busy: {exc}") from None
        room = participant.room
        peer = Peer(
            participant.id,
            transport,
            secrets.randbits(32) or 1,
            extensions={},
            on_audio_level=room.speakers.observe,
            on_state=lambda p, state, now: self._transport_state(participant, state, now=now),
            stats=self.stats,
            dataplane=self.dataplane,
            pacing=self.pacing,
        )
        peer.on_stream_state = lambda sub, state, reason: participant.send(
            stream_state_event(sub, state, reason)
        )
        peer.on_wake = self._touch
        peer.on_layers_changed = lambda publication: self._layers_changed(room, publication)
        self._owners[peer] = participant
        transport.set_listener(peer)
        participant.peer = peer
        participant.setup = negotiated.setup
        participant.fingerprints = fingerprints
        return peer

    def _transport_state(
        self, participant: Participant, state: TransportState, *, now: float
    ) -> None:
        ended = state in (TransportState.FAILED, TransportState.CLOSED)
        if ended and participant.state is not ParticipantState.LEFT:
            self.end(participant, CLOSE_MEDIA_FAILED, "media transport ended", now=now)

    def _publish(
        self,
        participant: Participant,
        peer: Peer,
        media: NegotiatedMedia,
        name: str | None,
        source: str | None,
        height: int | None = None,
    ) -> None:
        publication = Publication(
            id=new_id("TR"),
            participant_id=participant.id,
            kind=media.kind,
            name=(name or ("microphone" if media.kind == "audio" else "camera"))[:64],
            mid=media.mid,
            codec=media.codecs[0],
            codecs=media.codecs,
            extensions=dict(media.extensions),
            rids=tuple(r.rid for r in media.simulcast) if media.simulcast else media.rids,
            kernels=self.kernels,
            source=source or "",
            height=height if media.kind == "video" else None,
        )
        publication.keyframe_requester = peer.request_keyframe
        room = participant.room

        def layers_changed(pub: Publication) -> None:
            event = {"type": "track_updated", "track": pub.describe()}
            room.broadcast(event)
            self._share(room, event)

        publication.on_layers = layers_changed
        peer.add_publication(publication, _declared_streams(media))
        room.publications[publication.id] = publication
        room.broadcast({"type": "track_published", "track": publication.describe()})
        self._share(
            room,
            {
                "type": "track_published",
                "track": publication.describe(),
                "relay": relay_description(publication),
            },
        )

    def _unpublish(self, participant: Participant, mid: str) -> None:
        peer = participant.peer
        assert peer is not None
        publication = peer.remove_publication(mid)
        if publication is None:
            return
        room = participant.room
        for sub, _transport in publication.fanout:
            other = room.participants.get(sub.subscriber_id)
            if other is not None and other.peer is not None:
                other.peer.remove_subscription(sub.mid)
                self._wake(other.peer)
        if self.remote_tracks is not None:
            self.remote_tracks.ended(publication)  # the flows relaying it to other shards
        publication.fanout = ()
        publication.keyframe_requester = None
        publication.on_layers = None
        room.forget_track(publication.id)
        room.broadcast({"type": "track_unpublished", "track": publication.id})
        self._share(room, {"type": "track_unpublished", "track": publication.id})

    def _subscribe(
        self,
        participant: Participant,
        peer: Peer,
        media: NegotiatedMedia,
        publication: Publication,
        codec: NegotiatedCodec,
        taken: set[int],
        bundle_ids: set[int],
        now: float,
    ) -> None:
        rtx_pt = codec.rtx_payload_type if publication.video else None
        # The rewriter hides the publisher's mid/rid/transport-cc under an id this section did
        # not negotiate; it must be free in the whole BUNDLE too (RFC 8843 §9.2: one id space
        # per transport), or the subscriber parses e.g. a 1-byte mid as its abs-send-time.
        extensions = _subscriber_extensions(media, bundle_ids)
        pt_map, rtx_map = _payload_type_maps(media, publication, codec)
        sub = Subscription(
            new_id("SU"),
            publication,
            participant.id,
            media.mid,
            out_ssrc=new_ssrc(taken),
            payload_type=codec.payload_type,
            extensions=extensions,
            rtx_ssrc=new_ssrc(taken) if rtx_pt is not None else None,
            rtx_payload_type=rtx_pt,
            payload_types=pt_map,
            rtx_payload_types=rtx_map if rtx_pt is not None else None,
            kernels=self.kernels,
        )
        peer.add_subscription(sub)
        publication.add_subscriber(sub, peer.transport)
        self._wake(peer)  # allocate it at once
        if publication.force_muted:
            sub.set_held(True)
        # Start on a keyframe at once rather than waiting for the publisher's next one; before
        # the subscriber's transport has keys it would be lost, and the peer asks once they
        # arrive (Peer.on_state).
        if peer.transport.has_srtp:
            sub.request_start_keyframe(now)

    def _unsubscribe(self, peer: Peer, mid: str) -> None:
        sub = peer.remove_subscription(mid)
        if sub is not None:
            sub.publication.remove_subscriber(sub)
            self._wake(peer)  # its budget is free for the others

    def _answer(
        self,
        participant: Participant,
        peer: Peer,
        offer: SessionDescription,
        negotiated: NegotiatedSession,
    ) -> str:
        streams = {
            mid: SendStream(
                sub.out_ssrc,
                sub.rtx_ssrc,
                participant.cname,
                sub.publication.participant_id,
                sub.publication.id,
            )
            for mid, sub in peer.subscriptions.items()
        }
        local = peer.transport.ice.local_credentials
        fingerprint = self.port.certificate.fingerprint
        answer = build_answer(
            offer,
            negotiated,
            ice=(local.ufrag, local.pwd),
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup=participant.setup,
            candidates=self.candidates,
            send_streams=streams,
        )
        return answer.serialize()

    # -- other requests -------------------------------------------------------------------------

    def unsubscribe(self, participant: Participant, track_id: str) -> None:
        """Stop forwarding ``track_id`` to ``participant`` (its transceiver stays bound)."""
        peer = self._joined_peer(participant)
        if peer is not None:
            for mid, sub in list(peer.subscriptions.items()):
                if sub.publication.id == track_id:
                    self._unsubscribe(peer, mid)
                    return
        raise RoomError("unknown_track", f"not subscribed to {track_id[:32]!r}")

    def set_preferences(
        self,
        participant: Participant,
        track_id: str,
        *,
        max_spatial: int | None,
        max_temporal: int | None,
        paused: bool,
        pinned: bool = False,
    ) -> None:
        """A subscriber's layer caps, visibility and pin for one of its subscriptions."""
        peer = self._joined_peer(participant)
        for sub in peer.subscriptions.values() if peer else []:
            if sub.publication.id == track_id:
                sub.set_preferences(max_spatial, max_temporal, paused)
                sub.pinned = pinned
                if peer is not None:
                    self._wake(peer)
                return
        raise RoomError("unknown_track", f"not subscribed to {track_id[:32]!r}")

    def set_muted(self, participant: Participant, track_id: str, muted: bool) -> None:
        """The publisher says one of its tracks is muted (or not); everyone is told."""
        self._joined_peer(participant)
        room = participant.room
        publication = room.publications.get(track_id)
        if publication is None:
            raise RoomError("unknown_track", f"no track {track_id[:32]!r} in this room")
        if publication.participant_id != participant.id:
            raise RoomError("forbidden", "only the publisher can mute its track")
        if publication.force_muted and not muted:
            raise RoomError(
                "force_muted", "a host muted this track; only a host can lift that", track_id
            )
        if publication.muted != muted:
            publication.muted = muted
            event = {"type": "track_muted", "track": track_id, "muted": muted}
            room.broadcast(event)
            self._share(room, event)

    def set_force_muted(
        self, room: Room, publication: Publication, muted: bool, *, shared: bool = False
    ) -> bool:
        """A host stops (or resumes) forwarding of ``publication``; everyone, the publisher
        included, is told (on every shard of the room, unless this came from one:
        ``shared``). Lifting it leaves the track muted until the publisher unmutes."""
        if publication.force_muted == muted:
            return False
        publication.force_muted = muted
        publication.muted = publication.muted or muted
        for sub, _transport in publication.fanout:
            sub.set_held(muted)
            subscriber = room.participants.get(sub.subscriber_id)
            if subscriber is not None and subscriber.peer is not None:
                self._wake(subscriber.peer)
        event: Message = {
            "type": "track_muted",
            "track": publication.id,
            "muted": publication.muted,
            "force_muted": muted,
        }
        room.broadcast(event)
        if not shared:
            self._share(room, event)
        return True

    def policy_changed(
        self, room_name: str, old: RoomPolicy, new: RoomPolicy, *, shared: bool = False
    ) -> int:
        """Apply a policy change to a running meeting: everyone admitted hears of it, and
        switching the waiting room off admits whoever waits. Returns how many were admitted.
        The room's other shards are told (unless this came from one), even when the room
        has nobody here: the change was saved here, they only take it."""
        if not shared and self.bus is not None:
            own = self.policies.has_own(room_name)
            self.bus.publish(
                room_name,
                {"type": "policy", "policy": policy_to_wire(new) if own else None},
            )
        room = self.rooms.get(room_name)
        if room is None:
            return 0
        if old.public() != new.public():
            room.broadcast(
                {"type": "policy", "policy": new.public(), "e2ee_required": new.e2ee_required}
            )
        admitted = 0
        if old.waiting_room and not new.waiting_room and self.admission is None:
            for participant_id in list(room.waiting):
                admitted += int(self.admit(room, participant_id, notify=False))
            if admitted:
                self.notify_waiting(room)
        return admitted

    def _joined_peer(self, participant: Participant) -> Peer | None:
        if participant.state is not ParticipantState.JOINED:
            raise not_joined(participant)
        return participant.peer

    # -- timers ---------------------------------------------------------------------------------

    def expire_waiting(self, now: float) -> None:
        """End participants who have waited longer than ``rooms.waiting_timeout_s``."""
        timeout = self.policies.defaults.waiting_timeout_s
        for room in list(self.rooms.values()):
            for participant in list(room.waiting.values()):
                if now - participant.waiting_since >= timeout:
                    self.end(
                        participant, CLOSE_WAIT_TIMEOUT, "nobody admitted you in time", now=now
                    )

    def _wake(self, peer: Peer) -> None:
        """An event changed what ``peer`` allocates: run it (and allocate) at once."""
        peer.wake()

    def _layers_changed(self, room: Room, publication: Publication) -> None:
        """A publisher started or stopped sending a layer: its subscribers re-allocate now
        (the layer they wait for may be gone, or a better one back)."""
        for sub, _transport in publication.fanout:
            subscriber = room.participants.get(sub.subscriber_id)
            if subscriber is not None and subscriber.peer is not None:
                self._wake(subscriber.peer)

    def _touch(self, peer: Peer, at: float) -> None:
        """``peer``'s deadline may have moved: recompute it at a :meth:`poll` by ``at``."""
        flush = self._timers.deadline(_FLUSH)
        if peer in self._dirty and flush is not None and flush <= at:
            return
        self._dirty.add(peer)
        self._arm(_FLUSH, at)

    def _arm(self, key: object, at: float) -> None:
        before = self._timers.next_deadline()
        self._timers.advance(key, at)
        if (before is None or at < before) and self.on_timer is not None:
            self.on_timer(at)

    def next_timer(self) -> float | None:
        """When :meth:`poll` next has work (None: not until an event)."""
        return self._timers.next_deadline()

    def poll(self, now: float, wallclock: float) -> None:
        """Run the timers due at ``now``: the peers' (RTCP, allocation, probing), the rooms'
        speaker detection and the waiting room's expiry; then re-arm each from its
        ``next_timer()``. A peer is run only when one of its own deadlines passed or an
        event woke it, so the cost follows what happens, not how many participants there
        are."""
        timers = self._timers
        dataplane = self.dataplane
        dirty, self._dirty = self._dirty, set()
        try:
            # First what the data plane forwarded since the last run: the peers' receive
            # statistics, NACK and TWCC state must include it before they report.
            if dataplane is not None:
                dataplane.replay(self.stats, touched=dirty)
        except Exception:  # pragma: no cover - a bug must not stop every room
            log.exception("internal error replaying the data plane's log")
        self._reschedule(dirty, now)
        self._run_due(now, wallclock)
        for _ in range(CASCADE_PASSES):
            # What the runs woke (a layer that stopped wakes its subscribers): this run too.
            if not self._dirty:
                break
            dirty, self._dirty = self._dirty, set()
            self._reschedule(dirty, now)
            self._run_due(now, wallclock)
        if not self._dirty:
            timers.cancel(_FLUSH)
        if dataplane is not None and dataplane.stream_count:
            timers.schedule(_REPLAY, now + REPLAY_INTERVAL)
        else:
            timers.cancel(_REPLAY)

    def _run_due(self, now: float, wallclock: float) -> None:
        """Run every owner due at ``now`` and re-arm the peers that ran."""
        timers = self._timers
        ran: list[Peer] = []
        for key in timers.pop_due(now):
            if isinstance(key, Peer):
                ran.append(key)
                self.peer_runs += 1
                try:
                    key.poll(now, wallclock)
                except Exception:  # pragma: no cover - a bug must not stop every room
                    log.exception("internal error in a peer's timers")
            elif isinstance(key, Room):
                if self.rooms.get(key.name) is key and key.participants:
                    key.poll_speakers(now)
                    timers.schedule(key, now + SPEAKER_INTERVAL)
            elif key == _HOUSEKEEPING:
                self.expire_waiting(now)
                self.expire_detached(now)
                timers.schedule(_HOUSEKEEPING, now + HOUSEKEEPING_INTERVAL)
        self._reschedule(ran, now)

    def _reschedule(self, peers: Iterable[Peer], now: float) -> None:
        """Arm each of ``peers`` from its ``next_timer()`` (and its room's speaker detection)."""
        timers, owners, rooms = self._timers, self._owners, self.rooms
        for peer in peers:
            participant = owners.get(peer)
            if participant is None:
                continue
            try:
                timers.schedule(peer, peer.next_timer())
            except Exception:  # pragma: no cover - a bug must not stop every room
                log.exception("internal error in a peer's timers")
            room = participant.room
            if room not in timers and rooms.get(room.name) is room:
                timers.schedule(room, now + SPEAKER_INTERVAL)

    def participant_count(self) -> int:
        """Admitted participants over all rooms."""
        return sum(len(r.participants) for r in self.rooms.values())

    # -- the room's other shards (sfu/room/shards.py) -------------------------------------------

    def _share(self, room: Room, event: Message) -> None:
        """Tell the room's other shards (nothing while rooms are not spread)."""
        if self.bus is not None:
            self.bus.publish(room.name, event)

    def open_shard(self, name: str) -> Room | None:
        """An empty shard of spread room ``name`` here (``shard_opened`` tells the others,
        whose state then arrives over the bus), or the room if it is already here. A WHEP
        viewer placed on a shard waits for the publisher's tracks this way before it joins.
        None when rooms are not spread here, the server drains, or at the room limit."""
        room = self.rooms.get(name)
        if room is not None or self.bus is None:
            return room
        if self.draining or len(self.rooms) >= self.limits.max_rooms:
            return None
        room = Room(name)
        self.rooms[name] = room
        if self.homes is not None:
            self.homes.opened(name)  # a cluster node listens to the room's channel first
        self._share(room, {"type": "shard_opened"})
        return room

    def close_empty_shard(self, room: Room) -> None:
        """Forget a shard :meth:`open_shard` opened that nobody joined after all."""
        if room.empty and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
            self._close_shard(room)
            if self.homes is not None:
                self.homes.closed(room.name)

    def _share_chat(self, room: Room, label: str, envelope: str) -> None:
        self._share(room, {"type": "chat", "label": label, "envelope": envelope})

    def _describe_remote(self, room: Room, participant_id: str) -> Message:
        """A participant of another shard as the room protocol shows it, with its tracks."""
        tracks = [
            p.describe() for p in room.publications.values() if p.participant_id == participant_id
        ]
        return {**room.remote[participant_id], "tracks": tracks}

    def share_state(self, room_name: str) -> None:
        """Tell the room's other shards everything of this one again (the bus lost events:
        they may have missed some, or taken this shard for dead meanwhile)."""
        room = self.rooms.get(room_name)
        if room is not None:
            self._share_state(room)

    def _share_state(self, room: Room) -> None:
        """Everything of this shard another one must know (it just opened, or lost the bus),
        ending with the roster: who and which tracks are here now, so a shard that missed
        some leaves while the bus was away drops what is gone."""
        if self.policies.has_own(room.name):
            policy = policy_to_wire(self.policies.get(room.name))
            self._share(room, {"type": "policy", "policy": policy})
        roster: list[str] = []
        tracks: list[str] = []
        for participant in room.participants.values():
            roster.append(participant.id)
            if participant.peer is not None:
                tracks.extend(p.id for p in participant.peer.publications.values())
            self._share(
                room, {"type": "participant_joined", "participant": _untracked(participant)}
            )
            if participant.peer is None:
                continue
            for publication in participant.peer.publications.values():
                self._share(
                    room,
                    {
                        "type": "track_published",
                        "track": publication.describe(),
                        "relay": relay_description(publication),
                    },
                )
        self._share(room, {"type": "shard_roster", "participants": roster, "tracks": tracks})

    def _share_bans(self, room: Room, now: float) -> None:
        """The room's bans, for a shard that just opened (a banned identity's rejoin may be
        placed there): ``bans`` events of at most :data:`BANS_PER_EVENT` (identity, seconds
        left, rounded up) each, the latest :data:`MAX_SHARED_BANS` of them."""
        held = self.bans.of_room(room.name, now)[:MAX_SHARED_BANS]
        for start in range(0, len(held), BANS_PER_EVENT):
            chunk = held[start : start + BANS_PER_EVENT]
            bans = [[identity, min(MAX_BAN_S, math.ceil(until - now))] for identity, until in chunk]
            self._share(room, {"type": "bans", "bans": bans})

    def _apply_bans(self, room: Room, event: Message, now: float) -> None:
        """Another shard's ``bans`` (this shard just opened): each identity barred here too."""
        bans = event["bans"]
        if not isinstance(bans, list) or len(bans) > BANS_PER_EVENT:
            raise ValueError("bans")
        taken: list[tuple[str, int]] = []
        for entry in bans:  # all checked before any is taken
            if not isinstance(entry, list) or len(entry) != 2:
                raise ValueError("ban")
            identity, ban_s = _shared_identity(entry[0]), entry[1]
            if identity is None or type(ban_s) is not int or not 0 < ban_s <= MAX_BAN_S:
                raise ValueError("ban")
            taken.append((identity, ban_s))
        for identity, ban_s in taken:
            held = self.bans.until(room.name, identity)
            if held is None or held < now + ban_s - 1:  # known already: no write-through again
                self.bans.ban(room.name, identity, now + ban_s, now)

    def _close_shard(self, room: Room) -> None:
        """The last local participant left: stop relaying the other shards' tracks here."""
        for publication in list(room.publications.values()):
            if publication.participant_id in room.remote and self.remote_tracks is not None:
                self.remote_tracks.close(publication)
        room.remote.clear()
        room.remote_shard.clear()
        room.remote_admins.clear()

    def _remote_unpublished(self, room: Room, publication: Publication) -> None:
        """A track of another shard ended: its local subscriptions end too."""
        for sub, _transport in publication.fanout:
            other = room.participants.get(sub.subscriber_id)
            if other is not None and other.peer is not None:
                other.peer.remove_subscription(sub.mid)
                self._wake(other.peer)
        publication.fanout = ()
        if self.remote_tracks is not None:
            self.remote_tracks.close(publication)
        room.forget_track(publication.id)
        room.broadcast({"type": "track_unpublished", "track": publication.id})

    def _drop_remote_seats(self, room: Room, identity: object, *, keep: object) -> None:
        """Other shards' participants of ``identity`` (but ``keep``) leave here: the identity
        took a seat elsewhere, and their own shard, if alive, ends them too."""
        stale = [
            pid
            for pid, described in room.remote.items()
            if described.get("identity") == identity and pid != keep
        ]
        for pid in stale:
            self._remote_left(room, pid)

    def _remote_left(self, room: Room, pid: str) -> None:
        """A participant of another shard left (or its shard is gone)."""
        for track in [p for p in room.publications.values() if p.participant_id == pid]:
            self._remote_unpublished(room, track)
        del room.remote[pid]
        room.remote_shard.pop(pid, None)
        room.remote_admins.discard(pid)
        room.speakers.remove(pid)
        room.broadcast({"type": "participant_left", "participant": pid})

    def shard_closed(self, origin: int, *, now: float) -> None:
        """Worker ``origin`` is gone (its process died): its participants leave every room
        here (they reconnect, and come back as new joins)."""
        for room in list(self.rooms.values()):
            for pid in [p for p, shard in room.remote_shard.items() if shard == origin]:
                self._remote_left(room, pid)

    def on_shared(self, room_name: str, origin: int, event: object, *, now: float) -> None:
        """An event of ``room_name``'s shard on worker ``origin`` (``sfu.room.shards``):
        applied here and shown to this shard's participants; malformed ones are counted.
        A ``policy`` is taken even when the room has nobody here (its next join obeys it)."""
        if isinstance(event, dict) and event.get("type") == "policy":
            try:
                self._apply_policy(room_name, event)
            except (KeyError, TypeError, ValueError):
                self.bus_refused += 1
            return
        room = self.rooms.get(room_name)
        if room is None:
            # No participant of that room here: nothing to show or relay, but a ban holds
            # for the room's next joiners here too.
            if isinstance(event, dict) and event.get("type") == "moderate":
                try:
                    self._shared_ban(room_name, event, _shared_identity(event.get("identity")), now)
                except (KeyError, TypeError, ValueError):
                    self.bus_refused += 1
            return
        if not isinstance(event, dict) or event.get("type") not in SHARED_EVENTS:
            self.bus_refused += 1
            return
        try:
            self._apply_shared(room, origin, event, now)
        except (KeyError, TypeError, ValueError):
            self.bus_refused += 1

    def _apply_shared(self, room: Room, origin: int, event: Message, now: float) -> None:
        kind = event["type"]
        if kind == "shard_opened":
            self._share_state(room)
            self._share_bans(room, now)
        elif kind == "shard_roster":
            self._apply_roster(room, origin, event)
        elif kind == "participant_joined":
            described = event["participant"]
            pid = described["id"]
            if not isinstance(pid, str) or pid in room.participants or pid in room.remote:
                return
            room.remote_shard[pid] = origin
            if described.get("admin") is True:
                room.remote_admins.add(pid)
            room.remote[pid] = {
                "id": pid,
                "identity": str(described["identity"]),
                "name": described.get("name"),
                "kind": str(described.get("kind", "websocket")),
            }
            room.broadcast(
                {"type": "participant_joined", "participant": self._describe_remote(room, pid)}
            )
        elif kind == "participant_left":
            pid = event["participant"]
            if pid in room.remote:
                self._remote_left(room, pid)
        elif kind == "track_published":
            standin = publication_from_relay(event["relay"], kernels=self.kernels)
            if standin.id in room.publications or standin.participant_id not in room.remote:
                return
            if self.remote_tracks is None or not self.remote_tracks.open(
                origin, standin, room.speakers.observe
            ):
                return
            room.publications[standin.id] = standin
            room.broadcast({"type": "track_published", "track": standin.describe()})
        elif kind == "track_unpublished":
            publication = room.publications.get(event["track"])
            if publication is not None and publication.participant_id in room.remote:
                self._remote_unpublished(room, publication)
        elif kind == "track_muted":
            publication = room.publications.get(event["track"])
            if publication is None:
                return
            if "force_muted" in event:
                self.set_force_muted(room, publication, bool(event["force_muted"]), shared=True)
            elif publication.participant_id in room.remote:
                publication.muted = bool(event["muted"])
                room.broadcast(
                    {"type": "track_muted", "track": publication.id, "muted": publication.muted}
                )
        elif kind == "track_updated":
            track = event["track"]
            publication = room.publications.get(track["id"])
            if publication is not None and publication.participant_id in room.remote:
                room.broadcast({"type": "track_updated", "track": publication.describe()})
        elif kind == "chat":
            label, envelope = event["label"], event["envelope"]
            if isinstance(label, str) and isinstance(envelope, str):
                self.chat.deliver_shared(room, label, envelope, now)
        elif kind == "moderate":
            self._moderated(room, event, now)
        elif kind == "bans":
            self._apply_bans(room, event, now)
        elif kind == "seat_taken":
            identity, pid = event["identity"], event["participant"]
            for local in [p for p in room.participants.values() if p.identity == identity]:
                if local.id != pid:
                    self.end(local, CLOSE_REPLACED, "joined from elsewhere", now=now)
            self._drop_remote_seats(room, identity, keep=pid)

    def _apply_policy(self, room_name: str, event: Message) -> None:
        """Another shard changed and saved the room's policy: take it, and apply it to the
        meeting here if there is one."""
        wire = event["policy"]
        policy = None if wire is None else policy_from_wire(wire)
        before, after = self.policies.apply_shared(room_name, policy)
        self.policy_changed(room_name, before, after, shared=True)

    def _apply_roster(self, room: Room, origin: int, event: Message) -> None:
        """Shard ``origin``'s participants and tracks now: those of its shown here that it no
        longer has left or ended while their events were lost."""
        participants, tracks = event["participants"], event["tracks"]
        if not isinstance(participants, list) or not isinstance(tracks, list):
            raise TypeError("roster")
        present, published = set(participants), set(tracks)
        for pid in [p for p, shard in room.remote_shard.items() if shard == origin]:
            if pid not in present:
                self._remote_left(room, pid)
        for publication in list(room.publications.values()):
            pid = publication.participant_id
            if room.remote_shard.get(pid) == origin and publication.id not in published:
                self._remote_unpublished(room, publication)

    def moderate_remote(self, room: Room, action: Message) -> None:
        """A host's action on a participant of another shard (``sfu.room.moderation``
        checked and audited it): carried out on the participant's shard."""
        self._share(room, {"type": "moderate", **action})

    def _shared_ban(self, room_name: str, event: Message, identity: str | None, now: float) -> None:
        """The ban of another shard's ``remove`` (``ban_s``), on ``identity`` when known."""
        if event["action"] != "remove":
            return
        ban_s = event.get("ban_s")
        if type(ban_s) is int and 0 < ban_s <= MAX_BAN_S and identity is not None:
            self.bans.ban(room_name, identity, now + ban_s, now)

    def _moderated(self, room: Room, event: Message, now: float) -> None:
        """Carry out a ``moderate`` event of another shard on this shard's participant (and
        show its effect to this shard's participants)."""
        action, pid = event["action"], event["target"]
        if not isinstance(pid, str):
            raise TypeError("target")
        target = room.participants.get(pid)
        if action == "remove":
            # The identity travels with the ban: this shard may already have dropped the
            # target (its own shard's ``participant_left`` came first) or never known it.
            identity = target.identity if target is not None else None
            if identity is None:
                identity = _shared_identity(event.get("identity"))
            if identity is None and pid in room.remote:
                identity = str(room.remote[pid]["identity"])
            self._shared_ban(room.name, event, identity, now)
            if target is not None:
                self.end(target, CLOSE_REMOVED, "a host removed you from the meeting", now=now)
        elif action == "request_mute":
            if target is not None:
                track, by = event["track"], event["by"]
                target.send({"type": "mute_requested", "track": str(track), "by": str(by)})
        elif action == "mute_chat":
            muted = bool(event["muted"])
            if target is not None:
                target.chat_muted = muted
            room.broadcast({"type": "chat_muted", "participant": pid, "muted": muted})
        else:
            raise ValueError("unknown moderation action")
