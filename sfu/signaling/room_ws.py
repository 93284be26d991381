"""The room protocol over a WebSocket (``GET /ws``): a thin adapter over :class:`RoomService`.

One connection is one participant. The first message must be a valid ``join`` whose token
verifies for the named room, within :data:`JOIN_TIMEOUT`; until then nothing is created for the
connection. Every later message is validated (:mod:`sfu.signaling.protocol`), rate-limited and
handed to the room service; an error reply leaves the server's state unchanged. Messages to the
client go through a bounded queue drained by one writer task, so a slow reader cannot make the
server hold unbounded memory (it is disconnected instead).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from aiohttp import WSCloseCode, WSMsgType, web

from sfu.config import AuthConfig
from sfu.room.room import Message, Participant
from sfu.room.service import RoomError, RoomService
from sfu.signaling.auth import TokenError, verify_token
from sfu.signaling.protocol import (
    PROTOCOL_VERSION,
    ClientMessage,
    Join,
    Leave,
    Mute,
    Offer,
    Ping,
    Preferences,
    ProtocolError,
    Unsubscribe,
    error_message,
    parse_client_message,
)

__all__ = ["RoomSockets", "add_room_routes"]

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
) -> None:
    """Register ``GET /ws`` on ``app``."""

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, heartbeat=20.0)
        await ws.prepare(request)
        conn = _Connection(ws, service, clock)
        sockets.open.add(ws)
        writer = asyncio.ensure_future(conn.writer())
        try:
            if await _join(conn, ws, service, token_secret, auth, wallclock):
                await _serve(conn, ws)
        finally:
            sockets.open.discard(ws)
            participant = conn.participant
            if participant is not None:
                participant.on_close = None
                service.leave(participant, clock())
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
) -> bool:
    """Wait for the ``join`` and verify it; False (and a close queued) when refused."""
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
        claims = verify_token(
            secret,
            join.token,
            now=wallclock(),
            room=join.room,
            leeway=auth.token_leeway_s,
            max_ttl=auth.max_token_ttl_s,
        )
    except TokenError as exc:
        conn.request_close(CLOSE_UNAUTHORIZED, f"token {exc.reason}")
        return False
    try:
        participant = service.join(claims, conn.sink)
    except RoomError as exc:
        conn.request_close(4003 if exc.code == "room_full" else 1013, exc.message)
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
        )
        conn.reply(message.id, {"type": "ok"})
    elif isinstance(message, Mute):
        service.set_muted(participant, message.track, message.muted)
        conn.reply(message.id, {"type": "ok"})
