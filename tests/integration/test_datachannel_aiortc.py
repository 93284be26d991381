"""Data channel chat through the room: two aiortc peers (their own SCTP stack, not ours) on
the real server, reliable and unreliable channels, the WebSocket fallback, limits, chat mute."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from clients import TIMEOUT, running_server

from sfu.app import Server
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM = "chat-room"


class Peer:
    """One participant: a room WebSocket and an aiortc connection with both chat channels."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, joined: dict[str, Any]) -> None:
        self.ws = ws
        self.id = str(joined["participant"]["id"])
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.chat: RTCDataChannel = self.pc.createDataChannel("chat")
        self.lossy: RTCDataChannel = self.pc.createDataChannel(
            "chat-lossy", ordered=False, maxRetransmits=0
        )
        self.received: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        for channel in (self.chat, self.lossy):
            channel.on("message", self._on_message(channel.label))
        self.ws_messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def _on_message(self, label: str) -> Any:
        def handler(message: str | bytes) -> None:
            assert isinstance(message, str)
            self.received.put_nowait((label, json.loads(message)))

        return handler

    async def connect(self) -> None:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self.ws.send_str(
            json.dumps({"type": "offer", "sdp": self.pc.localDescription.sdp, "id": "dc"})
        )
        answer = await self.reply("dc")
        assert answer["type"] == "answer", answer
        assert "m=application" in answer["sdp"] and "a=sctp-port:5000" in answer["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        deadline = time.monotonic() + TIMEOUT
        while not (self.chat.readyState == "open" and self.lossy.readyState == "open"):
            assert time.monotonic() < deadline, "data channels did not open"
            await asyncio.sleep(0.02)

    async def reply(self, rid: str) -> dict[str, Any]:
        """The reply to request ``rid``; other messages are queued for :meth:`event`."""
        while True:
            msg = await self.ws.receive(timeout=TIMEOUT)
            data = json.loads(msg.data)
            if data.get("re") == rid:
                return dict(data)
            self.ws_messages.put_nowait(data)

    async def event(self, kind: str) -> dict[str, Any]:
        """The next WebSocket event of type ``kind`` (others are skipped)."""
        while True:
            if not self.ws_messages.empty():
                data = self.ws_messages.get_nowait()
            else:
                msg = await self.ws.receive(timeout=TIMEOUT)
                data = json.loads(msg.data)
            if data.get("type") == kind:
                return dict(data)

    async def message(self) -> tuple[str, dict[str, Any]]:
        return await asyncio.wait_for(self.received.get(), TIMEOUT)


def _token(server: Server, identity: str, grants: Grant) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM, identity=identity, name=identity, grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(server.token_secret, claims))


async def _join(http: aiohttp.ClientSession, base: str, bearer: str) -> Peer:
    ws = await http.ws_connect(f"{base}/ws")
    await ws.send_str(json.dumps({"type": "join", "protocol": 1, "room": ROOM, "token": bearer}))
    joined = json.loads((await ws.receive(timeout=TIMEOUT)).data)
    assert joined["type"] == "joined", joined
    return Peer(ws, joined)


def test_two_aiortc_peers_chat_through_the_room() -> None:
    async def scenario() -> None:
        async with (
            running_server() as (server, base),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            assert server.rooms is not None
            relay = server.rooms.chat
            seen: list[tuple[str, str]] = []
            relay.tap = lambda sender, text: seen.append((sender, text))
            host = Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST
            alice = await _join(http, base, _token(server, "alice", Grant.PUBLISH))
            bob = await _join(http, base, _token(server, "bob", host))
            try:
                await alice.connect()
                await bob.connect()

                alice.chat.send("hello bob")
                label, envelope = await bob.message()
                assert (label, envelope) == (
                    "chat",
                    {"type": "chat", "from": alice.id, "text": "hello bob", "reliable": True},
                )
                # Unreliable: the same relay, sent on the receiver's lossy channel.
                bob.lossy.send("quick")
                label, envelope = await alice.message()
                assert (label, envelope["from"], envelope["text"]) == (
                    "chat-lossy",
                    bob.id,
                    "quick",
                )
                assert envelope["reliable"] is False

                # The WebSocket fallback reaches a data channel receiver, same envelope.
                await bob.ws.send_str(json.dumps({"type": "chat", "text": "via ws", "id": "c1"}))
                assert (await bob.reply("c1"))["type"] == "ok"
                label, envelope = await alice.message()
                assert (label, envelope["from"], envelope["text"]) == ("chat", bob.id, "via ws")

                # Too large: refused and counted, nothing relayed (over the socket: an error).
                big = "x" * (relay.limits.max_message_bytes + 1)
                await alice.ws.send_str(json.dumps({"type": "chat", "text": big, "id": "big"}))
                refused = await alice.reply("big")
                assert refused["code"] == "chat_refused" and "too_large" in refused["message"]

                # A host mutes alice's chat: her channel messages are dropped and counted.
                await bob.ws.send_str(
                    json.dumps(
                        {"type": "mute_chat", "participant": alice.id, "muted": True, "id": "m"}
                    )
                )
                assert (await bob.reply("m"))["type"] == "ok"
                muted = await alice.event("chat_muted")
                assert muted == {"type": "chat_muted", "participant": alice.id, "muted": True}
                before = relay.refused["muted"]
                alice.chat.send("still here?")
                deadline = time.monotonic() + TIMEOUT
                while relay.refused["muted"] == before:
                    assert time.monotonic() < deadline, "muted message never reached the relay"
                    await asyncio.sleep(0.02)
                assert bob.received.empty()
                assert seen == [
                    (alice.id, "hello bob"),
                    (bob.id, "quick"),
                    (bob.id, "via ws"),
                ]
            finally:
                await alice.pc.close()
                await bob.pc.close()

    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
