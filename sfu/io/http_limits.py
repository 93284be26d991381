"""Connection limits of the HTTP listeners: what keeps one client from taking the HTTP side down.

aiohttp bounds requests (body size, header sizes) but not connections: without these, idle or
slowloris sockets are held until the process runs out of file descriptors, and then health
probes, scrapes and joins all fail. Each listener's protocol factory is wrapped
(:class:`LimitedSite`) so that, before aiohttp sees a connection,

* a connection beyond ``max_connections`` open on that listener, or beyond
  ``max_connections_per_source`` from one peer address (a trusted proxy is exempt: every client
  behind it shares its address), gets a bare ``503`` and is closed at once;
* a connection that has not sent a complete request head (the blank line ending the header
  block, RFC 9112 §2.1) within ``header_timeout_s`` is closed (slowloris);

and aiohttp's own keep-alive timeout (``http.keepalive_timeout_s``) closes idle connections
between requests (aiohttp starts it at accept, so a socket that never sends a byte is closed
by whichever timer fires first). Refusals are counted by reason for the metrics and logged at
INFO at most once per :data:`LOG_INTERVAL_S`, without addresses.

Only asyncio's public protocol API is used: the wrapper forwards every callback to the
aiohttp request handler it made.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, cast

from aiohttp import web

__all__ = [
    "LOG_INTERVAL_S",
    "REASONS",
    "ConnectionLimiter",
    "ConnectionLimits",
    "HttpLimitCounters",
    "LimitedSite",
    "raise_file_limit",
]

log = logging.getLogger(__name__)

#: Why a connection was refused or closed early (the ``reason`` label).
REFUSED_MAX: Final = "max_connections"
REFUSED_PER_SOURCE: Final = "per_source"
CLOSED_HEADER_TIMEOUT: Final = "header_timeout"
REASONS: Final = (REFUSED_MAX, REFUSED_PER_SOURCE, CLOSED_HEADER_TIMEOUT)

#: Seconds between two INFO lines about refused connections (each sums what happened since).
LOG_INTERVAL_S: Final = 10.0

#: What a refused connection gets before the close: enough for a client to tell "busy" from
#: a network failure, and nothing it has to wait for.
_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Retry-After: 5\r\n\r\n"
)
#: The end of a request head (RFC 9112 §2.1); a bare LF line ending is accepted too.
_HEAD_ENDS: Final = (b"\r\n\r\n", b"\n\n")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The limits of one listener (``http.*`` in the configuration)."""

    max_connections: int
    max_connections_per_source: int
    header_timeout_s: float
    #: Peer addresses exempt from the per-source cap (``http.trusted_proxies``).
    exempt: frozenset[str] = frozenset()


@dataclass(slots=True)
class ConnectionLimiter:
    """Open connections of one listener, in all and per peer address, and what was refused.

    Sans-I/O: :meth:`admit` and :meth:`release` are called by the protocol wrapper; ``now``
    comes from the caller's clock (for the log's rate limit only).
    """

    limits: ConnectionLimits
    name: str = "http"
    open: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    #: The most connections one address has held at once (exempt proxies aside).
    peak_per_source: int = 0
    _unlogged: dict[str, int] = field(default_factory=dict)
    _logged_at: float | None = None

    def admit(self, source: str, now: float) -> bool:
        """Take a place for a new connection from ``source``; False (counted) when full."""
        limits = self.limits
        if self.open >= limits.max_connections:
            self.count(REFUSED_MAX, now)
            return False
        held = self.per_source.get(source, 0)
        if held >= limits.max_connections_per_source and source not in limits.exempt:
            self.count(REFUSED_PER_SOURCE, now)
            return False
        self.open += 1
        self.per_source[source] = held + 1
        if source not in limits.exempt and held + 1 > self.peak_per_source:
            self.peak_per_source = held + 1
        return True

    def release(self, source: str) -> None:
        """A connection :meth:`admit` let in has closed."""
        self.open -= 1
        held = self.per_source.get(source, 0) - 1
        if held > 0:
            self.per_source[source] = held
        else:
            self.per_source.pop(source, None)

    def count(self, reason: str, now: float) -> None:
        """Count one refusal; log the ones not logged yet, at most once per interval."""
        self.refused[reason] += 1
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL_S:
            self._logged_at = now
            summary = ", ".join(f"{r}={n}" for r, n in sorted(self._unlogged.items()))
            self._unlogged.clear()
            log.info(
                "%s listener: connections refused or closed by limits (%s); %d open",
                self.name,
                summary,
                self.open,
            )


class HttpLimitCounters:
    """Every listener's limiter, for the metrics: refusals summed, open connections each."""

    def __init__(self, limiters: Iterable[ConnectionLimiter] = ()) -> None:
        self.limiters: list[ConnectionLimiter] = list(limiters)

    @property
    def refused(self) -> dict[str, int]:
        """Refusals by reason, over every listener."""
        out = dict.fromkeys(REASONS, 0)
        for limiter in self.limiters:
            for reason, n in limiter.refused.items():
                out[reason] += n
        return out

    def open_connections(self) -> dict[str, int]:
        """Open connections by listener name."""
        return {limiter.name: limiter.open for limiter in self.limiters}


class _GuardedProtocol(asyncio.Protocol):
    """One accepted connection: admitted (then everything goes to aiohttp's handler) or
    refused; closed if its first request head does not arrive in time."""

    __slots__ = ("_admitted", "_clock", "_head_tail", "_inner", "_limiter", "_source", "_timer")

    def __init__(
        self, inner: asyncio.Protocol, limiter: ConnectionLimiter, clock: Callable[[], float]
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._clock = clock
        self._admitted = False
        self._source = ""
        self._timer: asyncio.TimerHandle | None = None
        self._head_tail = b""

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport instances but have its methods.
        transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername")
        self._source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._limiter.admit(self._source, self._clock()):
            transport.write(_BUSY)
            transport.close()
            return
        self._admitted = True
        self._timer = asyncio.get_running_loop().call_later(
            self._limiter.limits.header_timeout_s, self._head_expired, transport
        )
        self._inner.connection_made(transport)

    def _head_expired(self, transport: asyncio.Transport) -> None:
        self._timer = None
        self._limiter.count(CLOSED_HEADER_TIMEOUT, self._clock())
        transport.abort()  # RST: frees the descriptor now, no lingering close

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if self._timer is not None:
            seen = self._head_tail + data
            if any(end in seen for end in _HEAD_ENDS):
                self._timer.cancel()
                self._timer = None
                self._head_tail = b""
            else:
                self._head_tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._limiter.release(self._source)
        self._inner.connection_lost(exc)


class LimitedSite(web.BaseSite):
    """A TCP listener of an :class:`aiohttp.web.AppRunner` whose connections pass a
    :class:`ConnectionLimiter` before aiohttp sees them (``TCPSite`` otherwise)."""

    __slots__ = ("_clock", "_host", "_limiter", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limiter: ConnectionLimiter,
        *,
        clock: Callable[[], float],
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limiter = limiter
        self._clock = clock

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limiter, clock = self._limiter, self._clock

        def factory() -> asyncio.Protocol:
            return _GuardedProtocol(server(), limiter, clock)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def raise_file_limit(wanted: int) -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` toward ``wanted`` (never past the hard limit, never
    lower); returns the (soft, hard) limits in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # pragma: no cover - a container may refuse
            log.warning("could not raise the file limit to %d: %s", target, exc)
    return soft, hard
