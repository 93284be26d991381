"""The WHIP/WHEP forwarder against a stand-in target node on loopback: what it sends, what it
relays, that it follows no redirect, and that an unreachable, slow or failing target falls
back (``307``) while an answer it cannot relay fails (``502``), each counted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from sfu.signaling.whip_forward import MAX_ANSWER_BYTES, Relayed, WhipForwarder

pytestmark = pytest.mark.integration

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OFFER = b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"
HEADERS = {
    "Authorization": "Bearer t0k3n",
    "Content-Type": "application/sdp",
    "X-Forwarded-For": "203.0.113.5",
}


@contextlib.asynccontextmanager
async def target(routes: dict[str, Handler]) -> AsyncIterator[str]:
    """A stand-in node answering POSTs of ``routes``; yields its base URL."""
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_created_session_is_relayed_and_only_the_allowed_headers_cross() -> None:
    seen: list[tuple[dict[str, str], bytes]] = []

    async def whip(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.read()))
        response = web.Response(
            status=201,
            body=b"v=0\r\nanswer\r\n",
            content_type="application/sdp",
            headers={"Location": "/whip/room/s3cr3t", "Set-Cookie": "a=b", "ETag": '"1"'},
        )
        response.headers.add("Link", '<turn:t.example.com>; rel="ice-server"')
        return response

    async def scenario() -> None:
        forwarder = WhipForwarder()
        try:
            async with target({"/whip/room": whip}) as base:
                url = f"{base}/whip/room?placed=1"
                result = await forwarder.forward(url, HEADERS, OFFER)
        finally:
            await forwarder.close()
        assert isinstance(result, Relayed)
        assert result.status == 201 and result.body == b"v=0\r\nanswer\r\n"
        headers = dict(result.headers)
        assert headers["Location"] == f"{base}/whip/room/s3cr3t"
        assert headers["Link"] == '<turn:t.example.com>; rel="ice-server"'
        assert headers["ETag"] == '"1"'
        assert "Set-Cookie" not in headers
        [(sent, body)] = seen
        assert body == OFFER
        assert sent["Authorization"] == "Bearer t0k3n"
        assert sent["Content-Type"] == "application/sdp"
        assert sent["X-Forwarded-For"] == "203.0.113.5"
        assert forwarder.results == {"forwarded": 1, "fallback": 0, "failed": 0}

    asyncio.run(scenario())


def test_a_redirect_of_the_target_is_relayed_not_followed() -> None:
    followed: list[str] = []

    async def whip(request: web.Request) -> web.Response:
        return web.Response(status=307, headers={"Location": "/elsewhere"})

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.headers.get("Authorization", ""))
        return web.Response(status=201, headers={"Location": "/whip/room/x"})

    async def scenario() -> None:
        forwarder = WhipForwarder()
        try:
            async with target({"/whip/room": whip, "/elsewhere": elsewhere}) as base:
                result = await forwarder.forward(f"{base}/whip/room?placed=1", HEADERS, OFFER)
        finally:
            await forwarder.close()
        assert result == Relayed(307, [("Location", f"{base}/elsewhere")], b"")
        assert followed == []

    asyncio.run(scenario())


def test_an_unreachable_slow_or_failing_target_falls_back_and_a_huge_answer_fails() -> None:
    async def busy(request: web.Request) -> web.Response:
        return web.Response(status=503, text="server_busy\n", headers={"Retry-After": "5"})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(2.0)
        return web.Response(status=201, headers={"Location": "/whip/slow/x"})

    async def huge(request: web.Request) -> web.Response:
        return web.Response(
            status=201, body=b"a" * (MAX_ANSWER_BYTES + 1), headers={"Location": "/whip/huge/x"}
        )

    async def scenario() -> None:
        forwarder = WhipForwarder(timeout_s=0.3)
        try:
            routes: dict[str, Handler] = {
                "/whip/busy": busy,
                "/whip/slow": slow,
                "/whip/huge": huge,
            }
            async with target(routes) as base:
                assert await forwarder.forward(f"{base}/whip/busy", HEADERS, OFFER) == "fallback"
                assert await forwarder.forward(f"{base}/whip/slow", HEADERS, OFFER) == "fallback"
                assert await forwarder.forward(f"{base}/whip/huge", HEADERS, OFFER) == "failed"
            refused = f"http://127.0.0.1:{closed_port()}/whip/room"
            assert await forwarder.forward(refused, HEADERS, OFFER) == "fallback"
        finally:
            await forwarder.close()
        assert forwarder.results == {"forwarded": 0, "fallback": 3, "failed": 1}

    asyncio.run(scenario())
