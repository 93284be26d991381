"""aiohttp adapter: the HTTP application (health probes for now) and its listener lifecycle.

Later modules add their routes to the :class:`aiohttp.web.Application` returned by
:func:`build_http_app` before :meth:`HttpServer.start`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from aiohttp import web

from sfu.io.http_limits import ConnectionLimiter, LimitedSite

__all__ = ["HttpServer", "ReadinessProbe", "build_http_app"]

log = logging.getLogger(__name__)

#: Returns ``None`` when ready to take traffic, else a short machine-readable reason.
ReadinessProbe: TypeAlias = Callable[[], str | None]

_NO_STORE: Final = {"Cache-Control": "no-store"}


def build_http_app(
    *,
    readiness: ReadinessProbe,
    max_body_bytes: int,
    details: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """An application with ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness;
    ``details``, when given, adds its keys to the body, e.g. the node's cluster state)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, headers=_NO_STORE)

    async def readyz(_request: web.Request) -> web.Response:
        reason = readiness()
        extra = details() if details is not None else {}
        if reason is None:
            return web.json_response({"status": "ok", **extra}, headers=_NO_STORE)
        return web.json_response(
            {"status": "unavailable", "reason": reason, **extra}, status=503, headers=_NO_STORE
        )

    async def hide_server_version(_request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = "sfu"  # don't advertise library versions

    app = web.Application(client_max_size=max_body_bytes)
    app.on_response_prepare.append(hide_server_version)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    return app


class HttpServer:
    """Runs an application on one TCP listener and tears it down within a time bound."""

    def __init__(
        self,
        app: web.Application,
        *,
        shutdown_timeout: float,
        access_log: bool = False,
        keepalive_timeout: float | None = None,
        limiter: ConnectionLimiter | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {} if access_log else {"access_log": None}
        if keepalive_timeout is not None:
            kwargs["keepalive_timeout"] = keepalive_timeout  # aiohttp's default is 3630 s
        self._runner = web.AppRunner(
            app, handle_signals=False, shutdown_timeout=shutdown_timeout, **kwargs
        )
        self._limiter = limiter
        self._clock = clock
        self._started = False

    async def start(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """Listen on ``host:port`` (port 0 picks a free one); returns the bound addresses.
        With a limiter, connections pass it first (:mod:`sfu.io.http_limits`)."""
        await self._runner.setup()
        self._started = True
        site: web.BaseSite
        if self._limiter is not None and self._clock is not None:
            site = LimitedSite(self._runner, host, port, self._limiter, clock=self._clock)
        else:
            site = web.TCPSite(self._runner, host, port)
        await site.start()
        return self.addresses

    @property
    def addresses(self) -> list[tuple[Any, ...]]:
        """The ``sockname`` of every listening socket (empty once closed)."""
        return [tuple(addr) for addr in self._runner.addresses]

    @property
    def is_listening(self) -> bool:
        """Whether at least one listening socket is open."""
        return bool(self._runner.addresses)

    async def close(self) -> None:
        """Stop listening and finish in-flight requests (bounded by ``shutdown_timeout``)."""
        if self._started:
            self._started = False
            await self._runner.cleanup()
