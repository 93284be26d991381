"""WHIP ingest (RFC 9725) and WHEP egress over the room service.

``POST /whip/{room}`` publishes the offer's tracks as the token's identity;
``POST /whep/{room}/{identity}`` subscribes to that participant's first audio and video track.
Each creates a participant in the room (so people in a meeting see who publishes and who
watches) and returns ``201`` with the answer and a ``Location`` whose last segment is a random
128-bit session secret: the location itself is the capability to ``DELETE`` (end) or
``PATCH`` (ICE restart) the session, and it is never shown to other participants.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

from aiohttp import web
from multidict import CIMultiDict

from sfu.cluster.placement import NodePlacement
from sfu.config import AuthConfig, is_cluster_name
from sfu.core.publication import Publication
from sfu.packet.errors import ParseError
from sfu.packet.sdp import Direction, SessionDescription
from sfu.room.identity import Grant, JoinClaims
from sfu.room.room import Participant, ParticipantState, Room
from sfu.room.service import RoomError, RoomService
from sfu.signaling.auth import BEARER_CHALLENGE, TokenError, bearer_token, verify_with_config
from sfu.signaling.room_ws import source_address
from sfu.signaling.sdp_http import (
    ice_restart_response,
    read_ice_restart,
    read_sdp_offer,
    sdp_answer_response,
    sdp_error,
)
from sfu.signaling.turn import TurnCredentials
from sfu.signaling.whip_forward import (
    PLACED_QUERY,
    Relayed,
    WhipForwarder,
    forward_headers,
    forward_url,
)

__all__ = ["HttpSessions", "add_whip_routes"]

#: A WHEP viewer placed on a shard of a spread room waits at most this for the publisher's
#: tracks to arrive from the other shards (one bus round trip through the supervisor, a
#: few milliseconds on an idle host), and at most the settle time more, once the publisher
#: is seen, for a track of each kind its offer asks for. Polled, as the bus's events are
#: applied by the room service, not awaited by anyone.
SHARD_STATE_WAIT_S: Final = 2.0
SHARD_STATE_SETTLE_S: Final = 0.25
SHARD_STATE_POLL_S: Final = 0.01

#: Room error code -> HTTP status (RFC 9725 §4.2 and §4.6).
_STATUS: Final = {
    "bad_offer": 400,
    "bad_message": 400,
    "forbidden": 403,
    "not_joined": 403,
    "unknown_track": 404,
    "room_full": 503,
    "server_busy": 503,
    "server_draining": 503,
    # The room's policy (docs/security.md): WHIP/WHEP skip the waiting room and the password,
    # not bans or the lock; WHIP cannot encrypt end to end, so an E2EE room refuses it.
    "banned": 403,
    "room_locked": 403,
    "e2ee_required": 403,
}


@dataclass(eq=False, slots=True)
class _Session:
    participant: Participant
    kind: str


class HttpSessions:
    """WHIP/WHEP sessions by their secret location id."""

    def __init__(self) -> None:
        self.by_id: dict[str, _Session] = {}

    def add(self, participant: Participant, kind: str) -> str:
        session_id = secrets.token_urlsafe(16)
        self.by_id[session_id] = _Session(participant, kind)

        def closed(code: int, reason: str) -> None:
            self.by_id.pop(session_id, None)

        participant.on_close = closed
        return session_id

    def reap(self) -> None:
        """Forget sessions whose participant has gone (transport failed, replaced)."""
        for sid in [
            s for s, v in self.by_id.items() if v.participant.state is ParticipantState.LEFT
        ]:
            del self.by_id[sid]


async def _placed_elsewhere(
    request: web.Request,
    placement: NodePlacement | None,
    room: str,
    forwarder: WhipForwarder | None,
    source: str,
) -> web.Response | None:
    """The answer to a POST this node places on another one (full or draining); None to
    stay.

    With ``forwarder`` (``whip_placement = "proxy"``) the POST is sent on to the other node
    and its answer relayed (:mod:`sfu.signaling.whip_forward`: a ``307`` changes the
    origin, and clients then drop their ``Authorization``). Without it, or when the other
    node cannot be reached, a ``307`` to the same resource there (RFC 9725 section 4.5:
    WHIP clients follow it, keeping the method and the offer, if not always the token).

    The target gets ``placed=1`` so that it never sends the request on again (unless it
    drains itself).
    """
    if placement is None:
        return None
    region = request.query.get("region")
    target = await placement.place(
        region=region if region and is_cluster_name(region) else None,
        placed=request.query.get(PLACED_QUERY) == "1",
        room=room,
    )
    if target is None:
        return None
    location = forward_url(target, request.path, request.query.items())
    redirect = web.Response(status=307, headers={"Location": location})
    if forwarder is None:
        return redirect
    # The endpoint's own checks of the body (type, size, UTF-8), as the target makes them.
    offer = await read_sdp_offer(request)
    if isinstance(offer, web.Response):
        return offer
    result = await forwarder.forward(
        location, forward_headers(request.headers, source), offer.encode("utf-8")
    )
    if result == "fallback":
        return redirect
    if not isinstance(result, Relayed):
        return sdp_error(502, "the node this request was placed on gave no usable answer")
    return web.Response(status=result.status, body=result.body, headers=CIMultiDict(result.headers))


def _room_error(exc: RoomError) -> web.Response:
    status = _STATUS.get(exc.code, 400)
    headers = {"Retry-After": "5"} if status == 503 else {}
    return sdp_error(status, exc.message, **headers)


def add_whip_routes(
    app: web.Application,
    service: RoomService,
    sessions: HttpSessions,
    *,
    token_secret: str,
    auth: AuthConfig,
    clock: Callable[[], float],
    wallclock: Callable[[], float] = time.time,
    trusted_proxies: tuple[str, ...] = (),
    turn: TurnCredentials | None = None,
    placement: NodePlacement | None = None,
    forwarder: WhipForwarder | None = None,
) -> None:
    """Register the WHIP and WHEP endpoints on ``app`` (``trusted_proxies``: whose
    ``X-Forwarded-For`` names the client, for the per-source pending-transport cap); with
    ``turn``, each ``201`` carries TURN credentials as ``Link: <url>; rel="ice-server"``
    headers (RFC 9725 §4.6); with ``placement``, a POST placed on another node is forwarded
    there by ``forwarder`` when given, else answered ``307``."""
    trusted = frozenset(trusted_proxies)

    def with_ice_servers(response: web.Response) -> web.Response:
        server = turn.issue(wall_now=wallclock()) if turn is not None else None
        if server is not None and response.status == 201:
            for value in server.link_headers():
                response.headers.add("Link", value)
        return response

    async def authorize(
        request: web.Request, room: str, grant: Grant, grant_name: str
    ) -> JoinClaims | web.Response:
        try:
            token = bearer_token(request.headers.get("Authorization"))
            claims = verify_with_config(token_secret, token, auth, room=room, now=wallclock())
        except TokenError as exc:
            return sdp_error(401, f"token {exc.reason}", **BEARER_CHALLENGE)
        if not claims.grants & grant:
            return sdp_error(403, f"the token lacks the {grant_name} grant")
        source = source_address(request, trusted)
        moved = await _placed_elsewhere(request, placement, room, forwarder, source)
        return moved if moved is not None else claims

    async def whip(request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        claims = await authorize(request, room_name, Grant.PUBLISH, "publish")
        if isinstance(claims, web.Response):
            return claims
        offer = await read_sdp_offer(request)
        if isinstance(offer, web.Response):
            return offer
        room = service.rooms.get(room_name)
        existing = room.by_identity(claims.identity) if room is not None else None
        if existing is not None and existing.peer is not None and existing.peer.publications:
            return sdp_error(409, "this identity is already publishing in the room")
        prefix = f"/whip/{quote(room_name, safe='')}"
        source = source_address(request, trusted)
        return with_ice_servers(
            _start(service, sessions, claims, offer, clock(), "whip", None, prefix, source)
        )

    async def whep(request: web.Request) -> web.Response:
        room_name = request.match_info["room"]
        claims = await authorize(request, room_name, Grant.SUBSCRIBE, "subscribe")
        if isinstance(claims, web.Response):
            return claims
        offer = await read_sdp_offer(request)
        if isinstance(offer, web.Response):
            return offer
        room = service.rooms.get(room_name)
        identity = request.match_info["identity"]
        if service.bus is not None:
            room = await _await_shard_state(service, room_name, identity, offer, clock)
        if room is None:
            return sdp_error(404, "no such room")
        published = _published(room, identity)
        if published is None:
            _close_if_unused(service, room)
            return sdp_error(404, "that participant publishes nothing in this room")
        if identity == claims.identity:
            _close_if_unused(service, room)
            return sdp_error(409, "the token's identity is the publisher itself")
        try:
            parsed = SessionDescription.parse(offer)
        except ParseError as exc:
            _close_if_unused(service, room)
            return sdp_error(400, f"bad offer: {exc}")
        tracks = published
        bindings: dict[str, str] = {}
        for kind in ("audio", "video"):
            track = next((t for t in tracks if t.kind == kind), None)
            section = next(
                (
                    m
                    for m in parsed.media
                    if m.kind == kind and m.direction is Direction.RECVONLY and m.mid is not None
                ),
                None,
            )
            if track is not None and section is not None and section.mid is not None:
                bindings[section.mid] = track.id
        if not bindings:
            _close_if_unused(service, room)
            return sdp_error(400, "the offer has no recvonly audio or video section to fill")
        prefix = f"/whep/{quote(room_name, safe='')}/{quote(identity, safe='')}"
        source = source_address(request, trusted)
        response = _start(
            service, sessions, claims, offer, clock(), "whep", bindings, prefix, source
        )
        _close_if_unused(service, room)
        return with_ice_servers(response)

    async def delete(request: web.Request) -> web.Response:
        session = sessions.by_id.pop(request.match_info["session"], None)
        if session is None or session.participant.room.name != request.match_info["room"]:
            return sdp_error(404, "no such session")
        session.participant.on_close = None
        service.leave(session.participant, now=clock())
        return web.Response(status=200)

    async def patch(request: web.Request) -> web.Response:
        session = sessions.by_id.get(request.match_info["session"])
        if session is None or session.participant.room.name != request.match_info["room"]:
            return sdp_error(404, "no such session")
        credentials = await read_ice_restart(request)
        if isinstance(credentials, web.Response):
            return credentials
        peer = session.participant.peer
        if peer is None or peer.transport.finished:
            return sdp_error(404, "the session's transport has ended")
        local = service.port.restart_ice(peer.transport, credentials[0])
        return ice_restart_response(local.ufrag, local.pwd)

    app.router.add_post("/whip/{room}", whip)
    app.router.add_delete("/whip/{room}/{session}", delete)
    app.router.add_patch("/whip/{room}/{session}", patch)
    app.router.add_post("/whep/{room}/{identity}", whep)
    app.router.add_delete("/whep/{room}/{identity}/{session}", delete)
    app.router.add_patch("/whep/{room}/{identity}/{session}", patch)


def _published(room: Room, identity: str) -> list[Publication] | None:
    """The tracks ``identity`` publishes in ``room``, whether it is on this shard or on
    another one (then they are the relayed stand-ins); None when it publishes nothing."""
    local = room.by_identity(identity)
    if local is not None:
        if local.peer is None or not local.peer.publications:
            return None
        return list(local.peer.publications.values())
    for pid, described in room.remote.items():
        if described.get("identity") == identity:
            tracks = [p for p in room.publications.values() if p.participant_id == pid]
            return tracks or None
    return None


def _offered_kinds(offer: str) -> set[str]:
    """The kinds of the offer's recvonly sections (what a WHEP viewer wants filled)."""
    try:
        parsed = SessionDescription.parse(offer)
    except ParseError:
        return set()
    return {m.kind for m in parsed.media if m.direction is Direction.RECVONLY}


