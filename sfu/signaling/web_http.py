"""The browser client: the demo meeting page, its client library, and development tokens.

``GET /`` serves the meeting page, ``GET /sfu-client.js``, ``/e2ee.js``, ``/e2ee-worker.js``
and ``/meeting.css`` its assets (all from the package, no third-party resources).
``POST /dev-token`` hands out short-lived tokens for any room so the demo works without a
token backend; it exists only when ``auth.dev_tokens`` is on, which configuration allows only
on a loopback HTTP address.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Final

from aiohttp import web

from sfu.config import is_public_url
from sfu.room.identity import MAX_NAME_CHARS, MAX_ROOM_CHARS, Grant, JoinClaims
from sfu.signaling.auth import issue_token

__all__ = ["DEV_TOKEN_TTL_S", "add_web_routes"]

DEV_TOKEN_TTL_S: Final = 3600
_ASSETS: Final = {
    "/": ("index.html", "text/html"),
    "/sfu-client.js": ("sfu-client.js", "application/javascript"),
    "/reconnect.js": ("reconnect.js", "application/javascript"),
    "/meeting.css": ("meeting.css", "text/css"),
    "/e2ee.js": ("e2ee.js", "application/javascript"),
    "/e2ee-worker.js": ("e2ee-worker.js", "application/javascript"),
}
#: The page talks only to this server (and, in a cluster, to the cluster's other nodes' room
#: WebSockets, where it may be moved): no third-party scripts, frames or connections. The
#: end-to-end encryption worker is a same-origin script (``worker-src 'self'``, no blob:).
_CSP: Final = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'{nodes}; media-src 'self' blob:; img-src 'self' data:; "
    "worker-src 'self'; frame-ancestors 'none'"
)


def content_security_policy(node_urls: Iterable[str] = ()) -> str:
    """The pages' CSP; ``node_urls``: public URLs of the cluster's nodes (``http(s)://host``),
    whose room WebSockets (``ws(s)://host``) the page may connect to."""
    sources = sorted(
        {
            ("wss://" if url.startswith("https://") else "ws://") + url.partition("://")[2]
            for url in node_urls
            if url.startswith(("http://", "https://")) and is_public_url(url)
        }
    )
    return _CSP.format(nodes="".join(" " + source.removesuffix("/") for source in sources))


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def add_web_routes(
    app: web.Application,
    *,
    token_secret: str,
    dev_tokens: bool,
    wallclock: Callable[[], float] = time.time,
    node_urls: Callable[[], Iterable[str]] = tuple,
) -> None:
    """Register the page, its assets and (when enabled) ``POST /dev-token``; ``node_urls``:
    the cluster's nodes the page may be moved to (their WebSockets join the CSP)."""
    package = resources.files("sfu.web")

    def asset(name: str, content_type: str) -> Callable[[web.Request], object]:
        async def handler(_request: web.Request) -> web.Response:
            body = package.joinpath(name).read_bytes()
            return web.Response(
                body=body,
                content_type=content_type,
                charset="utf-8",
                headers={
                    "Cache-Control": "no-cache",
                    "Content-Security-Policy": content_security_policy(node_urls()),
                },
            )

        return handler

    for path, (name, content_type) in _ASSETS.items():
        if package.joinpath(name).is_file():
            app.router.add_get(path, asset(name, content_type))  # type: ignore[arg-type]

    async def dev_token(request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError):
            return _json_error(400, 'body must be JSON: {"room": ..., "name": ...}')
        if not isinstance(body, dict):
            return _json_error(400, "body must be a JSON object")
        room, name = body.get("room"), body.get("name")
        if not isinstance(room, str) or not 1 <= len(room) <= MAX_ROOM_CHARS:
            return _json_error(400, f"'room' must be a string of 1-{MAX_ROOM_CHARS} characters")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
            return _json_error(
                400, f"'name' must be a string of at most {MAX_NAME_CHARS} characters"
            )
        now = int(wallclock())
        claims = JoinClaims(
            room=room,
            identity=f"dev-{secrets.token_urlsafe(9)}",
            name=name or None,
            # host: two tabs of the demo admit each other from the waiting room (loopback only).
            grants=Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST,
            exp=now + DEV_TOKEN_TTL_S,
            iat=now,
        )
        try:
            token = issue_token(token_secret, claims)
        except ValueError as exc:
            return _json_error(400, str(exc))
        return web.json_response({"token": token}, headers={"Cache-Control": "no-store"})

    if dev_tokens:
        app.router.add_post("/dev-token", dev_token)
