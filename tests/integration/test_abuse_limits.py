"""The server under connection and handshake abuse, on loopback with real sockets.

* 2,000 idle TCP connections and 200 slowloris sockets from eight loopback addresses: health
  and metrics answer throughout (on the main listener and the operations listener), a WHIP
  publisher (aiortc) still joins, the server closes every one of them within the header
  timeout, and the process's descriptors return to where they were.
* 200 WHIP offers that never start ICE from one source (200 tokens, 200 identities), and as
  many ``/echo`` offers: another source's publisher joins at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import resource
import socket
import time
from collections.abc import Callable

import aiohttp
import pytest
import uvloop
from aiortc import RTCSessionDescription
from clients import LOOPBACK_CONFIG, running_server
from test_whip_whep_aiortc import ROOM, new_pc, publisher_offer, sdp_headers, token

from sfu.io.http_limits import CLOSED_HEADER_TIMEOUT, REFUSED_PER_SOURCE
from sfu.transport.port import REFUSED_PENDING_SOURCE

pytestmark = pytest.mark.integration

IDLE = 2000
SLOWLORIS = 200
#: The flood comes from these loopback addresses (the publisher and probes from 127.0.0.1).
FLOOD_SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 10))
HEADER_TIMEOUT_S = 3.0
KEEPALIVE_TIMEOUT_S = 4.0
PER_SOURCE = 256
TIMEOUT = 30.0

FLOOD_CONFIG = dataclasses.replace(
    LOOPBACK_CONFIG,
    http=dataclasses.replace(
        LOOPBACK_CONFIG.http,
        header_timeout_s=HEADER_TIMEOUT_S,
        keepalive_timeout_s=KEEPALIVE_TIMEOUT_S,
        max_connections=4096,
        max_connections_per_source=PER_SOURCE,
        ops_port=0,
    ),
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "file limit too low"


def _connect(source: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((source, 0))
    s.connect_ex(("127.0.0.1", port))
    return s


async def _get(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        await resp.read()
        return resp.status


async def _wait_for(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def _closed_by_peer(s: socket.socket) -> bool:
    """Whether the server has closed ``s`` (a refusal's 503 is read and skipped)."""
    while True:
        try:
            if s.recv(4096) == b"":
                return True
        except BlockingIOError:
            return False
        except OSError:
            return True  # reset


class _Closing:
    """The sockets the server has not closed yet, polled all at once."""

    def __init__(self, socks: list[socket.socket]) -> None:
        self.open = list(socks)

    def done(self) -> bool:
        self.open = [s for s in self.open if not _closed_by_peer(s)]
        return not self.open


def test_idle_and_slowloris_flood_leaves_health_metrics_and_joins_working() -> None:
    _raise_file_limit(3 * (IDLE + SLOWLORIS) + 1024)

    async def scenario() -> None:
        async with running_server(FLOOD_CONFIG) as (server, base):
            ops = f"http://127.0.0.1:{server.ops_addresses[0][1]}"
            port = server.http_addresses[0][1]
            timeout = aiohttp.ClientTimeout(total=5.0)
            async with aiohttp.ClientSession(timeout=timeout) as probe:
                assert await _get(probe, base + "/healthz") == 200
            await asyncio.sleep(0.2)
            baseline = _open_fds()
            socks: list[socket.socket] = []
            slow: list[socket.socket] = []
            for i in range(IDLE + SLOWLORIS):
                s = _connect(FLOOD_SOURCES[i % len(FLOOD_SOURCES)], port)
                (slow if i >= IDLE else socks).append(s)
                if i % 100 == 99:
                    await asyncio.sleep(0.01)  # let the server accept as we go
            await asyncio.sleep(0.3)
            for s in slow:  # an unfinished request head (one refused already fails here)
                with contextlib.suppress(OSError):
                    s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            # Everything answers while the flood is held: probes, scrapes and a publisher.
            publisher = new_pc()
            try:
                async with aiohttp.ClientSession(timeout=timeout) as probe:
                    for url in (base, ops):
                        assert await _get(probe, url + "/healthz") == 200
                        assert await _get(probe, url + "/readyz") == 200
                        assert await _get(probe, url + "/metrics") == 200
                    for s in slow:
                        with contextlib.suppress(OSError):
                            s.send(b"X-Slow: 1\r\n")
                    offer = await publisher_offer(publisher)
                    async with probe.post(
                        f"{base}/whip/{ROOM}",
                        data=offer,
                        headers=sdp_headers(token(server, "caster")),
                    ) as resp:
                        answer = await resp.text()
                        assert resp.status == 201, answer
                    await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                    await _wait_for(lambda: publisher.connectionState == "connected")
                    assert await _get(probe, ops + "/healthz") == 200
                # Every flood socket is closed by the server: refused at once (beyond
                # PER_SOURCE from its address) or reset at the header timeout.
                flood = socks + slow
                closing = _Closing(flood)
                await _wait_for(closing.done, TIMEOUT)
                refused = server.http_limiter.refused
                assert refused[REFUSED_PER_SOURCE] > 0
                assert refused[REFUSED_PER_SOURCE] + refused[CLOSED_HEADER_TIMEOUT] == len(flood)
                assert server.http_limiter.peak_per_source == PER_SOURCE
                for s in flood:
                    s.close()
                async with aiohttp.ClientSession(timeout=timeout) as probe:
                    body = await probe.get(ops + "/metrics")
                    text = await body.text()
                assert 'sfu_http_connections_refused_total{reason="per_source"}' in text
                assert 'sfu_http_connections_refused_total{reason="header_timeout"}' in text
            finally:
                await publisher.close()
            # Only the probes' and the publisher's own sockets may linger, briefly.
            await _wait_for(lambda: _open_fds() <= baseline + 8, 10.0)
            await _wait_for(lambda: server.http_limiter.open <= 1, 10.0)

    # On uvloop, as `sfu serve` runs (its transports are not asyncio.Transport instances).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(scenario(), 120))


NEVER_ICE = 200
#: Long enough that no never-ICE transport expires while the floods run (that places come
#: back at the deadline is tested without sockets, tests/unit/test_admission_limits.py).
ICE_CONFIG = dataclasses.replace(
    LOOPBACK_CONFIG,
    media=dataclasses.replace(LOOPBACK_CONFIG.media, ice_connect_timeout_s=60.0),
)


def test_never_ice_offers_from_one_source_do_not_starve_another() -> None:
    async def scenario() -> None:
        async with running_server(ICE_CONFIG) as (server, base):
            assert server.rooms is not None
            sender = new_pc()
            publisher = new_pc()
            try:
                # One offer text, sent 200 times with 200 tokens; its ICE never starts.
                offer = await publisher_offer(sender)
                connector = aiohttp.TCPConnector(local_addr=("127.0.0.5", 0), limit=20)
                timeout = aiohttp.ClientTimeout(total=TIMEOUT)
                async with aiohttp.ClientSession(connector=connector, timeout=timeout) as flood:

                    async def whip(i: int) -> int:
                        async with flood.post(
                            f"{base}/whip/{ROOM}",
                            data=offer,
                            headers=sdp_headers(token(server, f"bot{i}")),
                        ) as resp:
                            await resp.read()
                            return resp.status

                    async def echo() -> int:
                        async with flood.post(
                            base + "/echo", data=offer, headers=sdp_headers(None)
                        ) as resp:
                            await resp.read()
                            return resp.status

                    statuses = await asyncio.gather(*(whip(i) for i in range(NEVER_ICE)))
                    echoes = await asyncio.gather(*(echo() for _ in range(NEVER_ICE)))
                cap = server.config.media.max_pending_per_source
                assert statuses.count(201) == cap and statuses.count(503) == NEVER_ICE - cap
                assert echoes.count(503) == NEVER_ICE  # the same source's pending places
                assert server.port.refused[REFUSED_PENDING_SOURCE] == 2 * NEVER_ICE - cap
                # Another source's publisher joins at once (not refused, not queued), and
                # connects.
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(
                        f"{base}/whip/{ROOM}",
                        data=await publisher_offer(publisher),
                        headers=sdp_headers(token(server, "caster")),
                    ) as resp,
                ):
                    answer = await resp.text()
                    assert resp.status == 201, answer
                await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                await _wait_for(lambda: publisher.connectionState == "connected")
                assert server.port.pending_count == cap  # the flood's, still waiting
            finally:
                await sender.close()
                await publisher.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))
