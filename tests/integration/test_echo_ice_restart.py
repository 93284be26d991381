"""ICE restart on a live session (PATCH with an SDP fragment, as WHIP does, RFC 9725 §4.3)."""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
import pytest
from clients import TIMEOUT, aiortc_echo, frames, running_server

from sfu.packet.stun import StunClass, StunMessage, binding_request

pytestmark = pytest.mark.integration

FRAG = "application/trickle-ice-sdpfrag"
CLIENT_UFRAG, CLIENT_PWD = "NewClientUfrag", "NewClientPasswordIs22chars"


async def _patch(base: str, location: str, body: str, content_type: str = FRAG) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.patch(base + location, data=body, headers={"Content-Type": content_type}) as r,
    ):
        return r.status, await r.text()


def _check(port: int, username: str, key: bytes) -> StunMessage:
    """Send one connectivity check from a fresh socket and return the server's answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        request = binding_request(
            os.urandom(12), username, key, 12345, controlling=True, tie_breaker=99
        )
        sock.sendto(request, ("127.0.0.1", port))
        return StunMessage.parse(sock.recv(2048))


def test_ice_restart_swaps_credentials_and_keeps_media_flowing() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), aiortc_echo(base, audio=False) as echo:
            _pc, tracks, location, _answer = echo
            await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)
            transport = server.port.get(location.rsplit("/", 1)[1])
            assert transport is not None
            old = transport.ice.local_credentials
            media_port = server.media_address[1]

            frag = f"a=ice-ufrag:{CLIENT_UFRAG}\r\na=ice-pwd:{CLIENT_PWD}\r\n"
            status, body = await _patch(base, location, frag)
            assert status == 200, body
            lines = dict(line.split(":", 1) for line in body.split("\r\n") if line)
            new_ufrag, new_pwd = lines["a=ice-ufrag"], lines["a=ice-pwd"]
            assert (new_ufrag, new_pwd) != (old.ufrag, old.pwd)

            # Media keeps flowing on the selected pair through the restart.
            await asyncio.wait_for(frames(tracks["video"], 10), TIMEOUT)
            # New credentials are answered, old ones refused with 401.
            ok = await asyncio.to_thread(
                _check, media_port, f"{new_ufrag}:{CLIENT_UFRAG}", new_pwd.encode()
            )
            assert ok.msg_class is StunClass.SUCCESS
            stale = await asyncio.to_thread(
                _check, media_port, f"{old.ufrag}:{CLIENT_UFRAG}", old.pwd.encode()
            )
            assert stale.msg_class is StunClass.ERROR and stale.error_code is not None
            assert stale.error_code[0] == 401
            # A check without USE-CANDIDATE did not move the media away from aiortc.
            await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)

            # Bad requests are refused precisely and change nothing.
            assert (await _patch(base, location, frag, "text/plain"))[0] == 415
            candidate_only = "a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n"
            assert (await _patch(base, location, candidate_only))[0] == 422
            assert (await _patch(base, location, "a=ice-ufrag:x\r\na=ice-pwd:y\r\n"))[0] == 400
            assert (await _patch(base, "/echo/nope", frag))[0] == 404
            assert transport.ice.local_credentials.ufrag == new_ufrag

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
