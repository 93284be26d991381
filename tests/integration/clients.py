"""Real clients for integration tests: aiortc restricted to loopback, and a server runner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from scratch import scratch_dir

from sfu.app import Server
from sfu.config import AuditConfig, Config, HttpConfig, MediaConfig, RoomsConfig, ServerConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token
from sfu.workers.supervisor import Supervisor

# aiortc gathers candidates on every interface; tests only ever use 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

TIMEOUT = 20.0

#: Audit records of in-process test servers go here, never into the working directory.
AUDIT_DIR = scratch_dir()

#: Loopback, ephemeral ports, no waiting room (tests of the waiting room turn it on).
LOOPBACK_CONFIG = Config(
    http=HttpConfig(host="127.0.0.1", port=0),
    media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
    server=ServerConfig(drain_timeout_s=3.0),
    rooms=RoomsConfig(waiting_room=False),
    audit=AuditConfig(path=AUDIT_DIR),
)


@contextlib.asynccontextmanager
async def running_server(config: Config = LOOPBACK_CONFIG) -> AsyncIterator[tuple[Server, str]]:
    """An in-process server on loopback ports; yields it and its base URL."""
    server = Server(config)
    await server.start()
    try:
        yield server, f"http://127.0.0.1:{server.http_addresses[0][1]}"
    finally:
        await asyncio.wait_for(server.stop(), TIMEOUT)


@contextlib.asynccontextmanager
async def running_supervisor(
    config: Config = LOOPBACK_CONFIG, workers: int = 2
) -> AsyncIterator[tuple[Supervisor, str]]:
    """``sfu serve`` with ``workers`` forwarding workers: the supervisor in process, its
    workers as real child processes; yields it and its public base URL."""
    supervisor = Supervisor(config, workers)
    await supervisor.start()
    try:
        assert all(w.ready for w in supervisor.workers), "a worker did not start"
        yield supervisor, f"http://127.0.0.1:{supervisor.http_addresses[0][1]}"
    finally:
        await asyncio.wait_for(supervisor.stop(), TIMEOUT)


async def post_offer(base: str, path: str, sdp: str) -> tuple[int, str, str | None]:
    """POST an SDP offer; returns (status, body, Location)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(base + path, data=sdp, headers={"Content-Type": "application/sdp"}) as resp,
    ):
        return resp.status, await resp.text(), resp.headers.get("Location")


async def delete(base: str, location: str) -> int:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.delete(base + location) as resp,
    ):
        return resp.status


async def frames(track: MediaStreamTrack, n: int) -> int:
    """Receive ``n`` decoded frames from ``track`` (callers bound the wait)."""
    for _ in range(n):
        assert await track.recv() is not None
    return n


@contextlib.asynccontextmanager
async def aiortc_echo(
    base: str, *, audio: bool = True, video: bool = True
) -> AsyncIterator[tuple[RTCPeerConnection, dict[str, MediaStreamTrack], str, str]]:
    """An aiortc peer connection echoing through ``base``/echo, connected and decoding.

    Yields the connection, the received tracks by kind, the session's Location and the
    answer SDP; the connection is closed afterwards.
    """
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tracks: dict[str, MediaStreamTrack] = {}
    pc.on("track", lambda track: tracks.setdefault(track.kind, track))
    if audio:
        pc.addTrack(AudioStreamTrack())
    if video:
        pc.addTrack(VideoStreamTrack())
    try:
        await pc.setLocalDescription(await pc.createOffer())
        status, answer, location = await post_offer(base, "/echo", pc.localDescription.sdp)
        assert status == 201, answer
        assert location is not None and location.startswith("/echo/")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        yield pc, tracks, location, answer
    finally:
        await pc.close()


def room_state(server: Server) -> Any:
    """Everything a refused request must leave unchanged: rooms, participants, tracks,
    subscriptions, mutes, transports and WHIP/WHEP sessions."""
    assert server.rooms is not None
    return (
        {
            name: (
                sorted(room.participants),
                sorted(room.waiting),
                sorted(room.publications),
                sorted(
                    (pid, sorted(p.peer.subscriptions) if p.peer else None)
                    for pid, p in room.participants.items()
                ),
                sorted((p.id, p.muted) for p in room.publications.values()),
            )
            for name, room in server.rooms.rooms.items()
        },
        server.port.transport_count,
        len(server.http_sessions.by_id),
    )


class RoomClient:
    """One participant: its room WebSocket and its peer connection."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.events: list[dict[str, Any]] = []
        self.joined: dict[str, Any] = {}

    async def recv(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first message (queued or new) ``predicate`` accepts; the others are kept."""
        for message in self.events:
            if predicate(message):
                self.events.remove(message)
                return message
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data)
            message = json.loads(msg.data)
            if predicate(message):
                return dict(message)
            self.events.append(message)

    async def offer(self, rid: str, **fields: Any) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send_str(
            json.dumps({"type": "offer", "id": rid, "sdp": self.pc.localDescription.sdp, **fields})
        )
        answer = await self.recv(lambda m: m.get("re") == rid)
        assert answer["type"] == "answer", answer
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))


async def join_room(
    http: aiohttp.ClientSession, base: str, secret: str, room: str, who: str
) -> RoomClient:
    """Join ``room`` over the room WebSocket as ``who`` (a token for publish and subscribe
    signed with ``secret``); returns once the server said ``joined``."""
    now = int(time.time())
    claims = JoinClaims(
        room=room,
        identity=who,
        name=who,
        grants=Grant.PUBLISH | Grant.SUBSCRIBE,
        iat=now,
        exp=now + 600,
    )
    client = RoomClient(await http.ws_connect(f"{base}/ws"))
    await client.ws.send_str(
        json.dumps(
            {"type": "join", "protocol": 1, "room": room, "token": issue_token(secret, claims)}
        )
    )
    client.joined = await client.recv(lambda m: m["type"] == "joined")
    return client


async def next_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, object]:
    """The next room-protocol message of type ``kind`` on ``ws`` (others skipped), within
    TIMEOUT."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        message = await ws.receive_json(timeout=max(0.01, deadline - time.monotonic()))
        if message["type"] == kind:
            return dict(message)
