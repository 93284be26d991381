"""Chromium WHIP publishers in the codecs aiortc lacks: VP9 to a werift WHEP viewer (first
keyframe within 1 s of connecting), and AV1, published with its audio (issue 18; this page
negotiates no Dependency Descriptor: the stream is then one layer).

The publisher page (``tests/fixtures/web/whip-publisher.html``) is served from another
loopback origin (CORS allowed for it) and restricts its video transceiver to one codec.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, wait_until
from meeting import MEETING_CONFIG, ServerThread
from test_codecs_werift import NODE_DIR, VIEWER, VIEWER_LIMIT_S

from sfu.config import HttpConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

PAGES = Path(__file__).resolve().parents[1] / "fixtures" / "web"
ROOM = "chromium-codecs"
TIMEOUT = 20.0
#: The publisher sends this long before the viewer joins (its first keyframes are old).
HEAD_START_S = 2.0
FIRST_FRAME_S = 1.0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log (the page's URL carries a token)."""


@contextlib.contextmanager
def _site(host: str) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(PAGES))
    site = http.server.ThreadingHTTPServer((host, 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{site.server_address[1]}"
    finally:
        site.shutdown()
        site.server_close()


@contextlib.contextmanager
def _server(origin: str) -> Iterator[ServerThread]:
    http = HttpConfig(host="127.0.0.1", port=0, cors_origins=(origin,))
    config = replace(MEETING_CONFIG, http=http)
    server = ServerThread(config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _token(server: ServerThread, identity: str, grants: Grant) -> str:
    now = int(time.time())
    claims = JoinClaims(room=ROOM, identity=identity, grants=grants, exp=now + 600, iat=now)
    return str(issue_token(server.server.token_secret, claims))


def _publish(page: Any, origin: str, server: ServerThread, codec: str) -> dict[str, Any]:
    query = urllib.parse.urlencode(
        {
            "endpoint": f"{server.base}/whip/{ROOM}",
            "token": _token(server, "caster", Grant.PUBLISH),
            "codec": codec,
        }
    )
    page.get(f"{origin}/whip-publisher.html?{query}")
    result = wait_until(lambda: page.execute_script("return window.whipResult"), bool, TIMEOUT)
    return dict(result)


def _published(server: ServerThread) -> dict[str, str]:
    def read() -> dict[str, str]:
        assert server.server.rooms is not None
        room = server.server.rooms.rooms.get(ROOM)
        pubs = room.publications.values() if room is not None else ()
        return {p.kind: p.codec.name.upper() for p in pubs}

    return server.call(read)


def test_chromium_vp9_to_a_werift_viewer_keyframe_within_a_second() -> None:
    with _site("127.0.0.2") as origin, _server(origin) as server, chromium() as page:
        result = _publish(page, origin, server, "VP9")
        assert result.get("status") == 201, result
        wait_until(lambda: _published(server), lambda p: p.get("video") == "VP9", TIMEOUT)
        time.sleep(HEAD_START_S)
        viewer = subprocess.run(
            [
                "node",
                str(VIEWER),
                f"{server.base}/whep/{ROOM}/caster",
                _token(server, "werift", Grant.SUBSCRIBE),
                str(VIEWER_LIMIT_S),
            ],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=VIEWER_LIMIT_S + 10,
            check=False,
        )
        events = [json.loads(x) for x in viewer.stdout.splitlines() if x.startswith("{")]
        assert events, viewer.stderr[-2000:]
        connected = next(e for e in events if e.get("state") == "connected")
        key = next((e for e in events if e["event"] == "keyframe"), None)
        assert key is not None, events
        assert key["codec"].lower() == "video/vp9"
        print(f"werift VP9: keyframe {key['t'] - connected['t']:.3f} s after connecting")
        assert key["t"] - connected["t"] < FIRST_FRAME_S


def test_chromium_av1_is_published_with_its_audio() -> None:
    with _site("127.0.0.2") as origin, _server(origin) as server, chromium() as page:
        result = _publish(page, origin, server, "AV1")
        assert result.get("status") == 201, result
        video = str(result["answer"]).split("m=video", 1)[1]
        assert not video.startswith(" 0 ") and "a=x-sfu-rejected:" not in video
        assert "AV1/90000" in video  # (this page negotiates no Dependency Descriptor)
        wait_until(
            lambda: _published(server), lambda p: p == {"audio": "OPUS", "video": "AV1"}, TIMEOUT
        )
