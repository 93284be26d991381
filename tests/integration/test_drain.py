"""Drain on SIGTERM with a connected client, against the real ``sfu serve`` process.

On SIGTERM the server must stop being ready, refuse new joins with a clear reason, tell the
participants already in meetings, keep serving them, and exit as soon as the last one leaves
(or when the drain deadline passes, whichever comes first).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serve_process import HTTP_RE, TIMEOUT, ServeProcess, http_get

from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

SECRET = "drain-test-secret-" + "x" * 32
ROOM = "drain-room"
#: Long enough that exiting well before it proves the server waited for the last session only.
DEADLINE_S = 20.0


def token(identity: str) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM,
        identity=identity,
        name=identity,
        grants=Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST,
        iat=now,
        exp=now + 600,
    )
    return str(issue_token(SECRET, claims))


async def join(http: aiohttp.ClientSession, port: int, identity: str) -> Any:
    ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
    await ws.send_str(
        json.dumps({"type": "join", "protocol": 1, "room": ROOM, "token": token(identity)})
    )
    return ws


async def next_message(ws: Any) -> dict[str, Any]:
    msg = await ws.receive(timeout=TIMEOUT)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def server(tmp_path: Path) -> Any:
    path = tmp_path / "sfu.toml"
    path.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        f"[server]\ndrain_timeout_s = {DEADLINE_S}\n"
    )
    proc = ServeProcess(path, extra_env={"SFU_AUTH_JWT_SECRET": SECRET})
    yield proc
    proc.kill()


def test_sigterm_drains_until_the_last_participant_leaves(server: ServeProcess) -> None:
    port = int(server.wait_for(HTTP_RE).group(1))

    async def scenario() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            ws = await join(http, port, "ada")
            assert (await next_message(ws))["type"] == "joined"

            server.proc.send_signal(signal.SIGTERM)
            notice = await next_message(ws)
            assert notice["type"] == "server_draining"
            assert notice["deadline_s"] == DEADLINE_S
            status, body = await asyncio.to_thread(http_get, port, "/readyz")
            assert (status, body) == (503, {"status": "unavailable", "reason": "draining"})
            assert (await asyncio.to_thread(http_get, port, "/healthz"))[0] == 200

            # A newcomer is refused with a reason it can act on (try again: 1013).
            late = await join(http, port, "grace")
            refusal = await next_message(late)
            assert (refusal["type"], refusal["code"]) == ("error", "server_draining")
            closing = await late.receive(timeout=TIMEOUT)
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert late.close_code == 1013
            assert "shutting down" in str(closing.extra)

            # The meeting already under way keeps working while the server drains.
            await ws.send_str(json.dumps({"type": "ping", "id": 7}))
            assert await next_message(ws) == {"type": "pong", "re": 7}
            await asyncio.sleep(0.5)
            assert server.proc.poll() is None, "exited while a participant was still there"

            left_at = time.monotonic()
            await ws.send_str(json.dumps({"type": "leave"}))
            await ws.receive(timeout=TIMEOUT)
            rc = await asyncio.to_thread(server.finish)
            assert rc == 0, server.log
            assert time.monotonic() - left_at < DEADLINE_S / 2, "waited for the deadline"

    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
    assert "drain complete: no sessions left" in server.log
    assert "Traceback" not in server.log


def test_drain_deadline_ends_sessions_that_stay(tmp_path: Path) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        "[server]\ndrain_timeout_s = 1.0\n"
    )
    proc = ServeProcess(path, extra_env={"SFU_AUTH_JWT_SECRET": SECRET})
    try:
        port = int(proc.wait_for(HTTP_RE).group(1))

        async def scenario() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
                ws = await join(http, port, "stays")
                assert (await next_message(ws))["type"] == "joined"
                proc.proc.send_signal(signal.SIGTERM)
                assert (await next_message(ws))["type"] == "server_draining"
                closing = await ws.receive(timeout=TIMEOUT)  # the deadline ends the session
                assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1001

        asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))
        assert proc.finish() == 0
        assert "drain deadline passed with 1 session(s) still open" in proc.log
    finally:
        proc.kill()
