"""aiortc, a third-party WebRTC stack, completes ICE + DTLS-SRTP with the server via /echo
and decodes its own audio and video coming back."""

from __future__ import annotations

import asyncio

import pytest
from clients import TIMEOUT, aiortc_echo, delete, frames, running_server

pytestmark = pytest.mark.integration


def test_aiortc_echo_round_trip() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), aiortc_echo(base) as echo:
            _pc, tracks, location, answer = echo
            assert "a=ice-lite" in answer
            assert set(tracks) == {"audio", "video"}
            # Decoded frames of our own media, back through the server.
            assert await asyncio.wait_for(frames(tracks["video"], 10), TIMEOUT) == 10
            assert await asyncio.wait_for(frames(tracks["audio"], 10), TIMEOUT) == 10
            transport = server.port.get(location.rsplit("/", 1)[1])
            assert transport is not None and transport.has_srtp
            session = server.echo.sessions[transport.id] if server.echo else None
            assert session is not None and session.forwarded > 20
            assert await delete(base, location) == 204
            assert server.port.transport_count == 0
            assert await delete(base, location) == 404

    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
