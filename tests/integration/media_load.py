"""A small real media load for observability tests: one aiortc WHIP publisher, WHEP viewers.

Every connection does the real signaling, ICE and DTLS-SRTP handshake with the server, so the
counters, handshake histograms and gauges that the metrics expose all move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from clients import TIMEOUT, frames

from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

PUBLISHER = "caster"


def bearer(secret: str, room: str, identity: str, grants: Grant) -> str:
    """A ten-minute join token."""
    now = int(time.time())
    claims = JoinClaims(
        room=room, identity=identity, name=identity, grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(secret, claims))


async def _post(base: str, path: str, sdp: str, token: str) -> tuple[str, str]:
    """POST an offer; returns (answer, Location)."""
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.post(base + path, data=sdp, headers=headers) as resp,
    ):
        body = await resp.text()
        assert resp.status == 201, (resp.status, body)
        return body, resp.headers["Location"]


async def _delete(base: str, location: str) -> None:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        http.delete(base + location) as resp,
    ):
        assert resp.status in (200, 404), resp.status


async def _connected(pc: RTCPeerConnection) -> None:
    deadline = time.monotonic() + TIMEOUT
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, "peer connection did not connect"
        await asyncio.sleep(0.05)


async def watch(
    viewer: RTCPeerConnection, base: str, secret: str, room: str, identity: str
) -> tuple[dict[str, MediaStreamTrack], str]:
    """Connect ``viewer`` as a WHEP viewer of the room's publisher at ``base``: its tracks
    by kind (as they arrive) and its session's Location."""
    received: dict[str, MediaStreamTrack] = {}
    viewer.on("track", lambda track, r=received: r.setdefault(track.kind, track))
    viewer.addTransceiver("audio", direction="recvonly")
    viewer.addTransceiver("video", direction="recvonly")
    await viewer.setLocalDescription(await viewer.createOffer())
    token = bearer(secret, room, identity, Grant.SUBSCRIBE)
    answer, location = await _post(
        base, f"/whep/{room}/{PUBLISHER}", viewer.localDescription.sdp, token
    )
    await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await _connected(viewer)
    return received, location


@dataclass
class MediaLoad:
    """The running load: connections, their WHIP/WHEP locations and received tracks."""

    base: str
    publisher: RTCPeerConnection
    viewers: list[RTCPeerConnection] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    tracks: list[dict[str, MediaStreamTrack]] = field(default_factory=list)

    async def stop_viewer(self, index: int) -> None:
        """End one viewer's WHEP session (DELETE) and close its connection."""
        await _delete(self.base, self.locations[index + 1])
        await self.viewers[index].close()


@contextlib.asynccontextmanager
async def media_load(base: str, secret: str, room: str, viewers: int) -> AsyncIterator[MediaLoad]:
    """Publish audio+video over WHIP and watch it with ``viewers`` WHEP clients, decoding."""
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    load = MediaLoad(base, publisher)
    try:
        publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
        publisher.addTransceiver(VideoStreamTrack(), direction="sendonly")
        await publisher.setLocalDescription(await publisher.createOffer())
        token = bearer(secret, room, PUBLISHER, Grant.PUBLISH)
        answer, location = await _post(base, f"/whip/{room}", publisher.localDescription.sdp, token)
        load.locations.append(location)
        await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await _connected(publisher)
        for i in range(viewers):
            viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            load.viewers.append(viewer)
            received, location = await watch(viewer, base, secret, room, f"viewer-{i}")
            load.locations.append(location)
            load.tracks.append(received)
        for received in load.tracks:
            await asyncio.wait_for(frames(received["video"], 5), TIMEOUT)
            await asyncio.wait_for(frames(received["audio"], 5), TIMEOUT)
        yield load
    finally:
        for location in reversed(load.locations):
            with contextlib.suppress(Exception):
                await _delete(base, location)
        for pc in (*load.viewers, publisher):
            await pc.close()
