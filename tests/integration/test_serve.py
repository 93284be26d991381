"""End-to-end tests of ``sfu serve``: real sockets on 127.0.0.1, signals, drain, logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sfu.app import Server, run
from sfu.config import Config, HttpConfig, LoggingConfig, MediaConfig, ServerConfig
from sfu.logging_setup import REDACTED, configure_logging

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
HTTP_RE = re.compile(r"http listening on 127\.0\.0\.1:(\d+)")
MEDIA_RE = re.compile(r"media listening on udp 127\.0\.0\.1:(\d+)")

LOCAL_CONFIG = Config(
    http=HttpConfig(host="127.0.0.1", port=0),
    media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
    server=ServerConfig(drain_timeout_s=3.0),
)


class ServeProcess:
    """``python -m sfu serve`` in a subprocess, with its stderr lines collected by a thread."""

    def __init__(
        self,
        config_path: Path | None,
        extra_env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(extra_env or {})
        args = ["--config", str(config_path)] if config_path is not None else []
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "sfu", "serve", *args],
            stdout=subprocess.PIPE if command else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if command else subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
            start_new_session=command is not None,  # so a signal reaches make and its child
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stderr or self.proc.stdout
        assert stream is not None
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        """Return the first log line match for ``pattern``, waiting at most TIMEOUT."""
        for line in self.lines:
            if m := pattern.search(line):
                return m
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # keep end-of-stream visible to later calls
                break
            self.lines.append(item)
            if m := pattern.search(item):
                return m
        raise AssertionError(f"{pattern.pattern!r} not logged; log so far:\n" + self.log)

    def finish(self) -> int:
        """Wait for exit (bounded) and collect the remaining log lines."""
        rc = self.proc.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        while (line := self._queue.get_nowait() if not self._queue.empty() else None) is not None:
            self.lines.append(line)
        return rc

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ServeProcess] = []

    def start(log_format: str = "text") -> ServeProcess:
        path = tmp_path / f"sfu-{len(started)}.toml"
        path.write_text(
            '[http]\nhost = "127.0.0.1"\nport = 0\n'
            '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
            f'[logging]\nformat = "{log_format}"\n'
            "[server]\ndrain_timeout_s = 3.0\n"
        )
        proc = ServeProcess(path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(("sig", "log_format"), [(signal.SIGTERM, "text"), (signal.SIGINT, "json")])
def test_serve_probes_and_graceful_signal_exit(
    serve_factory: Any, sig: signal.Signals, log_format: str
) -> None:
    proc: ServeProcess = serve_factory(log_format)
    http_port = int(proc.wait_for(HTTP_RE).group(1))
    media_port = int(proc.wait_for(MEDIA_RE).group(1))
    assert http_port > 0
    assert media_port > 0

    assert http_get(http_port, "/healthz") == (200, {"status": "ok"})
    assert http_get(http_port, "/readyz") == (200, {"status": "ok"})

    # The media port is a bound UDP socket that accepts datagrams.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"\x00" * 20, ("127.0.0.1", media_port))

    sent_at = time.monotonic()
    proc.proc.send_signal(sig)
    assert proc.finish() == 0, proc.log
    assert time.monotonic() - sent_at < 3.0 + 2.0  # drain timeout plus slack

    log = proc.log
    assert f"received {sig.name}" in log
    assert "stopped (media datagrams dropped:" in log
    assert "fast path:" in log
    assert "Traceback" not in log
    # No access log by default: it would carry client addresses.
    assert "GET /healthz" not in log
    if log_format == "json":
        records = [json.loads(line) for line in proc.lines]
        assert {r["level"] for r in records} <= {"debug", "info", "warning", "error"}
        assert all(r["worker"] == "sfu" and r["logger"] for r in records)


def test_serve_refuses_port_in_use(serve_factory: Any, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        path = tmp_path / "clash.toml"
        path.write_text(f"[http]\nport = 0\n[media]\nudp_port = {port}\n")
        proc = ServeProcess(path)
        try:
            assert proc.finish() == 1
        finally:
            proc.kill()
    assert "cannot bind listening sockets" in proc.log


async def _get(session: aiohttp.ClientSession, port: int, path: str) -> tuple[int, Any]:
    async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.json()


def test_readyz_is_503_while_draining_and_datagrams_are_counted() -> None:
    async def scenario() -> None:
        server = Server(LOCAL_CONFIG)
        assert server.readiness() == "media socket not bound"
        await server.start()
        try:
            http_port = server.http_addresses[0][1]
            media_port = server.media_address[1]
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                assert await _get(session, http_port, "/readyz") == (200, {"status": "ok"})

                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    for _ in range(3):
                        udp.sendto(b"x", ("127.0.0.1", media_port))
                    deadline = time.monotonic() + TIMEOUT
                    while server.sink.count < 3 and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
                assert server.sink.count == 3

                server.begin_drain()
                assert server.draining
                status, body = await _get(session, http_port, "/readyz")
                assert (status, body) == (503, {"status": "unavailable", "reason": "draining"})
                # Liveness is unaffected by draining.
                assert await _get(session, http_port, "/healthz") == (200, {"status": "ok"})
        finally:
            await asyncio.wait_for(server.stop(), TIMEOUT)
        assert server.http_addresses == []
        assert server.readiness() == "draining"
        with pytest.raises(RuntimeError):
            _ = server.media_address

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))


def test_run_returns_0_when_stopped() -> None:
    async def scenario() -> int:
        stop = asyncio.Event()
        task = asyncio.ensure_future(run(LOCAL_CONFIG, stop=stop))
        await asyncio.sleep(0.2)
        assert not task.done()
        stop.set()
        return await asyncio.wait_for(task, TIMEOUT)

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == 0


def test_request_body_limit_is_enforced() -> None:
    cfg = Config(
        http=HttpConfig(host="127.0.0.1", port=0, max_body_bytes=1024),
        media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
    )

    async def scenario() -> int:
        server = Server(cfg)

        async def echo_len(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return aiohttp.web.Response(text=str(len(await request.read())))

        server.http_app.router.add_post("/test-body", echo_len)
        await server.start()
        try:
            port = server.http_addresses[0][1]
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s,
                s.post(f"http://127.0.0.1:{port}/test-body", data=b"a" * 512) as small,
            ):
                assert await small.text() == "512"
                async with s.post(f"http://127.0.0.1:{port}/test-body", data=b"a" * 4096) as big:
                    return big.status
        finally:
            await asyncio.wait_for(server.stop(), TIMEOUT)

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == 413


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").disabled = False


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("personal", [False, True])
def test_third_party_log_addresses_are_redacted_by_default(personal: bool) -> None:
    out = io.StringIO()
    cfg = LoggingConfig(level="info", format="json", debug_personal_data=personal)
    configure_logging(cfg, worker_name="w1", stream=out)
    logging.getLogger("aiohttp.server").error("Error handling request from %s", "198.51.100.7")
    logging.getLogger("asyncio").error("peer %s closed", ("2001:db8::5", 443))
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["worker"] for r in records] == ["w1", "w1"]
    text = out.getvalue()
    if personal:
        assert "198.51.100.7" in text
        assert "2001:db8::5" in text
    else:
        assert "198.51.100.7" not in text
        assert "2001:db8::5" not in text
        assert records[0]["msg"] == f"Error handling request from {REDACTED}"


def test_serve_without_config_file_uses_builtin_defaults_and_env() -> None:
    env = {"SFU_HTTP_PORT": "0", "SFU_MEDIA_UDP_PORT": "0", "SFU_SERVER_WORKER_NAME": "w-env"}
    proc = ServeProcess(None, env)
    try:
        http_port = int(proc.wait_for(HTTP_RE).group(1))
        assert http_get(http_port, "/readyz") == (200, {"status": "ok"})
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.finish() == 0, proc.log
    finally:
        proc.kill()
    assert "[w-env]" in proc.log
