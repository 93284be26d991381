"""`sfu serve` with two forwarding workers: one HTTP port, rooms placed on workers, a worker
killed with SIGKILL is restarted and only its own rooms' participants reconnect.

The real process tree (supervisor plus two worker processes) on loopback ports picked by the
kernel; the room protocol through the supervisor's public port.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serve_process import HTTP_RE, TIMEOUT, ServeProcess, http_get

from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

SECRET = "workers-test-secret-" + "x" * 32
WORKER_READY_RE = re.compile(r"worker (\d+) ready \(pid (\d+)\)")
#: The browser client's reconnect budget (docs/protocol.md): a killed room is back within it.
RECONNECT_BUDGET_S = 3.0
#: Most rooms tried before two of them land on different workers (placement is randomised).
MAX_ROOMS_TRIED = 8


def token(room: str, identity: str) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=room,
        identity=identity,
        name=identity,
        grants=Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST,
        iat=now,
        exp=now + 600,
    )
    return str(issue_token(SECRET, claims))


async def join(http: aiohttp.ClientSession, port: int, room: str, identity: str) -> Any:
    """A joined room-protocol connection through the supervisor (its ``joined`` read)."""
    ws = await http.ws_connect(f"http://127.0.0.1:{port}/ws")
    await ws.send_str(
        json.dumps({"type": "join", "protocol": 1, "room": room, "token": token(room, identity)})
    )
    first = await next_message(ws)
    assert first["type"] == "joined", first
    return ws


async def next_message(ws: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


async def ping(ws: Any) -> None:
    """The connection still carries requests and replies end to end."""
    await ws.send_str(json.dumps({"type": "ping", "id": 7}))
    while True:
        reply = await next_message(ws)
        if reply.get("type") == "pong":
            assert reply.get("re") == 7
            return


async def worker_rooms(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """``sfu_worker_rooms`` by worker index, from the supervisor's metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^sfu_worker_rooms\{worker="(\d+)"\} (\S+)$', text, re.MULTILINE)
    }


@pytest.fixture
def server(tmp_path: Path) -> Any:
    path = tmp_path / "sfu.toml"
    path.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        "[server]\nworkers = 2\ndrain_timeout_s = 2.0\n"
        "[rooms]\nwaiting_room = false\n"
        f'[audit]\npath = "{tmp_path / "audit"}"\n'
    )
    proc = ServeProcess(path, extra_env={"SFU_AUTH_JWT_SECRET": SECRET})
    yield proc
    proc.stop()


def worker_pids(server: ServeProcess) -> dict[int, int]:
    """The latest pid each worker reported ready with (from the supervisor's log)."""
    server.wait_for(HTTP_RE)
    pids: dict[int, int] = {}
    for line in server.lines:
        if m := WORKER_READY_RE.search(line):
            pids[int(m.group(1))] = int(m.group(2))
    return pids


def test_rooms_spread_over_workers_and_a_killed_worker_only_moves_its_own_rooms(
    server: ServeProcess,
) -> None:
    port = int(server.wait_for(HTTP_RE).group(1))
    pids = worker_pids(server)
    assert sorted(pids) == [0, 1], server.log
    assert http_get(port, "/readyz") == (200, {"status": "ok"})
    # The workers' own load reports are not reachable through the public listener.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_worker/load", timeout=TIMEOUT)
    assert refused.value.code == 404
    # The public listener's connections are in the merged metrics, next to the workers'.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as resp:
        text = resp.read().decode()
    assert re.search(r'^sfu_http_connections\{listener="public"\} [1-9]', text, re.MULTILINE)
    assert re.search(r'^sfu_rooms\{worker="1"\} ', text, re.MULTILINE), text[:2000]

    async def scenario() -> int:
        async with aiohttp.ClientSession() as http:
            # Rooms until two are on different workers (each new room bumps its worker's load).
            sockets: dict[str, Any] = {}
            placed: dict[str, str] = {}
            before = await worker_rooms(http, port)
            for i in range(MAX_ROOMS_TRIED):
                room = f"room-{i}"
                sockets[room] = await join(http, port, room, f"alice-{i}")
                after = await worker_rooms(http, port)
                placed[room] = next(w for w in after if after[w] > before.get(w, 0.0))
                before = after
                if len(set(placed.values())) == 2:
                    break
            assert len(set(placed.values())) == 2, placed
            victim_room = next(iter(placed))
            victim = placed[victim_room]
            survivors = [r for r, w in placed.items() if w != victim]
            for ws in sockets.values():
                await ping(ws)

            os.kill(pids[int(victim)], signal.SIGKILL)
            killed_at = time.monotonic()

            # The killed worker's participants are told, and their connection closes with
            # 1001 (going away), which the browser client reconnects after.
            notice = await next_message(sockets[victim_room], timeout=RECONNECT_BUDGET_S)
            assert notice["type"] == "server_draining"
            closed = await sockets[victim_room].receive(timeout=RECONNECT_BUDGET_S)
            assert closed.type == aiohttp.WSMsgType.CLOSE
            assert closed.data == aiohttp.WSCloseCode.GOING_AWAY
            # The rejoin is placed on a live worker at once.
            again = await join(http, port, victim_room, "alice-again")
            assert time.monotonic() - killed_at < RECONNECT_BUDGET_S
            await ping(again)
            # Participants on the other worker never noticed.
            for room in survivors:
                assert not sockets[room].closed
                await ping(sockets[room])
            for ws in [again, *sockets.values()]:
                await ws.close()
            return int(victim)

    victim = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))

    # The supervisor restarted the killed worker (a new pid for the same index), and the
    # whole server reports ready again.
    old = pids[victim]
    server.wait_for(re.compile(rf"worker {victim} ready \(pid (?!{old}\))\d+\)"))
    assert http_get(port, "/readyz") == (200, {"status": "ok"})