async def _await_shard_state(
    service: RoomService,
    room_name: str,
    identity: str,
    offer: str,
    clock: Callable[[], float],
) -> Room | None:
    """The room with ``identity``'s tracks, on a worker that holds a shard of a spread room.

    A viewer placed on a shard that has nothing of the room yet opens the shard (the other
    shards answer with their state over the bus) and waits, at most
    :data:`SHARD_STATE_WAIT_S`, for the publisher; once it is seen, at most
    :data:`SHARD_STATE_SETTLE_S` more for a track of each kind the offer asks for (the
    tracks travel as separate events). Returns the room, or None when none could be opened.
    """
    room = service.open_shard(room_name)
    if room is None:
        return None
    wanted = _offered_kinds(offer) & {"audio", "video"}
    deadline = clock() + SHARD_STATE_WAIT_S
    seen_at: float | None = None
    while True:
        tracks = _published(room, identity)
        now = clock()
        if tracks is not None:
            if wanted <= {t.kind for t in tracks}:
                return room
            if seen_at is None:
                seen_at = now
                deadline = min(deadline, now + SHARD_STATE_SETTLE_S)
        if now >= deadline or service.rooms.get(room_name) is not room:
            return service.rooms.get(room_name)
        await asyncio.sleep(SHARD_STATE_POLL_S)


