"""Meeting tests' helpers: an in-process server on a background loop and demo-page probes.

:class:`ServerThread` runs :class:`sfu.app.Server` on its own asyncio loop in a daemon thread,
so a test can drive headless Chromium pages (blocking selenium calls) from the main thread and
still reach into the server: :meth:`ServerThread.call` runs a function on the server's loop
and returns its result, which is the only thread-safe way to read or change server state.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

from browser import run_async, wait_until
from scratch import scratch_dir
from selenium import webdriver

from sfu.app import Server
from sfu.config import AuditConfig, AuthConfig, Config, HttpConfig, MediaConfig, ServerConfig
from sfu.core.dataplane import DataPlane
from sfu.core.peer import Peer
from sfu.transport.transport import WebRtcTransport
from sfu.workers.supervisor import Supervisor

T = TypeVar("T")

TIMEOUT = 15.0

#: Loopback only, ephemeral ports; development tokens are on by default (HTTP is on loopback)
#: and carry the host grant, so the default waiting room admits the demo pages at once.
MEETING_CONFIG = Config(
    http=HttpConfig(host="127.0.0.1", port=0),
    media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
    server=ServerConfig(drain_timeout_s=3.0),
    audit=AuditConfig(path=scratch_dir()),
)

Stats = dict[str, Any]


class ServerThread:
    """An in-process :class:`Server` on an asyncio loop running in a background thread."""

    def __init__(self, config: Config = MEETING_CONFIG) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = Server(config)
        self.base = ""

    def call(self, fn: Callable[[], T], timeout: float = TIMEOUT) -> T:
        """Run ``fn()`` on the server's loop and return its result (or raise its error)."""

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(TIMEOUT)
        self.base = f"http://127.0.0.1:{self.server.http_addresses[0][1]}"

    def stop(self) -> None:
        try:
            if self.thread.is_alive():
                stopping = asyncio.wait_for(self.server.stop(), TIMEOUT)
                asyncio.run_coroutine_threadsafe(stopping, self.loop).result(TIMEOUT + 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            if not self.thread.is_alive():
                self.loop.close()

    def peer(self, room: str, participant_id: str) -> Peer:
        """The participant's :class:`Peer` (call from the server's loop, e.g. inside ``call``)."""
        assert self.server.rooms is not None
        peer = self.server.rooms.rooms[room].participants[participant_id].peer
        assert peer is not None, f"{participant_id} has no media session"
        return peer


class SupervisorThread:
    """``sfu serve`` with several workers for browser tests: the supervisor on a loop in a
    background thread, its workers real child processes. Only ``base`` (no internals)."""

    def __init__(self, config: Config = MEETING_CONFIG, workers: int = 2) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.supervisor = Supervisor(config, workers)
        self.base = ""

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.supervisor.start(), self.loop).result(2 * TIMEOUT)
        assert all(w.ready for w in self.supervisor.workers), "a worker did not start"
        self.base = f"http://127.0.0.1:{self.supervisor.http_addresses[0][1]}"

    def stop(self) -> None:
        try:
            if self.thread.is_alive():
                stopping = asyncio.wait_for(self.supervisor.stop(), TIMEOUT)
                asyncio.run_coroutine_threadsafe(stopping, self.loop).result(TIMEOUT + 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            if not self.thread.is_alive():
                self.loop.close()


@contextlib.contextmanager
def supervisor_thread(
    config: Config = MEETING_CONFIG, workers: int = 2
) -> Iterator[SupervisorThread]:
    """A started :class:`SupervisorThread`, always stopped afterwards."""
    server = SupervisorThread(config, workers)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def server_thread(config: Config = MEETING_CONFIG) -> Iterator[ServerThread]:
    """A started :class:`ServerThread`, always stopped afterwards."""
    server = ServerThread(config)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def server_on(address: str) -> Iterator[ServerThread]:
    """A meeting server on ``address`` off loopback (a namespace lab's server address): a
    signing key is configured there, and the dev tokens still serve the page."""
    config = replace(
        MEETING_CONFIG,
        http=HttpConfig(host=address, port=0),
        media=MediaConfig(udp_host=address, udp_port=0),
        auth=AuthConfig(jwt_secret="namespace-lab-" + "k" * 40, dev_tokens=True),
    )
    server = ServerThread(config)
    try:
        server.start()
        server.base = f"http://{address}:{server.server.http_addresses[0][1]}"
        yield server
    finally:
        server.stop()


class DropEveryNth:
    """Drops every ``n``-th RTP packet a transport sends (deterministic loss), as if lost.

    Media forwarded by the data plane is impaired there (``DataPlane.impair``); what the
    Python path sends (retransmissions) through the transport's ``send_rtp``:
    ``WebRtcTransport`` has ``__slots__`` and no instance ``__dict__``, so that method can not
    be shadowed by an instance attribute; instead the transport's class is swapped for a
    slot-compatible subclass that consults this object first. Install and uninstall on the
    server's loop.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0
        self._python_dropped = 0
        self._dataplane: DataPlane | None = None
        self._baseline = 0
        dropper = self

        class DroppingTransport(WebRtcTransport):
            __slots__ = ()

            def send_rtp(self, packet: bytes) -> bool:
                dropper.seen += 1
                if dropper.seen % dropper.n == 0:
                    dropper._python_dropped += 1
                    return True  # "sent": lost on the way, as far as the server can tell
                return super().send_rtp(packet)

        self._cls = DroppingTransport

    @property
    def dropped(self) -> int:
        """Packets dropped so far, on either path."""
        fast = 0
        if self._dataplane is not None:
            fast = self._dataplane.forwarder.impaired_drops - self._baseline
        return self._python_dropped + fast

    def install(self, transport: WebRtcTransport) -> None:
        assert type(transport) is WebRtcTransport
        transport.__class__ = self._cls
        peer = transport.listener
        if isinstance(peer, Peer) and peer.dataplane is not None:
            self._dataplane = peer.dataplane
            self._baseline = peer.dataplane.forwarder.impaired_drops
            assert peer.dataplane.impair(transport, self.n)

    def uninstall(self, transport: WebRtcTransport) -> None:
        installed: type = type(transport)
        if installed is self._cls:
            transport.__class__ = WebRtcTransport
        if self._dataplane is not None:
            self._dataplane.impair(transport, 0)


# -- the demo page ---------------------------------------------------------------------------


def open_meeting(
    driver: webdriver.Chrome, base: str, room: str, name: str, *, hints: bool = False
) -> None:
    """Navigate to the demo page: it fetches a dev token, joins, publishes and subscribes.
    Without ``hints`` the page sends no tile-size hints (tests then choose layers themselves)."""
    query = urllib.parse.urlencode(
        {"room": room, "name": name, **({} if hints else {"hints": "0"})}
    )
    driver.get(f"{base}/?{query}")


def page_state(driver: webdriver.Chrome) -> dict[str, Any]:
    state = driver.execute_script("return window.sfuState || null;")
    return state if isinstance(state, dict) else {}


def wait_connected(driver: webdriver.Chrome, timeout: float = TIMEOUT) -> str:
    """Wait until the page has joined; returns its participant id."""
    state = wait_until(
        lambda: page_state(driver),
        lambda s: s.get("status") == "connected" and bool(s.get("participantId")),
        timeout=timeout,
    )
    return str(state["participantId"])


def stats(driver: webdriver.Chrome) -> Stats:
    """``window.sfuStats()``: connection state and per-subscription inbound statistics."""
    value = run_async(driver, "window.sfuStats()")
    if not isinstance(value, dict) or "error" in value:
        return {"connectionState": None, "remote": {}, "failure": value}
    return value


def remote_by(stats_value: Stats, participant: str, kind: str) -> dict[str, Any] | None:
    """The inbound entry of ``participant``'s ``kind`` track (None if not subscribed)."""
    for entry in stats_value.get("remote", {}).values():
        if entry.get("participant") == participant and entry.get("kind") == kind:
            return dict(entry)
    return None


def track_id(stats_value: Stats, participant: str, kind: str) -> str | None:
    for tid, entry in stats_value.get("remote", {}).items():
        if entry.get("participant") == participant and entry.get("kind") == kind:
            return str(tid)
    return None


def set_preferences(driver: webdriver.Chrome, track: str, prefs: dict[str, Any]) -> None:
    """``window.sfuSetPreferences``: e.g. ``{"maxSpatial": 0}``; fails on an error reply."""
    call = f"window.sfuSetPreferences({json.dumps(track)}, {json.dumps(prefs)})"
    result = run_async(driver, call)
    assert not (isinstance(result, dict) and "error" in result), result


def sample(probe: Callable[[], T], seconds: float, interval: float = 0.25) -> list[T]:
    """Probe repeatedly for ``seconds`` (bounded); returns every value seen, first to last."""
    values = [probe()]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(interval)
        values.append(probe())
    return values


def longest_stall(frames: list[tuple[float, int]]) -> float:
    """The longest time in ``frames`` ((time, frames decoded) samples) without a new frame."""
    longest = 0.0
    last_growth = frames[0][0]
    for (_, before), (t, now) in itertools.pairwise(frames):
        if now > before:
            last_growth = t
        longest = max(longest, t - last_growth)
    return longest


def steady(
    counts: Callable[[], list[int]], timeout: float, window_s: float, stall_s: float
) -> None:
    """Wait until each of ``counts()`` (frames decoded, one per stream watched) has grown
    without a pause longer than ``stall_s`` for the last ``window_s`` (bounded by
    ``timeout``): a meeting that has just started may still pause while its layers are chosen,
    and a measurement of interruptions must not start there."""
    history: list[tuple[float, list[int]]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        history.append((now, counts()))
        window = [h for h in history if h[0] >= now - window_s]
        if history[0][0] <= now - window_s and all(
            longest_stall([(t, values[i]) for t, values in window]) <= stall_s
            for i in range(len(history[0][1]))
        ):
            return
        time.sleep(0.25)
    raise AssertionError(f"not decoding steadily: {history}")
