"""aiortc WHIP publishers and WHEP viewers through a supervisor of two forwarding workers:
two rooms at once (placed by load, so on both workers as soon as there are two), every
viewer decoding its room's audio and video, and each room's sessions on one worker only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time

import aiohttp
import pytest
from clients import LOOPBACK_CONFIG, TIMEOUT, frames, running_supervisor
from media_load import media_load

from sfu.io.http_limits import REFUSED_PER_SOURCE

pytestmark = pytest.mark.integration

ROOMS = ("room-a", "room-b", "room-c", "room-d")


def test_whip_and_whep_rooms_on_two_workers_decode() -> None:
    async def scenario() -> None:
        async with (
            running_supervisor(workers=2) as (supervisor, base),
            contextlib.AsyncExitStack() as stack,
        ):
            loads = [
                await stack.enter_async_context(
                    media_load(base, supervisor.token_secret, room, viewers=1)
                )
                for room in ROOMS
            ]
            # Placement spread the rooms over both workers, each room on one of them.
            placed = {room: supervisor.placement.worker_of(room) for room in ROOMS}
            assert set(placed.values()) == {0, 1}, placed
            # Media keeps flowing to every viewer of every room.
            for load in loads:
                await asyncio.wait_for(frames(load.tracks[0]["video"], 10), TIMEOUT)
                await asyncio.wait_for(frames(load.tracks[0]["audio"], 10), TIMEOUT)

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))


#: Connections one source may hold on the supervisor's public listener in the limits test.
PER_SOURCE = 3
FLOOD = 6


def test_the_public_listener_keeps_the_http_limits() -> None:
    """The supervisor's listener applies sfu/io/http_limits.py: connections beyond the
    per-source cap are refused at once, and other sources are still served."""
    config = dataclasses.replace(
        LOOPBACK_CONFIG,
        http=dataclasses.replace(LOOPBACK_CONFIG.http, max_connections_per_source=PER_SOURCE),
    )

    async def scenario() -> None:
        async with running_supervisor(config, workers=2) as (supervisor, base):
            port = int(supervisor.http_addresses[0][1])
            flood = []
            for _ in range(FLOOD):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.bind(("127.0.0.3", 0))
                s.connect_ex(("127.0.0.1", port))
                flood.append(s)
            try:
                deadline = time.monotonic() + TIMEOUT
                while supervisor.limiter.refused[REFUSED_PER_SOURCE] < FLOOD - PER_SOURCE:
                    assert time.monotonic() < deadline, supervisor.limiter.refused
                    await asyncio.sleep(0.05)
                assert supervisor.limiter.peak_per_source == PER_SOURCE
                async with (
                    aiohttp.ClientSession() as http,
                    http.get(base + "/readyz") as resp,
                ):
                    assert resp.status == 200
            finally:
                for s in flood:
                    s.close()

    asyncio.run(asyncio.wait_for(scenario(), 2 * TIMEOUT))