def _close_if_unused(service: RoomService, room: Room) -> None:
    """A shard opened for a WHEP viewer that did not join is forgotten again."""
    if service.bus is not None:
        service.close_empty_shard(room)


def _start(
    service: RoomService,
    sessions: HttpSessions,
    claims: JoinClaims,
    offer: str,
    now: float,
    kind: str,
    subscriptions: dict[str, str] | None,
    location_prefix: str,
    source: str | None = None,
) -> web.Response:
    """Join the room as a WHIP/WHEP participant and answer its offer (all or nothing)."""
    sessions.reap()
    # Refuse a bad offer before joining: joining ends a participant with the same identity
    # (4009) and shows a join/leave to the room, and a refused request must change nothing.
    try:
        service.check_offer(claims, offer, subscriptions=subscriptions)
    except RoomError as exc:
        return _room_error(exc)
    try:
        participant = service.join(claims, lambda message: None, kind=kind, now=now, source=source)
    except RoomError as exc:
        return _room_error(exc)
    try:
        answer = service.offer(participant, offer, now, subscriptions=subscriptions)
    except RoomError as exc:
        service.leave(participant, now=now)
        return _room_error(exc)
    session_id = sessions.add(participant, kind)
    return sdp_answer_response(answer, f"{location_prefix}/{session_id}")
