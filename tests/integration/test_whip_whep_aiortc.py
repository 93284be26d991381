"""WHIP ingest and WHEP egress with aiortc on both ends, and the endpoints' error statuses.

An aiortc peer publishes audio and video with ``POST /whip/{room}``; a second aiortc peer
watches it with ``POST /whep/{room}/{identity}`` and decodes what the server forwards. Every
refused request must answer with the documented status and leave no room, participant or
transport behind.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from clients import TIMEOUT, frames, running_server

from sfu.app import Server
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM = "whip-room"
BOTH = Grant.PUBLISH | Grant.SUBSCRIBE


def token(
    server: Server,
    identity: str,
    *,
    room: str = ROOM,
    grants: Grant = BOTH,
    secret: str | None = None,
) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=room, identity=identity, name=identity, grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(secret or server.token_secret, claims))


async def request(
    method: str,
    url: str,
    *,
    body: str | bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, str, Mapping[str, str]]:
    """One HTTP request; returns (status, body text, headers)."""
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, data=body, headers=dict(headers or {})) as resp,
    ):
        return resp.status, await resp.text(errors="replace"), dict(resp.headers)


def sdp_headers(bearer: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/sdp"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    return headers


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def publisher_offer(pc: RTCPeerConnection) -> str:
    """A sendonly audio + video offer from ``pc`` (its local description is set)."""
    pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
    pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


async def wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate()`` until it is true (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def wait_connected(pc: RTCPeerConnection) -> None:
    await wait_for(lambda: pc.connectionState == "connected")


def assert_no_state(server: Server) -> None:
    assert server.rooms is not None
    assert server.rooms.rooms == {}
    assert server.rooms.participant_count() == 0
    assert server.port.transport_count == 0
    assert server.http_sessions.by_id == {}


def test_whip_publish_whep_watch_and_delete() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            assert server.rooms is not None
            publisher, viewer = new_pc(), new_pc()
            try:
                # -- WHIP: publish --
                offer = await publisher_offer(publisher)
                status, answer, headers = await request(
                    "POST",
                    f"{base}/whip/{ROOM}",
                    body=offer,
                    headers=sdp_headers(token(server, "caster")),
                )
                assert status == 201, answer
                assert headers["Content-Type"].startswith("application/sdp")
                whip_location = headers["Location"]
                assert re.fullmatch(rf"/whip/{ROOM}/[A-Za-z0-9_-]{{16,}}", whip_location)
                assert "a=ice-lite" in answer
                await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                await wait_connected(publisher)

                room = server.rooms.rooms[ROOM]
                (caster,) = room.participants.values()
                assert caster.identity == "caster" and caster.kind == "whip"
                assert caster.peer is not None
                kinds = sorted(p.kind for p in caster.peer.publications.values())
                assert kinds == ["audio", "video"]

                # A second WHIP session for the same identity is refused while it publishes.
                status, text, _ = await request(
                    "POST",
                    f"{base}/whip/{ROOM}",
                    body=offer,
                    headers=sdp_headers(token(server, "caster")),
                )
                assert status == 409, text
                # WHEP for someone who is not in the (existing) room.
                viewer_token = token(server, "viewer", grants=Grant.SUBSCRIBE)
                status, text, _ = await request(
                    "POST",
                    f"{base}/whep/{ROOM}/nobody",
                    body=offer,
                    headers=sdp_headers(viewer_token),
                )
                assert status == 404, text
                assert len(room.participants) == 1 and server.port.transport_count == 1

                # -- WHEP: watch the caster --
                received: dict[str, MediaStreamTrack] = {}
                viewer.on("track", lambda track: received.setdefault(track.kind, track))
                viewer.addTransceiver("audio", direction="recvonly")
                viewer.addTransceiver("video", direction="recvonly")
                await viewer.setLocalDescription(await viewer.createOffer())
                status, answer, headers = await request(
                    "POST",
                    f"{base}/whep/{ROOM}/caster",
                    body=viewer.localDescription.sdp,
                    headers=sdp_headers(viewer_token),
                )
                assert status == 201, answer
                whep_location = headers["Location"]
                assert re.fullmatch(rf"/whep/{ROOM}/caster/[A-Za-z0-9_-]{{16,}}", whep_location)
                assert answer.count("a=sendonly") == 2
                await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                assert set(received) == {"audio", "video"}
                await wait_connected(viewer)
                assert await asyncio.wait_for(frames(received["video"], 10), TIMEOUT) == 10
                assert await asyncio.wait_for(frames(received["audio"], 10), TIMEOUT) == 10

                watchers = [p for p in room.participants.values() if p.kind == "whep"]
                assert [w.identity for w in watchers] == ["viewer"]
                assert server.port.transport_count == 2
                assert len(server.http_sessions.by_id) == 2

                # -- DELETE both sessions --
                status, text, _ = await request("DELETE", base + whep_location)
                assert status == 200, text
                assert [p.identity for p in room.participants.values()] == ["caster"]
                status, text, _ = await request("DELETE", base + whip_location)
                assert status == 200, text
                await wait_for(lambda: server.port.transport_count == 0)
                assert_no_state(server)
                # The locations are gone for good.
                for location in (whip_location, whep_location):
                    status, _, _ = await request("DELETE", base + location)
                    assert status == 404
            finally:
                await publisher.close()
                await viewer.close()
            assert_no_state(server)

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))


NO_FINGERPRINT_MARK = "no-fingerprint"


@pytest.mark.parametrize(
    ("case", "status", "needle"),
    [
        ("no token", 401, "token missing"),
        ("malformed token", 401, "token malformed"),
        ("bad signature", 401, "token bad signature"),
        ("wrong room", 401, "token wrong room"),
        ("no publish grant", 403, "publish grant"),
        ("wrong content type", 415, "application/sdp"),
        ("empty body", 400, "empty body"),
        ("garbage sdp", 400, "malformed SDP line"),
        ("no fingerprint", 400, "fingerprint"),
    ],
)
def test_whip_refusals_create_nothing(case: str, status: int, needle: str) -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            pc = new_pc()
            try:
                offer = await publisher_offer(pc)
            finally:
                await pc.close()
            bearer: str | None = token(server, "caster")
            headers: dict[str, str] | None = None
            body: str = offer
            if case == "no token":
                bearer = None
            elif case == "malformed token":
                bearer = "not-a-jwt"
            elif case == "bad signature":
                bearer = token(server, "caster", secret="x" * 40)
            elif case == "wrong room":
                bearer = token(server, "caster", room="another-room")
            elif case == "no publish grant":
                bearer = token(server, "caster", grants=Grant.SUBSCRIBE)
            elif case == "wrong content type":
                headers = {"Content-Type": "text/plain", "Authorization": f"Bearer {bearer}"}
            elif case == "empty body":
                body = ""
            elif case == "garbage sdp":
                body = "this is not an SDP offer\r\n"
            elif case == "no fingerprint":
                body = "".join(
                    line
                    for line in offer.splitlines(keepends=True)
                    if not line.startswith("a=fingerprint")
                )
            got, text, response_headers = await request(
                "POST",
                f"{base}/whip/{ROOM}",
                body=body,
                headers=headers if headers is not None else sdp_headers(bearer),
            )
            assert got == status, text
            assert needle in text
            assert "Location" not in response_headers
            if status == 401:
                assert response_headers.get("WWW-Authenticate", "").startswith("Bearer")
            assert_no_state(server)

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))


def test_whep_and_session_refusals_create_nothing() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            pc = new_pc()
            try:
                pc.addTransceiver("audio", direction="recvonly")
                pc.addTransceiver("video", direction="recvonly")
                await pc.setLocalDescription(await pc.createOffer())
                offer = pc.localDescription.sdp
            finally:
                await pc.close()
            viewer = token(server, "viewer", grants=Grant.SUBSCRIBE)
            checks: list[tuple[str, str, str | None, dict[str, str], int]] = [
                # WHEP for a participant who is not there (the room does not exist either).
                ("POST", f"/whep/{ROOM}/caster", offer, sdp_headers(viewer), 404),
                # WHEP refusals before the room is even looked at.
                ("POST", f"/whep/{ROOM}/caster", offer, sdp_headers(None), 401),
                (
                    "POST",
                    f"/whep/{ROOM}/caster",
                    offer,
                    sdp_headers(token(server, "viewer", grants=Grant.PUBLISH)),
                    403,
                ),
                (
                    "POST",
                    f"/whep/{ROOM}/caster",
                    offer,
                    {"Content-Type": "application/json", "Authorization": f"Bearer {viewer}"},
                    415,
                ),
                # Unknown sessions.
                ("DELETE", f"/whip/{ROOM}/AAAAAAAAAAAAAAAAAAAAAA", None, {}, 404),
                ("DELETE", f"/whep/{ROOM}/caster/AAAAAAAAAAAAAAAAAAAAAA", None, {}, 404),
                # Methods the endpoints do not have.
                ("GET", f"/whip/{ROOM}", None, {}, 405),
                ("PUT", f"/whip/{ROOM}", offer, sdp_headers(viewer), 405),
                ("GET", f"/whep/{ROOM}/caster", None, {}, 405),
            ]
            for method, path, body, headers, status in checks:
                got, text, response_headers = await request(
                    method, base + path, body=body, headers=headers
                )
                assert got == status, (method, path, got, text)
                if status == 401:
                    assert response_headers.get("WWW-Authenticate", "").startswith("Bearer")
                assert_no_state(server)

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))


def test_refused_whip_offer_leaves_the_room_alone() -> None:
    """A bad WHIP offer for an identity that is already in the room (over the room protocol)
    neither replaces that participant nor shows a join/leave to the others."""

    async def scenario() -> None:
        async with running_server() as (server, base):
            assert server.rooms is not None
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                sockets = []
                for identity in ("caster", "other"):
                    ws = await session.ws_connect(f"{base}/ws")
                    join = {"type": "join", "protocol": 1, "room": ROOM}
                    await ws.send_json({**join, "token": token(server, identity)})
                    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "joined"
                    sockets.append(ws)
                caster = sockets[0]
                assert (await caster.receive_json(timeout=TIMEOUT))["type"] == "participant_joined"
                for body in ("garbage\r\n", "v=0\r\n"):
                    status, text, _ = await request(
                        "POST",
                        f"{base}/whip/{ROOM}",
                        body=body,
                        headers=sdp_headers(token(server, "caster")),
                    )
                    assert status == 400, text
                for n, ws in enumerate(sockets):
                    await ws.send_json({"type": "ping", "id": n})
                    reply = await ws.receive_json(timeout=TIMEOUT)
                    assert reply == {"type": "pong", "re": n}
                room = server.rooms.rooms[ROOM]
                assert sorted(p.identity for p in room.participants.values()) == [
                    "caster",
                    "other",
                ]
                assert server.port.transport_count == 0
                for ws in sockets:
                    await ws.close()
            await wait_for(lambda: server.rooms is not None and not server.rooms.rooms)

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))
