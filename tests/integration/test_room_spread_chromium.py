"""One meeting spread over two forwarding workers, with Chromium pages on both.

``server.room_spread_subscribers = 1``: the first page is alone on the room's home worker,
the second goes to the other worker (a shard of the room), the third back home (the shard
is full too, and there is no third worker). Every page decodes everyone else's audio and
video: what crosses workers is relayed once over the pipe between them. With end-to-end
encryption, a page on each worker decodes the other's frames (the pipe passes the
ciphertext untouched).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import urllib.parse
from typing import Any

import pytest
from browser import chromium, run_async, wait_until
from meeting import (
    MEETING_CONFIG,
    open_meeting,
    page_state,
    remote_by,
    stats,
    supervisor_thread,
    wait_connected,
)

from sfu.config import RoomsConfig

pytestmark = pytest.mark.integration

CONFIG = dataclasses.replace(
    MEETING_CONFIG,
    server=dataclasses.replace(MEETING_CONFIG.server, room_spread_subscribers=1),
    rooms=RoomsConfig(waiting_room=False),
)
#: Media from everyone must be decoding this soon after the last page joined.
JOIN_DEADLINE_S = 20.0
KINDS = ("audio", "video")
PASSPHRASE = "one room, two workers, one key"


def _flowing(entry: dict[str, Any] | None, kind: str) -> bool:
    if entry is None:
        return False
    if kind == "video":
        return bool(entry["framesDecoded"] > 0 and entry["frameWidth"] > 0)
    return bool(entry["totalSamplesReceived"] > 0 and entry["packetsReceived"] > 0)


def test_three_pages_on_two_workers_decode_each_other() -> None:
    names = ("Alice", "Bob", "Carol")
    with supervisor_thread(CONFIG, workers=2) as server, contextlib.ExitStack() as browsers:
        drivers = [browsers.enter_context(chromium()) for _ in names]
        ids = []
        for driver, name in zip(drivers, names, strict=True):
            open_meeting(driver, server.base, "spread", name)
            ids.append(wait_connected(driver))  # in order: placement depends on it
        assert server.supervisor.placement.shards_of("spread") == {0, 1}
        streams = [
            (i, pid, kind) for i in range(3) for pid in ids if pid != ids[i] for kind in KINDS
        ]
        wait_until(
            lambda: [stats(driver) for driver in drivers],
            lambda s: all(_flowing(remote_by(s[i], pid, kind), kind) for i, pid, kind in streams),
            timeout=JOIN_DEADLINE_S,
        )
        for driver in drivers:
            assert page_state(driver).get("error") is None


def test_e2ee_pages_on_two_workers_decode_each_other() -> None:
    with (
        supervisor_thread(CONFIG, workers=2) as server,
        chromium() as alice,
        chromium() as bob,
    ):
        ids = []
        for driver, name in ((alice, "Alice"), (bob, "Bob")):
            query = urllib.parse.urlencode({"room": "spread-e2ee", "name": name, "hints": "0"})
            fragment = urllib.parse.urlencode({"e2ee": PASSPHRASE})
            driver.get(f"{server.base}/?{query}#{fragment}")
            ids.append(wait_connected(driver))
        assert server.supervisor.placement.shards_of("spread-e2ee") == {0, 1}
        pairs = [(alice, ids[1]), (bob, ids[0])]
        started = time.monotonic()
        wait_until(
            lambda: [stats(d) for d, _ in pairs],
            lambda s: all(
                _flowing(remote_by(s[i], pid, kind), kind)
                for i, (_, pid) in enumerate(pairs)
                for kind in KINDS
            ),
            timeout=JOIN_DEADLINE_S,
        )
        assert time.monotonic() - started < JOIN_DEADLINE_S + 1.0
        for driver in (alice, bob):
            state = page_state(driver)
            assert state.get("error") is None and state["e2ee"]["enabled"], state
            counters = run_async(driver, "window.sfuE2eeStats()")
            assert counters["decrypted"] > 0 and counters["failed"] == 0, counters
