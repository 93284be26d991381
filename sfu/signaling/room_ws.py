"""The room protocol over a WebSocket (``GET /ws``): a thin adapter over :class:`RoomService`.

One connection is one participant. The first message must be a valid ``join`` whose token
verifies for the named room, within :data:`JOIN_TIMEOUT`; until then nothing is created for the
connection. Every later message is validated (:mod:`sfu.signaling.protocol`), rate-limited and
handed to the room service; an error reply leaves the server's state unchanged. Messages to the
client go through a bounded queue drained by one writer task, so a slow reader cannot make the
server hold unbounded memory (it is disconnected instead).

A room with a password takes it in the ``join``: wrong attempts are limited per source address
and per room (:class:`sfu.room.policy.PasswordAttempts`) and the scrypt check runs on a worker
thread, a few at a time, so guessing can neither stall the event loop nor go fast. Hosts'
moderation messages go to :class:`sfu.room.moderation.Moderation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

from sfu.cluster.placement import NodePlacement, signaling_url
from sfu.config import AuthConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.room.moderation import Moderation
from sfu.room.policy import PasswordAttempts, PasswordHash, verify_password
from sfu.room.room import Message, Participant
from sfu.room.service import CLOSE_MOVED, CLOSE_REFUSED, RoomError, RoomService
from sfu.signaling.auth import TokenError, verify_with_config
from sfu.signaling.protocol import (
    PROTOCOL_VERSION,
    Admit,
    AdmitAll,
    Chat,
    ClientMessage,
    Deny,
    EndMeeting,
    ForceMute,
    Join,
    Leave,
    Lock,
    ModerationMessage,
    Mute,
    MuteChat,
    Offer,
    Ping,
    Preferences,
    ProtocolError,
    Remove,
    RequestMute,
    Unsubscribe,
    error_message,
    parse_client_message,
)

__all__ = ["JoinGuard", "RoomSockets", "add_room_routes", "source_address"]

log = logging.getLogger(__name__)

JOIN_TIMEOUT: Final = 10.0
#: Frames beyond this are refused by aiohttp itself (close 1009); between the protocol's
#: 256 KiB and this a ``too_large`` error is sent and the connection stays up.
MAX_FRAME_BYTES: Final = 1024 * 1024
#: Sustained messages per second and burst, per connection.
RATE: Final = 50.0
BURST: Final = 100.0
#: Ten times the limit closes the connection (1008).
ABUSE_RATE: Final = 500.0
ABUSE_BURST: Final = 1000.0
#: Most messages queued toward one client before it counts as not reading.
MAX_QUEUED: Final = 1024

CLOSE_BAD_JOIN: Final = 4000
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_JOIN_TIMEOUT: Final = 4008
#: Close codes a client sends when it means to go (normal closure, page going away): the
#: participant leaves at once instead of keeping its place for a resume.
_CLEAN_CLOSES: Final = frozenset({WSCloseCode.OK, WSCloseCode.GOING_AWAY})
#: Join refusals that are the room's policy (sent as an ``error`` reply, then closed 4003).
_POLICY_REFUSALS: Final = frozenset(
    {
        "banned",
        "room_locked",
        "room_full",
        "password_required",
        "wrong_password",
        "rate_limited",
        "e2ee_required",
    }
)
#: Password checks (scrypt, 16 MiB each) running at once; more wait their turn.
MAX_PASSWORD_CHECKS: Final = 2
_MAX_SOURCE_CHARS: Final = 64


def source_address(request: web.Request, trusted_proxies: frozenset[str]) -> str:
    """The client's address for rate limiting: the TCP peer, or behind a trusted reverse
    proxy the rightmost ``X-Forwarded-For`` hop that is not itself a trusted proxy."""
    peer = request.remote or ""
    if peer in trusted_proxies:
        hops = [
            hop.strip()
            for value in request.headers.getall("X-Forwarded-For", [])
            for hop in value.split(",")
        ]
        for hop in reversed(hops):
            if hop and hop not in trusted_proxies:
                return hop[:_MAX_SOURCE_CHARS]
    return peer


class JoinGuard:
    """What a ``join`` must get past besides its token: the room password and its limits."""

    def __init__(self, attempts: PasswordAttempts, trusted_proxies: tuple[str, ...] = ()):
        self.attempts = attempts
        self.trusted_proxies = frozenset(trusted_proxies)
        self._slots: asyncio.Semaphore | None = None

    async def password(
        self, service: RoomService, join: Join, claims: JoinClaims, source: str, now: float
    ) -> PasswordHash | None:
        """The room's password hash once ``join`` has proved it (None when the room has none
        or the token's grant skips it); raises the refusing :class:`RoomError`."""
        stored = service.policies.get(claims.room).password
        if stored is None or claims.grants & (Grant.HOST | Grant.ADMIN):
            return None
        if join.password is None:
            raise RoomError("password_required", "this room needs a password")
        if not self.attempts.begin(source, claims.room, now):
            raise RoomError("rate_limited", "too many wrong passwords; try again in a minute")
        if self._slots is None:
            self._slots = asyncio.Semaphore(MAX_PASSWORD_CHECKS)
        async with self._slots:
            loop = asyncio.get_running_loop()
            right = await loop.run_in_executor(None, verify_password, stored, join.password)
        if not right:
            raise RoomError("wrong_password", "wrong password")
        self.attempts.succeeded(source, claims.room, now)
        return stored


