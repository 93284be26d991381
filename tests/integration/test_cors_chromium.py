"""CORS for WHIP: a publisher page served from another loopback origin publishes when that
origin is allowed (preflight answered, Location and Link readable by the page), and a page
from an origin that is not allowed is refused and creates nothing."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, run_async, wait_until
from meeting import MEETING_CONFIG, ServerThread

from sfu.config import HttpConfig, TurnConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

PAGES = Path(__file__).resolve().parents[1] / "fixtures" / "web"
ROOM = "cors"
TIMEOUT = 20.0


@contextlib.contextmanager
def _static_site(host: str) -> Iterator[str]:
    """The fixture pages over HTTP on ``host`` (another loopback address: another origin)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(PAGES))
    site = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()


def _token(server: ServerThread, identity: str) -> str:
    now = int(time.time())
    claims = JoinClaims(room=ROOM, identity=identity, grants=Grant.PUBLISH, exp=now + 600, iat=now)
    return str(issue_token(server.server.token_secret, claims))


def _open(driver: Any, origin: str, server: ServerThread, identity: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(
        {"endpoint": f"{server.base}/whip/{ROOM}", "token": _token(server, identity)}
    )
    driver.get(f"{origin}/whip-publisher.html?{query}")
    result = wait_until(lambda: driver.execute_script("return window.whipResult"), bool, TIMEOUT)
    return dict(result)


def _publishers(server: ServerThread) -> list[str]:
    def read() -> list[str]:
        rooms = server.server.rooms
        room = rooms.rooms.get(ROOM) if rooms is not None else None
        return [] if room is None else sorted(p.identity for p in room.participants.values())

    return server.call(read)


def test_whip_page_on_an_allowed_origin_publishes_and_others_are_refused() -> None:
    with _static_site("127.0.0.2") as allowed, _static_site("127.0.0.3") as other:
        config = replace(
            MEETING_CONFIG,
            http=HttpConfig(host="127.0.0.1", port=0, cors_origins=(allowed,)),
            turn=TurnConfig(urls=("turn:127.0.0.1:3478",), secret="cors-test-secret-0123456789"),
        )
        server = ServerThread(config)
        server.start()
        try:
            with chromium() as page:
                result = _open(page, allowed, server, "publisher")
                assert result.get("status") == 201, result
                # Exposed to the page: the session URL and the TURN Link header.
                assert str(result.get("location", "")).startswith(f"/whip/{ROOM}/")
                assert 'rel="ice-server"' in str(result.get("link", ""))
                wait_until(
                    lambda: run_async(page, "window.whipSent()"), lambda n: n > 20000, TIMEOUT
                )
                assert _publishers(server) == ["publisher"]
            with chromium() as page:
                result = _open(page, other, server, "intruder")
                assert "error" in result, result  # the browser refused the failed preflight
                assert _publishers(server) == ["publisher"]
        finally:
            server.stop()
