"""End-to-end tests of ``sfu serve``: real sockets on 127.0.0.1, signals, drain, logging."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from serve_process import HTTP_RE, MEDIA_RE, TIMEOUT, ServeProcess, http_get

from sfu.app import Server, run
from sfu.config import Config, HttpConfig, LoggingConfig, MediaConfig, ServerConfig
from sfu.logging_setup import REDACTED, configure_logging

pytestmark = pytest.mark.integration

LOCAL_CONFIG = Config(
    http=HttpConfig(host="127.0.0.1", port=0),
    media=MediaConfig(udp_host="127.0.0.1", udp_port=0),
    server=ServerConfig(drain_timeout_s=3.0),
)


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
    assert "stopped (media datagrams received:" in log
    assert "fast path:" in log
    assert "Traceback" not in log
    # No access log by default: it would carry client addresses.
    assert "GET /healthz" not in log
    if log_format == "json":
        records = [json.loads(line) for line in proc.lines]
        assert {r["level"] for r in records} <= {"debug", "info", "warning", "error"}
        assert all(r["worker"] == "sfu" and r["logger"] for r in records)


def test_a_signal_delivered_twice_still_drains_cleanly(serve_factory: Any) -> None:
    """Ctrl-C on `make run` reaches the server twice (terminal and make): one shutdown."""
    proc: ServeProcess = serve_factory()
    proc.wait_for(HTTP_RE)
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.send_signal(signal.SIGTERM)
    proc.proc.send_signal(signal.SIGINT)
    assert proc.finish() == 0, proc.log
    assert "forcing exit" not in proc.log
    assert "stopped (media datagrams received:" in proc.log
    assert "never awaited" not in proc.log


@pytest.mark.parametrize(("second_after", "exit_code"), [(0.1, 0), (1.3, 1)])
def test_repeat_signal_during_a_slow_drain(
    monkeypatch: pytest.MonkeyPatch, second_after: float, exit_code: int
) -> None:
    """A repeat within a second is the same request; a later one forces exit (code 1)."""
    real_stop = Server.stop

    async def slow_stop(self: Server) -> None:
        await asyncio.sleep(2.0)
        await real_stop(self)

    monkeypatch.setattr(Server, "stop", slow_stop)
    config = dataclasses.replace(LOCAL_CONFIG, server=ServerConfig(drain_timeout_s=3.0))

    async def scenario() -> int:
        task = asyncio.ensure_future(run(config))
        await asyncio.sleep(0.5)  # started and listening
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(second_after)
        os.kill(os.getpid(), signal.SIGINT)
        return await asyncio.wait_for(task, TIMEOUT)

    assert asyncio.run(scenario()) == exit_code


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
