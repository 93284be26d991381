"""CORS (Fetch standard, "CORS protocol") for WHIP/WHEP, so a page on another origin can
publish or play.

Only origins listed in ``http.cors_origins`` get CORS headers; the server's own origin needs
none. A preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin
is answered ``204`` with the methods and request headers WHIP/WHEP use; from any other origin
``403``. An actual request that carries a foreign ``Origin`` that is not allowed is refused
with ``403`` before it does anything: the browser would hide the response from the page, but
the session would still have been created. ``Location``, ``Link`` and ``ETag`` are exposed to
the page (RFC 9725 §4.2, §4.6). Requests without ``Origin`` (non-browser clients) pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from aiohttp import web

__all__ = ["CORS_PATH_PREFIXES", "add_cors"]

#: The endpoints web pages of other origins may call.
CORS_PATH_PREFIXES: Final = ("/whip/", "/whep/")
ALLOW_METHODS: Final = "POST, PATCH, DELETE, OPTIONS"
ALLOW_HEADERS: Final = "Authorization, Content-Type, If-Match"
EXPOSE_HEADERS: Final = "Location, Link, ETag"
#: Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE_S: Final = 600

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def add_cors(app: web.Application, origins: Iterable[str]) -> None:
    """Answer preflights and add CORS headers on ``app``'s WHIP/WHEP routes."""
    allowed = frozenset(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(CORS_PATH_PREFIXES):
            return await handler(request)
        origin = request.headers.get("Origin")
        foreign = origin is not None and origin != _own_origin(request)
        if request.method == "OPTIONS":
            if origin is None or not foreign:
                return web.Response(status=204, headers={"Allow": ALLOW_METHODS})
            if origin not in allowed:
                return web.Response(status=403, text="origin not allowed\n")
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": ALLOW_METHODS,
                    "Access-Control-Allow-Headers": ALLOW_HEADERS,
                    "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                    "Vary": "Origin",
                },
            )
        if not foreign:
            return await handler(request)
        assert origin is not None
        if origin not in allowed:
            return web.Response(status=403, text="origin not allowed\n")
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers["Vary"] = "Origin"
        return response

    app.middlewares.append(cors)
