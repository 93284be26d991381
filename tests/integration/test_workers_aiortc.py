"""aiortc WHIP publishers and WHEP viewers through a supervisor of two forwarding workers:
two rooms at once (placed by load, so on both workers as soon as there are two), every
viewer decoding its room's audio and video, and each room's sessions on one worker only."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from clients import TIMEOUT, frames, running_supervisor
from media_load import media_load

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
