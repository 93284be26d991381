"""Two meetings of Chromium pages on two forwarding workers; one worker is killed (SIGKILL).

The other meeting's media goes on uninterrupted (its pages' decoded frames keep growing), and
the killed meeting's pages reconnect by themselves (sfu/web/reconnect.js) within 3 s, then
decode each other again. The real ``sfu serve`` process tree with ``server.workers = 2``.
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, wait_until
from meeting import (
    longest_stall,
    open_meeting,
    page_state,
    sample,
    stats,
    steady,
    wait_connected,
)
from serve_process import HTTP_RE, ServeProcess

pytestmark = pytest.mark.integration

WORKER_READY_RE = re.compile(r"worker (\d+) ready \(pid (\d+)\)")
#: The issue's bound: the killed worker's pages are back in their room this soon.
BACK_WITHIN_S = 3.0
#: ... and decoding each other again within this (a new ICE/DTLS session and a keyframe).
DECODING_AGAIN_S = 10.0
FIRST_DECODE_S = 30.0
#: How long the other meeting is watched after the kill, and the longest pause in its
#: decoded frames that still counts as uninterrupted (a 30 fps fake camera: ~30 per second).
#: On a 2-core test machine the restarted worker's start and the killed meeting's two
#: reconnections share the cores with four browsers: one CI run saw a 1.25 s pause in a page
#: of the other meeting while it kept its session. A reconnection or a lost session takes
#: seconds and still fails.
WATCH_S = 4.0
MAX_STALL_S = 1.5
#: Before the kill, the other meeting must have decoded without a pause longer than
#: STEADY_STALL_S for STEADY_S: a meeting that has just started may still pause while its
#: layers are chosen, and that pause is not the kill's doing.
STEADY_S = 2.0
STEADY_STALL_S = 0.5
#: Room names tried for the second meeting until it lands on the other worker.
MAX_ROOMS_TRIED = 6


def frames_decoded(driver: Any) -> int:
    """Video frames the page has decoded from everyone else, all together."""
    remote = (stats(driver).get("remote") or {}).values()
    return sum(int(p.get("framesDecoded") or 0) for p in remote if p.get("kind") == "video")


def decoding(driver: Any) -> bool:
    state = page_state(driver)
    return state.get("status") == "connected" and frames_decoded(driver) > 5


def wait_steady(pages: list[Any], timeout: float) -> None:
    """Wait until every page has decoded frames steadily for the last STEADY_S."""
    steady(lambda: [frames_decoded(p) for p in pages], timeout, STEADY_S, STEADY_STALL_S)


def rooms_by_worker(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
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
        f'[audit]\npath = "{tmp_path / "audit"}"\n'
    )
    proc = ServeProcess(path)
    yield proc
    proc.stop()


def test_killing_a_worker_moves_only_its_meeting_and_its_pages_come_back(
    server: ServeProcess,
) -> None:
    port = int(server.wait_for(HTTP_RE).group(1))
    base = f"http://127.0.0.1:{port}"
    pids = {
        int(m.group(1)): int(m.group(2))
        for line in server.lines
        if (m := WORKER_READY_RE.search(line))
    }
    assert sorted(pids) == [0, 1], server.log
    with chromium() as a1, chromium() as a2, chromium() as b1, chromium() as b2:
        open_meeting(a1, base, "meeting-a", "a1")
        wait_connected(a1, FIRST_DECODE_S)
        rooms = rooms_by_worker(port)
        worker_a = next(w for w, n in rooms.items() if n > 0)
        open_meeting(a2, base, "meeting-a", "a2")
        # The second meeting on the other worker (placement is randomised: try a few names).
        room_b = ""
        for i in range(MAX_ROOMS_TRIED):
            room_b = f"meeting-b{i}"
            open_meeting(b1, base, room_b, "b1")
            wait_connected(b1, FIRST_DECODE_S)
            after = rooms_by_worker(port)
            if after.get(worker_a, 0) == rooms.get(worker_a, 0):
                break
            rooms = after
        else:
            pytest.fail(f"no room landed on the second worker: {rooms}")
        open_meeting(b2, base, room_b, "b2")
        for page in (a1, a2, b1, b2):
            wait_until(lambda page=page: decoding(page), bool, FIRST_DECODE_S)
        wait_steady([b1, b2], FIRST_DECODE_S)

        os.kill(pids[int(worker_a)], signal.SIGKILL)
        killed = time.monotonic()
        frames = sample(lambda: (time.monotonic(), frames_decoded(b1), frames_decoded(b2)), WATCH_S)
        # The other meeting never stalled: both its pages decoded frames all along.
        for page in (1, 2):
            stall = longest_stall([(t, counts[page - 1]) for t, *counts in frames])
            assert stall <= MAX_STALL_S, (page, stall, frames)
        assert page_state(b1).get("reconnects", 0) == 0
        assert page_state(b2).get("reconnects", 0) == 0

        # The killed meeting's pages rejoined by themselves (they may have done it while the
        # other meeting was being watched), then decode each other again.
        for page in (a1, a2):
            wait_until(lambda page=page: page_state(page).get("reconnects", 0), bool, 10)
            wait_until(lambda page=page: page_state(page).get("status"), "connected".__eq__, 10)
        back = [float(page_state(p).get("lastReconnectMs") or 0) / 1000 for p in (a1, a2)]
        for page in (a1, a2):
            wait_until(lambda page=page: decoding(page), bool, DECODING_AGAIN_S)
        decoding_again = time.monotonic() - killed
        print(f"worker killed: pages back in {back} s, decoding again after {decoding_again:.2f} s")
        assert all(0 < b <= BACK_WITHIN_S for b in back), back
