"""WHIP and WHEP in a room spread over two forwarding workers, with aiortc on both ends.

``server.room_spread_subscribers = 1``: the WHIP publisher is alone on the room's home
worker, so a WHEP viewer is placed on the other worker like a WebSocket joiner; its ``POST``
waits there for the publisher's tracks to arrive over the room bus, and it decodes what
the pipe relays (aiortc's encoder sends a keyframe only when asked, so a decoded picture
proves the keyframe request went up the pipe). The session's ``PATCH`` and ``DELETE``
reach that worker (the home would answer 404), and a room policy write reaches both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from clients import LOOPBACK_CONFIG, TIMEOUT, frames, running_supervisor

from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM = "spread-whep"
CONFIG = dataclasses.replace(
    LOOPBACK_CONFIG,
    server=dataclasses.replace(LOOPBACK_CONFIG.server, room_spread_subscribers=1),
)
FRAG = "application/trickle-ice-sdpfrag"


def token(secret: str, identity: str, grants: Grant) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM, identity=identity, name=identity, grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(secret, claims))


async def request(
    method: str, url: str, *, body: str | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, str, Mapping[str, str]]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, data=body, headers=dict(headers or {})) as resp,
    ):
        return resp.status, await resp.text(errors="replace"), dict(resp.headers)


async def wait_connected(pc: RTCPeerConnection) -> None:
    deadline = time.monotonic() + TIMEOUT
    while pc.connectionState != "connected":
        assert time.monotonic() < deadline, "not connected in time"
        await asyncio.sleep(0.05)


def test_whep_viewer_on_a_shard_decodes_and_its_session_sticks() -> None:
    async def scenario() -> None:
        async with running_supervisor(CONFIG, workers=2) as (supervisor, base):
            secret = supervisor.token_secret
            publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
                publisher.addTransceiver(VideoStreamTrack(), direction="sendonly")
                await publisher.setLocalDescription(await publisher.createOffer())
                status, answer, headers = await request(
                    "POST",
                    f"{base}/whip/{ROOM}",
                    body=publisher.localDescription.sdp,
                    headers={
                        "Content-Type": "application/sdp",
                        "Authorization": f"Bearer {token(secret, 'caster', Grant.PUBLISH)}",
                    },
                )
                assert status == 201, answer
                whip_location = headers["Location"]
                home = supervisor.placement.worker_of(ROOM)
                assert home is not None
                assert supervisor.session_worker(whip_location.rsplit("/", 1)[-1]) == home
                await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                await wait_connected(publisher)

                received: dict[str, MediaStreamTrack] = {}
                viewer.on("track", lambda track: received.setdefault(track.kind, track))
                viewer.addTransceiver("audio", direction="recvonly")
                viewer.addTransceiver("video", direction="recvonly")
                await viewer.setLocalDescription(await viewer.createOffer())
                bearer = token(secret, "viewer", Grant.SUBSCRIBE)
                status, answer, headers = await request(
                    "POST",
                    f"{base}/whep/{ROOM}/caster",
                    body=viewer.localDescription.sdp,
                    headers={
                        "Content-Type": "application/sdp",
                        "Authorization": f"Bearer {bearer}",
                    },
                )
                assert status == 201, answer
                location = headers["Location"]
                session_id = location.rsplit("/", 1)[-1]
                shard = supervisor.session_worker(session_id)
                assert shard is not None and shard != home
                assert supervisor.placement.shards_of(ROOM) == {home, shard}
                # Both tracks were there when the viewer joined the shard.
                assert answer.count("a=sendonly") == 2
                await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                assert set(received) == {"audio", "video"}
                await wait_connected(viewer)
                assert await asyncio.wait_for(frames(received["video"], 10), TIMEOUT) == 10
                assert await asyncio.wait_for(frames(received["audio"], 10), TIMEOUT) == 10

                # The supervisor's metrics count the session on its shard.
                status, text, _ = await request("GET", f"{base}/metrics")
                assert status == 200
                assert f'sfu_worker_http_sessions{{worker="{shard}"}} 1.0' in text, text

                # The session lives on the shard only: the home does not know it.
                frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
                home_url = supervisor.workers[home].base_url
                status, _, _ = await request(
                    "PATCH", home_url + location, body=frag, headers={"Content-Type": FRAG}
                )
                assert status == 404
                # Through the public port the PATCH (an ICE restart) reaches the shard.
                status, text, _ = await request(
                    "PATCH", base + location, body=frag, headers={"Content-Type": FRAG}
                )
                assert status == 200, text
                assert "a=ice-ufrag:" in text and "a=ice-pwd:" in text

                # A room policy written through the public port reaches both workers.
                admin = token(secret, "host", Grant.ADMIN)
                status, text, _ = await request(
                    "PUT",
                    f"{base}/rooms/{ROOM}/policy",
                    body='{"max_participants": 7}',
                    headers={
                        "Content-Type": "application/json",
                        "Authorization": f"Bearer {admin}",
                    },
                )
                assert status == 200, text
                for worker in supervisor.workers:
                    status, text, _ = await request(
                        "GET",
                        f"{worker.base_url}/rooms/{ROOM}/policy",
                        headers={"Authorization": f"Bearer {admin}"},
                    )
                    assert status == 200 and '"max_participants": 7' in text, text

                # DELETE reaches the shard, and the session no longer counts there.
                status, text, _ = await request("DELETE", base + location)
                assert status == 200, text
                assert supervisor.session_worker(session_id) is None
                assert supervisor.placement.shards_of(ROOM) == {home}
                status, _, _ = await request("DELETE", base + location)
                assert status == 404
                # A session that ends on its worker without the supervisor seeing a DELETE
                # (here deleted on the worker's own listener; a failed transport alike) stops
                # counting once the supervisor asks the worker (every few seconds).
                whip_id = whip_location.rsplit("/", 1)[-1]
                status, text, _ = await request("DELETE", home_url + whip_location)
                assert status == 200, text
                assert supervisor.session_worker(whip_id) == home
                deadline = time.monotonic() + TIMEOUT
                while supervisor.session_worker(whip_id) is not None:
                    assert time.monotonic() < deadline, "the ended session is still counted"
                    await asyncio.sleep(0.1)
                assert supervisor.http_session_count == 0
            finally:
                await publisher.close()
                await viewer.close()

    asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT))


def test_whep_on_a_shard_for_nobody_is_404_and_leaves_no_shard() -> None:
    async def scenario() -> None:
        async with running_supervisor(CONFIG, workers=2) as (supervisor, base):
            secret = supervisor.token_secret
            viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                viewer.addTransceiver("video", direction="recvonly")
                await viewer.setLocalDescription(await viewer.createOffer())
                bearer = token(secret, "viewer", Grant.SUBSCRIBE)
                started = time.monotonic()
                status, text, _ = await request(
                    "POST",
                    f"{base}/whep/{ROOM}/nobody",
                    body=viewer.localDescription.sdp,
                    headers={
                        "Content-Type": "application/sdp",
                        "Authorization": f"Bearer {bearer}",
                    },
                )
                assert status == 404, text
                assert time.monotonic() - started < TIMEOUT
                # The refused viewer counts nowhere.
                assert supervisor.http_session_count == 0
                assert supervisor.placement.shards_of(ROOM) <= {
                    supervisor.placement.worker_of(ROOM)
                }
            finally:
                await viewer.close()

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
