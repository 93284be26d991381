"""aiortc, a third-party WebRTC stack, completes ICE + DTLS-SRTP with the server via /echo
and decodes its own audio and video coming back."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from clients import TIMEOUT, delete, post_offer, running_server

pytestmark = pytest.mark.integration


async def _count_frames(track: MediaStreamTrack, want: int) -> int:
    got = 0
    while got < want:
        frame = await track.recv()
        assert frame is not None
        got += 1
    return got


def test_aiortc_echo_round_trip() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            tracks: dict[str, MediaStreamTrack] = {}
            pc.on("track", lambda track: tracks.setdefault(track.kind, track))
            pc.addTrack(AudioStreamTrack())
            pc.addTrack(VideoStreamTrack())
            try:
                await pc.setLocalDescription(await pc.createOffer())
                status, answer, location = await post_offer(base, "/echo", pc.localDescription.sdp)
                assert status == 201, answer
                assert location is not None and location.startswith("/echo/")
                assert "a=ice-lite" in answer
                await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                assert set(tracks) == {"audio", "video"}
                # Decoded frames of our own media, back through the server.
                video = await asyncio.wait_for(_count_frames(tracks["video"], 10), TIMEOUT)
                audio = await asyncio.wait_for(_count_frames(tracks["audio"], 10), TIMEOUT)
                assert (video, audio) == (10, 10)
                transport = server.port.get(location.rsplit("/", 1)[1])
                assert transport is not None and transport.has_srtp
                session = server.echo.sessions[transport.id] if server.echo else None
                assert session is not None and session.forwarded > 20
                assert await delete(base, location) == 204
                assert server.port.transport_count == 0
                assert await delete(base, location) == 404
            finally:
                await pc.close()

    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
