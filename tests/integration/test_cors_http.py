"""CORS on the WHIP/WHEP endpoints at the HTTP level: preflights from allowed and other
origins, exposed headers, same-origin and non-browser requests untouched."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import aiohttp
import pytest
from clients import LOOPBACK_CONFIG, TIMEOUT, running_server

from sfu.config import HttpConfig

pytestmark = pytest.mark.integration

ALLOWED = "https://app.example"


async def _scenario() -> None:
    config = replace(
        LOOPBACK_CONFIG, http=HttpConfig(host="127.0.0.1", port=0, cors_origins=(ALLOWED,))
    )
    async with running_server(config) as (_server, base), aiohttp.ClientSession() as http:
        preflight = {
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        }
        async with http.options(f"{base}/whip/room", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            assert "Origin" in resp.headers["Vary"]
        other = {**preflight, "Origin": "https://evil.example"}
        async with http.options(f"{base}/whep/room/alice", headers=other) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers
        # An actual request from an allowed origin: CORS headers even on an error answer.
        async with http.post(f"{base}/whip/room", data="v=0", headers={"Origin": ALLOWED}) as resp:
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == ALLOWED
            exposed = resp.headers["Access-Control-Expose-Headers"]
            assert all(h in exposed for h in ("Location", "Link", "ETag"))
        # From another origin: refused before anything happens.
        async with http.post(
            f"{base}/whip/room", data="v=0", headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
        # Same origin, or no Origin at all (curl, OBS): not a CORS request.
        for headers in ({"Origin": base}, {}):
            async with http.post(f"{base}/whip/room", data="v=0", headers=headers) as resp:
                assert resp.status == 401 and "Access-Control-Allow-Origin" not in resp.headers
        # Other paths are untouched by CORS.
        async with http.options(f"{base}/healthz", headers=preflight) as resp:
            assert resp.status == 405


def test_cors_preflight_and_headers() -> None:
    asyncio.run(asyncio.wait_for(_scenario(), 2 * TIMEOUT))
