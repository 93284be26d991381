"""The room bus between workers: each worker's events go to the supervisor, which hands
them to the other shards of the room (``sfu.room.shards``; Redis replaces the supervisor in
a cluster, behind the same ``RoomBus.publish`` and ``RoomService.on_shared``).

The supervisor opens one WebSocket to each worker's loopback listener
(``GET /_worker/bus``), proving with :func:`worker_key` (derived from the deployment's
secret, compared in constant time) that it is the supervisor: the path is never forwarded
from the public listener, and another local process cannot speak for it. Messages are JSON:
``{"room", "event"}`` from a worker, ``{"room", "origin", "event"}`` to one; ``room`` empty
and ``SHARD_CLOSED`` when worker ``origin`` is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import WSMsgType, web

from sfu.room.service import RoomService

__all__ = [
    "BUS_MAX_MESSAGE_BYTES",
    "BUS_QUEUE_LIMIT",
    "SHARD_CLOSED",
    "WORKER_BUS_PATH",
    "WORKER_KEY_HEADER",
    "WorkerBus",
    "worker_key",
]

log = logging.getLogger(__name__)

#: The bus's WebSocket on a worker's loopback listener.
WORKER_BUS_PATH: Final = "/_worker/bus"
#: What the supervisor tells every worker (with ``room`` empty) when a worker's bus link
#: ended (the worker died or is restarting): its participants are gone.
SHARD_CLOSED: Final = {"type": "shard_closed"}
#: The header carrying :func:`worker_key` on the supervisor's internal requests.
WORKER_KEY_HEADER: Final = "X-Sfu-Worker-Key"
#: Largest bus message (a track's relay description with its codecs is about 2 KiB; a chat
#: envelope at most ``rooms.chat_max_message_bytes`` plus its JSON).
BUS_MAX_MESSAGE_BYTES: Final = 256 * 1024
#: Events waiting for the socket at most; beyond, new ones are dropped and counted (a stalled
#: supervisor must not grow a worker's memory without bound).
BUS_QUEUE_LIMIT: Final = 10_000


def worker_key(secret: str) -> str:
    """The key the supervisor shows a worker: an HMAC of the deployment's signing secret,
    so the secret itself never travels."""
    return hmac.new(secret.encode(), b"sfu worker bus", hashlib.sha256).hexdigest()


class WorkerBus:
    """A worker's end of the room bus (the room service's ``RoomBus``)."""

    def __init__(
        self, rooms: Callable[[], RoomService | None], clock: Callable[[], float], secret: str
    ) -> None:
        self._rooms = rooms
        self._clock = clock
        self._key = worker_key(secret)
        self._ws: web.WebSocketResponse | None = None
        self._queue: asyncio.Queue[str] = asyncio.Queue(BUS_QUEUE_LIMIT)
        #: Events dropped: no supervisor connected, or the queue was full.
        self.dropped = 0
        #: Messages from the supervisor that were not JSON of the expected shape.
        self.malformed = 0
        #: Well-formed events the room service failed to apply (logged; the bus goes on).
        self.failed = 0

    def publish(self, room: str, event: dict[str, Any]) -> None:
        """Queue ``event`` of ``room`` for the other shards (never blocks)."""
        if self._ws is None:
            self.dropped += 1
            return
        try:
            self._queue.put_nowait(json.dumps({"room": room, "event": event}))
        except asyncio.QueueFull:
            self.dropped += 1

    async def close(self) -> None:
        """Close the supervisor's socket (shutting down: the HTTP server waits for every
        open handler, and this one lasts as long as the supervisor keeps it)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /_worker/bus``: the supervisor's WebSocket (one at a time)."""
        shown = request.headers.get(WORKER_KEY_HEADER, "")
        if not hmac.compare_digest(shown.encode(), self._key.encode()):
            return web.json_response({"error": "not the supervisor"}, status=403)
        ws = web.WebSocketResponse(max_msg_size=BUS_MAX_MESSAGE_BYTES)
        await ws.prepare(request)
        previous, self._ws = self._ws, ws
        if previous is not None:
            await previous.close()
        writer = asyncio.ensure_future(self._write(ws))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._received(msg.data)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self._ws is ws:
                self._ws = None
        return ws

    async def _write(self, ws: web.WebSocketResponse) -> None:
        while True:
            text = await self._queue.get()
            await ws.send_str(text)

    def _received(self, text: str) -> None:
        rooms = self._rooms()
        try:
            message = json.loads(text)
            room, origin, event = message["room"], message["origin"], message["event"]
            if not isinstance(room, str) or type(origin) is not int:
                raise TypeError("bad room or origin")
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return
        if rooms is None:
            return
        try:
            if room == "" and event == SHARD_CLOSED:
                rooms.shard_closed(origin, now=self._clock())
            else:
                rooms.on_shared(room, origin, event, now=self._clock())
        except Exception:
            # One event the room could not apply must not end the bus: the supervisor
            # would read the closed socket as this worker gone and the other shards would
            # drop all its participants.
            self.failed += 1
            log.exception("room bus: an event could not be applied")