class _Bucket:
    __slots__ = ("_burst", "_level", "_rate", "_stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate, self._burst, self._level, self._stamp = rate, burst, burst, now

    def take(self, now: float) -> bool:
        self._level = min(self._burst, self._level + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._level >= 1.0:
            self._level -= 1.0
            return True
        return False


class RoomSockets:
    """The open room-protocol connections, so a drain can close them (1001)."""

    def __init__(self) -> None:
        self.open: set[web.WebSocketResponse] = set()

    async def close_all(self) -> None:
        """Close every connection with 1001 (going away)."""
        for ws in list(self.open):
            with contextlib.suppress(Exception):
                await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")


class _Connection:
    """One WebSocket and (after a successful join) its participant."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        service: RoomService,
        clock: Callable[[], float],
    ) -> None:
        self.ws = ws
        self.service = service
        self.clock = clock
        self.participant: Participant | None = None
        self.moderation = Moderation(service)
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self.close_code: int | None = None
        self.close_reason = ""
        now = clock()
        self.bucket = _Bucket(RATE, BURST, now)
        self.abuse = _Bucket(ABUSE_RATE, ABUSE_BURST, now)

    def sink(self, message: Message) -> None:
        """Queue a message for the client (called from the room service, synchronously)."""
        if self.close_code is not None:
            return
        if self.queue.qsize() >= MAX_QUEUED:
            self.request_close(WSCloseCode.POLICY_VIOLATION, "not reading messages")
            return
        self.queue.put_nowait(message)

    def request_close(self, code: int, reason: str) -> None:
        """Close after the queued messages are written (from synchronous code)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.queue.put_nowait(None)

    async def writer(self) -> None:
        while True:
            message = await self.queue.get()
            if message is None:
                break
            try:
                await self.ws.send_json(message)
            except (ConnectionError, RuntimeError):
                break
        code = self.close_code or WSCloseCode.OK
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, message=self.close_reason.encode()[:120])

    def reply(self, request_id: str | int | None, message: Message) -> None:
        if request_id is not None:
            message["re"] = request_id
        self.sink(message)


def add_room_routes(
    app: web.Application,
    service: RoomService,
    sockets: RoomSockets,
    *,
    token_secret: str,
    auth: AuthConfig,
    clock: Callable[[], float],
    wallclock: Callable[[], float] = time.time,
    guard: JoinGuard | None = None,
    placement: NodePlacement | None = None,
) -> None:
    """Register ``GET /ws`` on ``app`` (with ``placement``, a clustered node sends joins it
    should not take to another node: ``moved``)."""
    guard = guard or JoinGuard(PasswordAttempts())

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=20.0)
        await ws.prepare(request)
        conn = _Connection(ws, service, clock)
        sockets.open.add(ws)
        writer = asyncio.ensure_future(conn.writer())
        source = source_address(request, guard.trusted_proxies)
        try:
            if await _join(
                conn, ws, service, token_secret, auth, wallclock, guard, source, placement
            ):
                await _serve(conn, ws)
        finally:
            sockets.open.discard(ws)
            participant = conn.participant
            if participant is not None and participant.sink == conn.sink:
                participant.on_close = None
                if conn.close_code is None and ws.close_code not in _CLEAN_CLOSES:
                    # The connection dropped (no leave, no clean close, not closed by us): the
                    # participant keeps its place for the grace period (docs/protocol.md,
                    # "Reconnecting").
                    service.detach(participant, now=clock())
                else:
                    service.leave(participant, now=clock())
            conn.request_close(conn.close_code or WSCloseCode.OK, conn.close_reason)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, 5.0)
        return ws

    app.router.add_get("/ws", handle)


