"""A real ``redis-server`` (Debian ``redis-server``) for tests: its own process on a free
loopback port, no configuration file from /etc, no persistence (a restart forgets every key,
the harder case for the cluster), files in a temporary directory removed on exit. It can be
killed (SIGKILL) and started again on the same port, as a Redis restart in production."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
#: How long redis-server may take to listen.
START_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on ``127.0.0.1:port`` (and on ``address`` too, when given:
    e.g. the root namespace's address on a test's network-namespace LAN)."""

    def __init__(self, workdir: Path, address: str | None = None) -> None:
        if not Path(REDIS_SERVER).exists():
            raise RuntimeError(
                "redis-server not found: install the Debian package redis-server (make test does)"
            )
        self.workdir = workdir
        self.address = address
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address_url(self) -> str:
        """The URL on ``address`` (what a server in a namespace connects to)."""
        if self.address is None:
            raise ValueError("this redis-server listens on loopback only")
        return f"redis://{self.address}:{self.port}/0"

    def start(self) -> None:
        """Start (again) on the same port and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER, "--bind", "127.0.0.1", *filter(None, [self.address]),
                "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                # Protected mode refuses every client off loopback (no password is set): with
                # ``address`` it must be off, which exposes Redis only to the test's own LAN.
                "--protected-mode", "yes" if self.address is None else "no",
                "--loglevel", "warning",
                "--logfile", str(self.workdir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_S
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.2)
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    probe.sendall(b"PING\r\n")
                    with contextlib.suppress(OSError):
                        if probe.recv(16).startswith(b"+PONG"):
                            return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = self.workdir / "redis.log"
                text = log.read_text() if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on {self.port}: {text[-2000:]}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the process (no shutdown, no save) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def redis_server(address: str | None = None) -> Iterator[RedisServer]:
    """A running redis-server (on loopback, and on ``address`` when given), stopped and its
    directory removed on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="sfu-redis-"))
    server = RedisServer(workdir, address)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
