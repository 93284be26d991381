"""werift WHEP viewers for every codec an aiortc publisher sends: the first keyframe arrives
within 1 s of the viewer's connection coming up.

werift (npm, pure TypeScript; ``tests/node``, installed by ``make`` with ``npm ci``) sends no
PLI of its own, so it sees video only from a keyframe the server made the publisher send for
it: the one a subscription asks for once its transport has keys (issue 18, bug 1). The
publisher's encoders make keyframes only every few seconds or more unless asked, and it has
been sending for a while when the viewer joins. werift does not decode; the first packet that
starts a keyframe stands for the first decodable frame.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from clients import TIMEOUT, running_server
from test_codecs_aiortc import (
    FIRST_FRAME_S,
    ROOM,
    assert_published,
    start_publisher,
)
from test_whip_whep_aiortc import token

from sfu.room.identity import Grant

pytestmark = pytest.mark.integration

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
VIEWER = NODE_DIR / "whep_viewer.mjs"
#: The viewer gives up (and exits) after this long.
VIEWER_LIMIT_S = 15


async def run_viewer(url: str, bearer: str) -> list[dict[str, Any]]:
    """Run the werift viewer to its end; returns the events it printed."""
    assert (NODE_DIR / "node_modules" / "werift").is_dir(), "run `make` (npm ci in tests/node)"
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(VIEWER),
        url,
        bearer,
        str(VIEWER_LIMIT_S),
        cwd=NODE_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), VIEWER_LIMIT_S + 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert events, err.decode()[-2000:]
    return events


@pytest.mark.parametrize("codec", ["VP8", "H264"])
def test_werift_whep_viewer_gets_a_keyframe_within_a_second(codec: str) -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            publisher = await start_publisher(server, base, codec)
            try:
                bearer = token(server, "werift", room=ROOM, grants=Grant.SUBSCRIBE)
                events = await run_viewer(f"{base}/whep/{ROOM}/caster", bearer)
                assert_published(server, codec)
            finally:
                await publisher.close()
            by_name = {e["event"]: e for e in reversed(events)}  # the first of each
            assert by_name["answer"]["status"] == 201, events
            connected = next(e for e in events if e.get("state") == "connected")
            assert "keyframe" in by_name, events
            key = by_name["keyframe"]
            assert key["codec"].lower() == f"video/{codec}".lower()
            print(f"werift {codec}: keyframe {key['t'] - connected['t']:.3f} s after connecting")
            assert key["t"] - connected["t"] < FIRST_FRAME_S

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
