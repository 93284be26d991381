"""Where the load goes: a server under test, started locally or reached at a URL.

The :class:`Target` protocol is everything the bench needs from a server; our SFU
(:class:`SfuTarget`) and Janus VideoRoom (``bench.janus.JanusTarget``) implement it:

* ``name``: short label for tables and JSON (``"sfu"``, ``"janus"``);
* ``pid``: the server process id when the bench started it (its CPU time is read from
  ``/proc/<pid>/stat``), else ``None``;
* ``async start()`` / ``async stop()``: start (or just check) the server, and stop what
  ``start`` started; ``stop`` is safe to call twice and after a failed ``start``;
* ``async publish(room, identity, offer_sdp) -> Session``: we offer sendonly media (audio
  and/or simulcast VP8), the server answers (``session.answer_sdp``);
* ``async subscribe(room, identity, publisher, offer_sdp) -> Session``: receive
  ``publisher``'s media. A target with ``server_offers = False`` takes our recvonly offer
  and returns ``answer_sdp``; one with ``server_offers = True`` ignores ``offer_sdp`` (the
  bench passes ``None``), returns the server's offer in ``session.offer_sdp`` and then gets
  our answer through ``async answer(session, answer_sdp)``;
* ``async close(session)``: end one session (best effort, never raises);
* ``async cpu_seconds() -> float | None``: server CPU seconds used so far (user + system),
  or ``None`` when unknown. Only differences between two readings are used.

A target may keep whatever it needs in ``Session.handle``. A target whose media cannot live on
loopback exposes ``media_host: str`` once started (Janus): the bench then binds its endpoints
there. ``python -m bench --vs janus`` builds ``bench.janus.JanusTarget(server_cpu=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

__all__ = [
    "HTTP_TIMEOUT_S",
    "Session",
    "SfuTarget",
    "Target",
    "TargetError",
    "cpu_count",
    "death_signal",
    "proc_cpu_seconds",
]

#: Bound on every signaling request.
HTTP_TIMEOUT_S = 20.0
#: Bound on a local server's start (process spawn to "http listening").
START_TIMEOUT_S = 30.0
#: prctl(2) option: the signal the kernel sends a child when its parent dies.
_PR_SET_PDEATHSIG: Final = 1
_LISTEN_RE = re.compile(r"http listening on (\S+):(\d+)")
_TOKEN_TTL_S = 6 * 3600


class TargetError(RuntimeError):
    """The server under test refused or failed a request; the message says which."""


@dataclass(eq=False)
class Session:
    """One publish or subscribe session on a target."""

    answer_sdp: str | None = None
    offer_sdp: str | None = None
    handle: Any = None


class Target(Protocol):
    """What the bench needs from a server under test (see the module docstring)."""

    name: str
    server_offers: bool

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, room: str, identity: str, offer_sdp: str) -> Session: ...

    async def subscribe(
        self, room: str, identity: str, publisher: str, offer_sdp: str | None
    ) -> Session: ...

    async def answer(self, session: Session, answer_sdp: str) -> None: ...

    async def close(self, session: Session) -> None: ...

    async def forwarding_latency(self) -> dict[str, dict[float, float]] | None:
        """The server's forwarding-latency buckets per worker (``/metrics``), None when
        it does not answer."""
        if self._http is None or self.url is None:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError, ValueError):
            async with self._http.get(self.url + "/metrics") as resp:
                if resp.status == 200:
                    return forwarding_buckets(await resp.text())
        return None

    async def cpu_seconds(self) -> float | None: ...


def death_signal() -> Callable[[], None]:
    """A ``preexec_fn`` that has the kernel SIGKILL the child if the bench dies without
    stopping it (``prctl(PR_SET_PDEATHSIG)``, kept across ``taskset``'s exec).

    libc is resolved here, in the parent: the forked child only makes the one prctl call.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_death_signal


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds from ``/proc/<pid>/stat``; None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from ``/proc/<pid>/task/*/children``)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its live descendants (a supervisor and its workers, or a
    ``taskset`` wrapper and the server it runs); None if ``pid`` is unreadable."""
    own = proc_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(tree_cpu_seconds(child) or 0.0 for child in _children(pid))


#: The server's forwarding-latency histogram (sfu/metrics/collector.py).
_FORWARDING_BUCKET: Final = "sfu_forwarding_latency_seconds_bucket"


def forwarding_buckets(text: str) -> dict[str, dict[float, float]]:
    """The cumulative buckets (upper edge in seconds -> count) of the server's
    forwarding-latency histogram in a ``/metrics`` text, per ``worker`` label ("" for a
    single process)."""
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != _FORWARDING_BUCKET:
                continue
            worker = sample.labels.get("worker", "")
            out.setdefault(worker, {})[float(sample.labels["le"])] = sample.value
    return out


def forwarding_quantiles(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float | None]]:
    """Per worker, the window's forwarding samples and the upper bucket edges (ms) their
    p50 and p99 fall in (a bucket's edge bounds the value from above)."""
    out: dict[str, dict[str, float | None]] = {}
    for worker, buckets in sorted(after.items()):
        old = before.get(worker, {})
        edges = sorted(buckets)
        counts = [buckets[e] - old.get(e, 0.0) for e in edges]
        total = counts[-1] if counts else 0.0

        def edge(
            q: float, edges: list[float] = edges, counts: list[float] = counts
        ) -> float | None:
            if not counts or counts[-1] <= 0:
                return None
            rank = q * counts[-1]
            for e, c in zip(edges, counts, strict=True):
                if c >= rank:
                    return round(e * 1e3, 4) if e != float("inf") else None
            return None

        out[worker or "0"] = {"samples": total, "p50_ms": edge(0.5), "p99_ms": edge(0.99)}
    return out


def _metrics_cpu(text: str) -> float | None:
    for line in text.splitlines():
        if line.startswith("process_cpu_seconds_total"):
            with contextlib.suppress(ValueError, IndexError):
                return float(line.split()[-1])
    return None


@dataclass(eq=False)
class SfuTarget:
    """Our SFU: a local ``python -m sfu serve`` subprocess, or a running one at ``url``.

    Local: a generated config (loopback, ephemeral ports, random JWT secret, no waiting
    room, metrics on), pinned to CPU ``server_cpu`` with ``taskset`` when given. Remote:
    ``url`` and the deployment's ``jwt_secret`` (tokens are signed here).
    """

    url: str | None = None
    jwt_secret: str | None = None
    server_cpu: int | None = None
    #: The local server's HTTP and media address (a network-namespace lab's gateway, say).
    host: str = "127.0.0.1"
    max_participants: int = 1000
    name: str = "sfu"
    server_offers: bool = False
    #: ``server.workers`` of the local server: above 1, a supervisor and that many worker
    #: processes (their CPU time counts with the supervisor's).
    workers: int = 1
    #: ``server.room_spread_subscribers`` of the local server (0: rooms are not spread).
    spread: int = 0
    #: More ``[server]`` keys (TOML lines) of the local server.
    server_options: str = ""
    #: More sections (TOML) of the local server's config, e.g. ``[cluster]``.
    extra_config: str = ""
    #: Have the kernel SIGKILL the local server if the bench dies without stopping it.
    die_with_bench: bool = False
    #: Follow a WHIP/WHEP 307 (a clustered node placing the session on another node, RFC
    #: 9725 section 4.5); off, a 307 is an error (the bench chose the node on purpose).
    follow_redirects: bool = True
    _proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _tmp: str | None = field(default=None, repr=False)
    _http: aiohttp.ClientSession | None = field(default=None, repr=False)
    _log: list[str] = field(default_factory=list, repr=False)
    _drain: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """The local server's process id (None for a remote target)."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the local server (or check the remote one answers) and open HTTP."""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S))
        if self.url is not None:
            if not self.jwt_secret:
                raise TargetError("--target needs the deployment's JWT secret (--jwt-secret)")
            self.url = self.url.rstrip("/")
            return
        # A secret given is kept (nodes of one cluster share it); else a fresh one.
        self.jwt_secret = self.jwt_secret or secrets.token_urlsafe(32)
        self._tmp = tempfile.mkdtemp(prefix="sfu-bench-")
        config = Path(self._tmp) / "bench.toml"
        config.write_text(self._config_text(self.jwt_secret, self._tmp))
        cmd = [sys.executable, "-m", "sfu", "serve", "--config", str(config)]
        if self.server_cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(self.server_cpu), *cmd]
        self._proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=death_signal() if self.die_with_bench else None,
        )
        try:
            self.url = await asyncio.wait_for(self._wait_listening(), START_TIMEOUT_S)
        except (TimeoutError, TargetError):
            await self.stop()
            raise
        self._drain = asyncio.ensure_future(self._drain_log(self._proc))

    def _config_text(self, secret: str, tmp: str) -> str:
        return (
            f'[http]\nhost = "{self.host}"\nport = 0\n'
            f'[media]\nudp_host = "{self.host}"\nudp_port = 0\n'
            "max_transports = 20000\nmax_pending_transports = 2000\n"
            # The whole load comes from one address and a few identities by design.
            "max_pending_per_source = 2000\nmax_pending_per_identity = 2000\n"
            '[logging]\nlevel = "info"\n'
            f"[server]\nworkers = {self.workers}\nroom_spread_subscribers = {self.spread}\n"
            + self.server_options
            + f'[auth]\njwt_secret = "{secret}"\ndev_tokens = false\n'
            f"[rooms]\nwaiting_room = false\nmax_participants = {self.max_participants}\n"
            f'[audit]\npath = "{tmp}/audit"\n'
            "[metrics]\nenabled = true\n"
            # The unauthenticated echo service is for loopback only.
            + ("" if self.host.startswith("127.") else "[echo]\nenabled = false\n")
            + self.extra_config
        )

    async def _wait_listening(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = (await self._proc.stdout.readline()).decode(errors="replace")
            if not line:
                tail = "".join(self._log[-20:])
                raise TargetError(f"the server exited before listening:\n{tail}")
            self._log.append(line)
            del self._log[:-200]
            match = _LISTEN_RE.search(line)
            if match:
                return f"http://{match.group(1)}:{match.group(2)}"

    async def _drain_log(self, proc: asyncio.subprocess.Process) -> None:
        """Keep reading the server's output so its pipe never fills (last lines kept)."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self._log.append(line.decode(errors="replace"))
            del self._log[:-200]

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the local server printed (for error reports)."""
        return "".join(self._log[-lines:])

    async def stop(self) -> None:
        """Stop the local server (SIGTERM, then SIGKILL after 10 s) and close HTTP."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def join_token(self, room: str, identity: str, grants: Grant) -> str:
        """A join token for ``identity`` in ``room`` (for browser pages: ``?token=``)."""
        return self._token(room, identity, grants)

    def _token(self, room: str, identity: str, grants: Grant) -> str:
        assert self.jwt_secret is not None
        now = int(time.time())
        claims = JoinClaims(
            room=room, identity=identity, name=identity, grants=grants, iat=now - 5,
            exp=now + _TOKEN_TTL_S,
        )  # fmt: skip
        return issue_token(self.jwt_secret, claims)

    async def _post(self, path: str, sdp: str, token: str) -> Session:
        if self._http is None or self.url is None:
            raise TargetError("target not started")
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}
        async with self._http.post(
            self.url + path, data=sdp, headers=headers, allow_redirects=self.follow_redirects
        ) as resp:
            body = await resp.text()
            if resp.status != 201:
                raise TargetError(f"POST {path}: {resp.status} {body.strip()[:200]}")
            return Session(answer_sdp=body, handle=resp.headers.get("Location"))

    async def publish(self, room: str, identity: str, offer_sdp: str) -> Session:
        """WHIP: ``POST /whip/{room}`` with a publish token."""
        return await self._post(
            f"/whip/{room}", offer_sdp, self._token(room, identity, Grant.PUBLISH)
        )

    async def subscribe(
        self, room: str, identity: str, publisher: str, offer_sdp: str | None
    ) -> Session:
        """WHEP: ``POST /whep/{room}/{publisher}`` with our recvonly offer."""
        if offer_sdp is None:
            raise TargetError("our SFU answers subscriber offers: pass the offer")
        token = self._token(room, identity, Grant.SUBSCRIBE)
        return await self._post(f"/whep/{room}/{publisher}", offer_sdp, token)

    async def answer(self, session: Session, answer_sdp: str) -> None:
        """Never called: our SFU does not offer (``server_offers`` is False)."""
        raise TargetError("our SFU does not send offers")

    async def close(self, session: Session) -> None:
        """``DELETE`` the session's Location (best effort)."""
        if self._http is None or self.url is None or not session.handle:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with self._http.delete(self.url + str(session.handle)):
                pass

    async def metrics_text(self) -> str | None:
        """The server's ``/metrics`` text, None when it does not answer."""
        if self._http is None or self.url is None:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with self._http.get(self.url + "/metrics") as resp:
                if resp.status == 200:
                    return await resp.text()
        return None

    async def forwarding_latency(self) -> dict[str, dict[float, float]] | None:
        """The server's forwarding-latency buckets per worker (``/metrics``), None when
        it does not answer."""
        text = await self.metrics_text()
        if text is None:
            return None
        with contextlib.suppress(ValueError):
            return forwarding_buckets(text)
        return None

    async def cpu_seconds(self) -> float | None:
        """Local: ``/proc`` of the server; remote: ``process_cpu_seconds_total`` from
        ``/metrics`` when the deployment exposes it, else None."""
        if self._proc is not None:
            return tree_cpu_seconds(self._proc.pid)
        if self._http is None or self.url is None:
            return None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            async with self._http.get(self.url + "/metrics") as resp:
                if resp.status == 200:
                    return _metrics_cpu(await resp.text())
        return None
