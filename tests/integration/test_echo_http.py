"""The /echo HTTP API refuses malformed requests precisely and creates nothing for them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from clients import TIMEOUT, running_server
from fixture_files import FIXTURES

pytestmark = pytest.mark.integration

OFFER = (FIXTURES / "sdp" / "aiortc_av_offer.sdp").read_bytes()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (OFFER, "text/plain", 415, "Content-Type must be application/sdp"),
        (b"", "application/sdp", 400, "empty body"),
        (b"\xff\xfe" + OFFER, "application/sdp", 400, "not valid UTF-8"),
        (b"v=0\r\nnonsense\r\n", "application/sdp", 400, "bad offer"),
        (OFFER.replace(b"a=fingerprint", b"a=x-fp"), "application/sdp", 400, "fingerprint"),
        (OFFER + b"a=x:" + b"y" * 70_000 + b"\r\n", "application/sdp", 413, "too large"),
    ],
)
def test_bad_requests(body: bytes, content_type: str, status: int, message: str) -> None:
    async def scenario() -> tuple[int, str, int]:
        async with running_server() as (server, base):
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(base + "/echo", data=body, headers={"Content-Type": content_type}) as r,
            ):
                return r.status, await r.text(), server.port.transport_count

    got_status, text, transports = asyncio.run(scenario())
    assert got_status == status, text
    assert message in text
    assert transports == 0


def test_unknown_session_and_method() -> None:
    async def scenario() -> list[int]:
        async with running_server() as (_server, base):
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                out = []
                for method, path in [("DELETE", "/echo/nope"), ("GET", "/echo"), ("PUT", "/echo")]:
                    async with http.request(method, base + path) as r:
                        out.append(r.status)
                return out

    assert asyncio.run(scenario()) == [404, 405, 405]