async def _join(
    conn: _Connection,
    ws: web.WebSocketResponse,
    service: RoomService,
    secret: str,
    auth: AuthConfig,
    wallclock: Callable[[], float],
    guard: JoinGuard,
    source: str,
    placement: NodePlacement | None,
) -> bool:
    """Wait for the ``join`` and verify it; False (and a close queued) when refused or sent
    to another node."""
    try:
        msg = await asyncio.wait_for(ws.receive(), JOIN_TIMEOUT)
    except TimeoutError:
        conn.request_close(CLOSE_JOIN_TIMEOUT, "no join within 10 s")
        return False
    if msg.type != WSMsgType.TEXT:
        conn.request_close(CLOSE_BAD_JOIN, "the first message must be a join")
        return False
    try:
        join = parse_client_message(msg.data)
    except ProtocolError as exc:
        conn.request_close(CLOSE_BAD_JOIN, f"bad join: {exc.message}"[:100])
        return False
    if not isinstance(join, Join):
        conn.request_close(CLOSE_BAD_JOIN, "the first message must be a join")
        return False
    if join.protocol != PROTOCOL_VERSION:
        conn.request_close(
            CLOSE_BAD_JOIN, f"unsupported protocol; this server speaks {PROTOCOL_VERSION}"
        )
        return False
    try:
        claims = verify_with_config(secret, join.token, auth, room=join.room, now=wallclock())
    except TokenError as exc:
        conn.request_close(CLOSE_UNAUTHORIZED, f"token {exc.reason}")
        return False
    # Only a verified token holder learns another node's address.
    target = (
        None
        if placement is None
        else await placement.place(region=join.region, placed=join.placed, room=join.room)
    )
    if target is not None:
        moved = error_message("moved", "join at another node of the cluster", join.id)
        moved["url"] = signaling_url(target)
        conn.sink(moved)
        conn.request_close(CLOSE_MOVED, "moved to another node")
        return False
    try:
        proof = await guard.password(service, join, claims, source, conn.clock())
        if ws.closed:
            return False  # the client gave up while its password was being checked
        participant = service.join(
            claims,
            conn.sink,
            now=conn.clock(),
            password=proof,
            source=source,
            resume=join.resume,
        )
    except RoomError as exc:
        conn.sink(error_message(exc.code, exc.message, join.id))
        conn.request_close(CLOSE_REFUSED if exc.code in _POLICY_REFUSALS else 1013, exc.message)
        return False
    conn.participant = participant
    participant.on_close = conn.request_close
    return True


