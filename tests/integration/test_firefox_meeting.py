"""Firefox ESR and Chromium in one meeting, each decoding the other, simulcast from Firefox.

Firefox gathers no loopback candidates, so both browsers run in network namespaces of a lab
(``netns.lab``) and the server listens on the lab's root-side address. Firefox is the system
``firefox-esr`` driven without geckodriver, through WebDriver BiDi by npm ``puppeteer-core``
(``tests/node/firefox_meeting.mjs``, which prints the page's ``sfuStats()`` as JSON lines);
Chromium is driven by chromedriver as in the other namespace tests. Both open the demo page,
which publishes camera (three simulcast layers) and microphone and subscribes to the other.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netns
import pytest
from meeting import open_meeting, remote_by, server_on, stats, wait_connected

pytestmark = pytest.mark.integration

ROOM = "firefox-meeting"
NODE_DIR = Path(__file__).resolve().parents[1] / "node"
SCRIPT = NODE_DIR / "firefox_meeting.mjs"
FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
#: The Firefox script ends by itself after this long at the latest.
FIREFOX_LIMIT_S = 120
#: How long each side may take to join and decode the other's first frames.
DECODE_S = 45.0
#: Frames decoded must keep growing over this interval.
GROWTH_S = 3.0


class FirefoxPage:
    """The Firefox script running in a namespace; its JSON lines collected by a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                with contextlib.suppress(ValueError), self._lock:
                    self.events.append(json.loads(line))

    def latest(self) -> dict[str, Any]:
        """The newest ``stats`` event ({} before the first); fails on a script error."""
        with self._lock:
            events = list(self.events)
        errors = [e for e in events if e.get("event") == "error"]
        assert not errors, errors
        return next((e for e in reversed(events) if e.get("event") == "stats"), {})

    def participant(self) -> str | None:
        state = self.latest().get("state") or {}
        return state.get("participantId") if state.get("status") == "connected" else None

    def decoded_from(self, participant: str) -> int:
        """Video frames this page decoded from ``participant`` so far."""
        remote = (self.latest().get("stats") or {}).get("remote") or {}
        for entry in remote.values():
            if entry.get("participant") == participant and entry.get("kind") == "video":
                return int(entry.get("framesDecoded") or 0)
        return 0


@contextlib.contextmanager
def firefox_page(host: netns.Namespace, url: str) -> Iterator[FirefoxPage]:
    assert (NODE_DIR / "node_modules" / "puppeteer-core").is_dir(), "run `make` (npm ci)"
    assert Path(FIREFOX).exists(), "install the Debian package firefox-esr (make deb-test)"
    proc = host.popen(
        ["node", str(SCRIPT), url, str(FIREFOX_LIMIT_S)],
        cwd=NODE_DIR,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield FirefoxPage(proc)
    finally:
        assert proc.stdin is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the script closes Firefox and exits
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.5)


def test_firefox_and_chromium_decode_each_other_with_firefox_simulcast() -> None:
    with netns.lab(["firefox", "chromium"]) as hosts, server_on(hosts.server_address) as server:
        query = urllib.parse.urlencode({"room": ROOM, "name": "firefox", "hints": "0"})
        flag = f"--unsafely-treat-insecure-origin-as-secure={server.base}"
        with (
            firefox_page(hosts["firefox"], f"{server.base}/?{query}") as firefox,
            hosts["chromium"].chromium((flag,)) as chrome,
        ):
            open_meeting(chrome, server.base, ROOM, "chromium")
            chrome_id = wait_connected(chrome, DECODE_S)
            firefox_id = _wait(firefox.participant, DECODE_S, "Firefox joined")

            def chrome_decoded() -> int:
                entry = remote_by(stats(chrome), firefox_id, "video")
                return int(entry["framesDecoded"]) if entry else 0

            first_chrome = _wait(chrome_decoded, DECODE_S, "Chromium decoding Firefox")
            first_firefox = _wait(
                lambda: firefox.decoded_from(chrome_id), DECODE_S, "Firefox decoding Chromium"
            )
            time.sleep(GROWTH_S)
            assert chrome_decoded() > first_chrome
            _wait(
                lambda: firefox.decoded_from(chrome_id) > first_firefox,
                GROWTH_S + 2,
                "Firefox still decoding",
            )

            # Firefox publishes simulcast: three rids, more than one of them arriving.
            def firefox_video() -> tuple[tuple[str, ...], int, str]:
                assert server.server.rooms is not None
                room = server.server.rooms.rooms[ROOM]
                pub = next(
                    p
                    for p in room.publications.values()
                    if p.participant_id == firefox_id and p.kind == "video"
                )
                return pub.rids, len(pub.active_layers(time.monotonic())), pub.codec.name

            def two_layers() -> tuple[tuple[str, ...], int, str] | None:
                value = server.call(firefox_video)
                return value if value[1] >= 2 else None

            rids, active, codec = _wait(two_layers, DECODE_S, "two Firefox simulcast layers")
            assert rids == ("q", "h", "f") and active >= 2
            print(f"Firefox publishes {codec} simulcast, {active} layers active")
