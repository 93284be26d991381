"""A WHIP/WHEP POST placed on another node, forwarded there by this node (``[cluster]
whip_placement = "proxy"``, the default).

Why: a ``307`` to another node changes the origin, and HTTP clients drop ``Authorization``
on such a redirect (the Fetch standard, libcurl >= 7.83, aiohttp, requests): a browser WHIP
client, OBS or GStreamer's whipsink would then get ``401`` at the target. So the node that
places the request elsewhere sends it on itself (server to server: the same path and query
plus ``placed=1``, the client's ``Authorization``, ``Content-Type`` and offer) and returns the
target's answer: its status, the SDP body and an allow-list of headers, with the
``Location`` made absolute on the target node (RFC 9725 §4.2: the session resource, which the
client then PATCHes and DELETEs there directly, with its own credentials).

The target's own checks stay the authority (token, room, policy); this node adds no trust,
never logs the token or the offer/answer, follows no redirect and reads a bounded answer
within :data:`FORWARD_TIMEOUT_S`. When the target cannot be reached (connection refused,
timeout) or answers ``5xx``, the client gets the ``307`` it got before (``fallback``);
an answer that cannot be relayed (too large, or a ``201`` without a usable ``Location``)
is ``502`` (``failed``). Each outcome is counted (:data:`FORWARD_RESULTS`).

The mapping of request and answer is sans-I/O (:func:`forward_url`,
:func:`forward_headers`, :func:`relay_answer`); :class:`WhipForwarder` is the thin aiohttp
adapter around one client session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from sfu.cluster.placement import FORWARD_RESULTS
from sfu.config import WHIP_PLACEMENTS

__all__ = [
    "FORWARD_MAX_CONNECTIONS",
    "FORWARD_RESULTS",
    "FORWARD_TIMEOUT_S",
    "MAX_ANSWER_BYTES",
    "PLACED_QUERY",
    "RELAYED_HEADERS",
    "WHIP_PLACEMENTS",
    "Relayed",
    "WhipForwarder",
    "forward_headers",
    "forward_url",
    "relay_answer",
]

log = logging.getLogger(__name__)

#: Longest a forwarded POST may take, connecting included (seconds). The target answers a
#: WHIP offer at once; a WHEP viewer on a node that has nothing of the room yet waits up to
#: ``SHARD_STATE_WAIT_S`` + ``SHARD_STATE_SETTLE_S`` (2.25 s) for the publisher's tracks
#: there; the rest is margin for a loaded target. Past it the client gets the ``307``.
FORWARD_TIMEOUT_S: Final = 5.0
#: Largest answer body relayed (bytes). An SDP answer of audio and video with simulcast is
#: a few KiB; the target's error texts are one line. A larger answer is not relayed (502).
MAX_ANSWER_BYTES: Final = 64 * 1024
#: Forwarded POSTs in flight at once, to all targets together: a burst of placed joins
#: waits for a connection within its timeout (and then falls back) rather than opening
#: sockets without bound.
FORWARD_MAX_CONNECTIONS: Final = 64
#: Headers of the target's answer passed to the client (every other one is dropped):
#: the answer's type, the session resource, its entity tag (RFC 9725 §4.3.1), the ICE
#: servers (``Link``, §4.6), the challenge of a 401, a refusal's retry hint, caching.
RELAYED_HEADERS: Final = (
    "Content-Type",
    "Location",
    "ETag",
    "Link",
    "WWW-Authenticate",
    "Retry-After",
    "Cache-Control",
)
#: Headers of the client's request sent to the target (with ``X-Forwarded-For``, the client
#: as this node sees it: the target honours it only if it lists this node among
#: ``http.trusted_proxies``).
_FORWARDED_REQUEST_HEADERS: Final = ("Authorization", "Content-Type")
#: Query parameter that marks a request another node placed, forwarded or sent by ``307``
#: (the target never sends it on).
PLACED_QUERY: Final = "placed"
_HTTP_SCHEMES: Final = ("http", "https")


def forward_url(target: str, path: str, query: Iterable[tuple[str, str]]) -> str:
    """The URL on ``target`` (a node's public base URL) a request for ``path`` with
    ``query`` is forwarded to: the same path and query, marked ``placed=1``."""
    pairs = [(k, v) for k, v in query if k != PLACED_QUERY]
    pairs.append((PLACED_QUERY, "1"))
    return f"{target.removesuffix('/')}{path}?{urlencode(pairs)}"


def forward_headers(headers: Mapping[str, str], source: str | None) -> dict[str, str]:
    """The headers sent to the target: the client's credentials and content type only
    (``X-Forwarded-For``: ``source``, the client's address, when known)."""
    out = {name: headers[name] for name in _FORWARDED_REQUEST_HEADERS if name in headers}
    if source:
        out["X-Forwarded-For"] = source
    return out


@dataclass(frozen=True, slots=True)
class Relayed:
    """The answer to give the client: the target's status, allow-listed headers, body."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


def _origin(url: str) -> tuple[str, str] | None:
    parts = urlsplit(url)
    if parts.scheme not in _HTTP_SCHEMES or not parts.netloc:
        return None
    return parts.scheme, parts.netloc.lower()


def relay_answer(
    status: int, headers: Iterable[tuple[str, str]], body: bytes, *, url: str
) -> Relayed | str:
    """What the client gets for the target's answer to the POST forwarded to ``url``: a
    :class:`Relayed`, or ``"fallback"`` (the target failed: ``5xx``; send the ``307``) or
    ``"failed"`` (the answer cannot be relayed: over :data:`MAX_ANSWER_BYTES`, or a ``201``
    whose ``Location`` is missing or not on the target node).

    ``Location`` is resolved against ``url``, so the client gets an absolute URL on the
    target (a redirect of the target's own, from a target that drains, keeps its absolute
    URL on yet another node).
    """
    if status >= 500:
        return "fallback"
    if len(body) > MAX_ANSWER_BYTES:
        return "failed"
    allowed = {name.lower(): name for name in RELAYED_HEADERS}
    kept: list[tuple[str, str]] = []
    location: str | None = None
    for name, value in headers:
        canonical = allowed.get(name.lower())
        if canonical is None:
            continue
        if canonical == "Location":
            if location is not None:
                return "failed"  # two session resources: which one?
            location = urljoin(url, value.strip())
            if _origin(location) is None:
                return "failed"
            kept.append((canonical, location))
        else:
            kept.append((canonical, value))
    if status == 201 and (location is None or _origin(location) != _origin(url)):
        return "failed"
    return Relayed(status, kept, body)


class WhipForwarder:
    """Sends placed WHIP/WHEP POSTs to their target node and counts how each ended
    (:attr:`results`, by :data:`FORWARD_RESULTS`). One client session, opened on first use
    and closed by :meth:`close`."""

    def __init__(self, *, timeout_s: float = FORWARD_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.results: dict[str, int] = dict.fromkeys(FORWARD_RESULTS, 0)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                connector=aiohttp.TCPConnector(limit=FORWARD_MAX_CONNECTIONS),
                # Never the environment's proxies or .netrc: the target is a cluster node.
                trust_env=False,
                # No cookies kept between clients' requests.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def forward(self, url: str, headers: Mapping[str, str], body: bytes) -> Relayed | str:
        """POST ``body`` to ``url`` and map the answer (:func:`relay_answer`); on a
        connection failure or timeout ``"fallback"``. Counted; never raises for the
        target's failures, and never logs the headers or the body."""
        try:
            async with self._client().post(
                url, data=body, headers=dict(headers), allow_redirects=False
            ) as response:
                answer = await _read_bounded(response.content, MAX_ANSWER_BYTES)
                status = response.status
                answer_headers = list(response.headers.items())
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning(
                "forwarding a placed WHIP/WHEP request to %s failed (%s): answering 307",
                urlsplit(url).netloc,
                type(exc).__name__,
            )
            self.results["fallback"] += 1
            return "fallback"
        result = relay_answer(status, answer_headers, answer, url=url)
        if isinstance(result, Relayed):
            self.results["forwarded"] += 1
        else:
            self.results[result] += 1
            log.warning(
                "a placed WHIP/WHEP request forwarded to %s got status %d: %s",
                urlsplit(url).netloc,
                status,
                "answering 307" if result == "fallback" else "not relayable, answering 502",
            )
        return result

    async def close(self) -> None:
        """Close the client session (the node stops)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_bounded(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The stream's bytes up to ``limit`` + 1 (one more says it was too large)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