async def _serve(conn: _Connection, ws: web.WebSocketResponse) -> None:
    """Handle messages until the socket closes or the participant leaves."""
    async for msg in ws:
        if conn.close_code is not None:
            break
        now = conn.clock()
        if not conn.abuse.take(now):
            conn.request_close(WSCloseCode.POLICY_VIOLATION, "message rate far over the limit")
            break
        if not conn.bucket.take(now):
            conn.sink(error_message("rate_limited", "too many messages; slow down", None))
            continue
        if msg.type == WSMsgType.BINARY:
            conn.sink(error_message("bad_json", "binary frames are not supported", None))
            continue
        if msg.type != WSMsgType.TEXT:
            break
        try:
            message = parse_client_message(msg.data)
        except ProtocolError as exc:
            conn.sink(error_message(exc.code, exc.message, exc.request_id))
            continue
        if isinstance(message, Leave):
            conn.request_close(WSCloseCode.OK, "left")
            break
        try:
            _dispatch(conn, message, now)
        except ProtocolError as exc:
            conn.sink(error_message(exc.code, exc.message, message.id))
        except RoomError as exc:
            reply = error_message(exc.code, exc.message, message.id)
            if exc.track is not None:
                reply["track"] = exc.track
            conn.sink(reply)
        except Exception:
            log.exception("internal error handling a room message")
            conn.sink(error_message("internal", "internal server error", message.id))


def _dispatch(conn: _Connection, message: ClientMessage, now: float) -> None:
    """Apply one validated message (RoomError propagates to the caller's error reply)."""
    participant = conn.participant
    assert participant is not None
    service = conn.service
    if isinstance(message, Join):
        raise ProtocolError("already_joined", "already joined", message.id)
    if isinstance(message, Ping):
        conn.reply(message.id, {"type": "pong"})
    elif isinstance(message, Offer):
        answer = service.offer(
            participant,
            message.sdp,
            now,
            names=message.tracks,
            subscriptions=message.subscriptions,
            sources=message.sources,
            heights=message.heights,
        )
        own = participant.peer.publications if participant.peer is not None else {}
        tracks = {mid: publication.id for mid, publication in own.items()}
        conn.reply(message.id, {"type": "answer", "sdp": answer, "tracks": tracks})
    elif isinstance(message, Unsubscribe):
        service.unsubscribe(participant, message.track)
        conn.reply(message.id, {"type": "ok"})
    elif isinstance(message, Preferences):
        service.set_preferences(
            participant,
            message.track,
            max_spatial=message.max_spatial,
            max_temporal=message.max_temporal,
            paused=message.paused,
            pinned=message.pinned,
        )
        conn.reply(message.id, {"type": "ok"})
    elif isinstance(message, Mute):
        service.set_muted(participant, message.track, message.muted)
        conn.reply(message.id, {"type": "ok"})
    elif isinstance(message, Chat):
        outcome = service.chat.relay(participant, message.text, now=now)
        if outcome != "ok":
            raise RoomError("chat_refused", f"chat message refused: {outcome}")
        conn.reply(message.id, {"type": "ok"})
    elif isinstance(message, ModerationMessage):
        conn.reply(message.id, _moderate(conn.moderation, participant, message, now))


def _moderate(
    moderation: Moderation, actor: Participant, message: ModerationMessage, now: float
) -> Message:
    """Apply a host's message; returns the ``ok`` reply (RoomError refuses it)."""
    reply: Message = {"type": "ok"}
    if isinstance(message, Admit):
        moderation.admit(actor, message.participant)
    elif isinstance(message, Deny):
        moderation.deny(actor, message.participant, now=now)
    elif isinstance(message, AdmitAll):
        reply["admitted"] = moderation.admit_all(actor)
    elif isinstance(message, Remove):
        moderation.remove(actor, message.participant, message.ban_s, now=now)
    elif isinstance(message, RequestMute):
        moderation.request_mute(actor, message.track)
    elif isinstance(message, ForceMute):
        moderation.force_mute(actor, message.track, message.muted)
    elif isinstance(message, MuteChat):
        moderation.mute_chat(actor, message.participant, message.muted)
    elif isinstance(message, Lock):
        moderation.lock(actor, message.locked)
    elif isinstance(message, EndMeeting):
        moderation.end_meeting(actor, now=now)  # closes every socket of the room, this one too
    return reply
