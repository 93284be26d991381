"""Room policies and bans survive a restart of the real server (``rooms.state_dir``).

A server sets a password, ``e2ee_required`` and a lock through the admin API and bans an
identity; it stops, a new server starts on the same state directory, and every rule is still
enforced over the room protocol and WHIP. A corrupt state file stops the server, naming it.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from pathlib import Path

import pytest
from clients import LOOPBACK_CONFIG, running_server
from test_meeting_security import bearer, enter, join_message, refused
from test_room_signaling import run, session
from test_whip_whep_aiortc import new_pc, publisher_offer, request, sdp_headers, token

from sfu.app import run as run_server
from sfu.config import AuthConfig, Config, RoomsConfig
from sfu.room.identity import Grant
from sfu.room.persistence import STATE_FILE

pytestmark = pytest.mark.integration

SECRET_ROOM, E2EE_ROOM, LOCKED_ROOM, BAN_ROOM = "pw-room", "e2ee-room", "locked-room", "ban-room"


def _config(state: Path) -> Config:
    return dataclasses.replace(
        LOOPBACK_CONFIG,
        # One signing key for both processes, so tokens outlive the restart.
        auth=AuthConfig(jwt_secret=secrets.token_urlsafe(32)),
        rooms=RoomsConfig(waiting_room=False, state_dir=str(state)),
    )


def test_password_e2ee_lock_and_ban_still_enforced_after_a_restart(tmp_path: Path) -> None:
    config = _config(tmp_path / "state")

    async def scenario() -> None:
        async with running_server(config) as (server, base), session() as http:
            assert server.rooms is not None
            for room, change in (
                (SECRET_ROOM, {"password": "opensesame"}),
                (E2EE_ROOM, {"e2ee_required": True}),
                (LOCKED_ROOM, {"locked": True}),
            ):
                admin = bearer(server, "room-admin", Grant.ADMIN, room=room)
                async with http.put(
                    f"{base}/rooms/{room}/policy", json=change, headers=admin
                ) as resp:
                    assert resp.status == 200, await resp.text()
            now = time.monotonic()
            server.rooms.bans.ban(BAN_ROOM, "mallory", now + 600.0, now)

        async with running_server(config) as (server, base), session() as http:
            assert server.rooms is not None
            assert (await refused(http, base, join_message(server, "eve", room=SECRET_ROOM)))[
                0
            ] == "password_required"
            alice = await enter(
                http, base, join_message(server, "alice", room=SECRET_ROOM, password="opensesame")
            )
            assert alice.joined["policy"]["password_set"]
            await alice.ws.close()
            locked = join_message(server, "eve", room=LOCKED_ROOM)
            assert (await refused(http, base, locked))[0] == "room_locked"
            banned = join_message(server, "mallory", room=BAN_ROOM)
            assert (await refused(http, base, banned))[0] == "banned"
            assert (await enter(http, base, join_message(server, "bob", room=BAN_ROOM))).joined
            pc = new_pc()
            try:
                status, text, _ = await request(
                    "POST",
                    f"{base}/whip/{E2EE_ROOM}",
                    body=await publisher_offer(pc),
                    headers=sdp_headers(token(server, "cam", room=E2EE_ROOM)),
                )
            finally:
                await pc.close()
            assert status == 403 and "end-to-end" in text, (status, text)

    run(scenario)


def test_a_corrupt_state_file_stops_the_server_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(b"not sqlite" * 64)

    async def scenario() -> None:
        assert await run_server(_config(state)) == 1

    run(scenario)
    assert str(state / STATE_FILE) in caplog.text
