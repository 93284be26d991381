"""coturn (Debian ``coturn``) for tests: its own ``turnserver`` process on a free port of one
address, TURN REST API auth (``use-auth-secret``), no configuration file from /etc (``-n``),
no TLS, no CLI, logs into a temporary directory; stopped (and its files removed) on exit."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
#: How long coturn may take to listen.
START_S = 10.0


@dataclass(frozen=True)
class TurnServer:
    address: str
    port: int
    secret: str
    log: Path

    def urls(self) -> tuple[str, ...]:
        return (
            f"turn:{self.address}:{self.port}?transport=udp",
            f"turn:{self.address}:{self.port}?transport=tcp",
        )


def _free_port(address: str) -> int:
    """A port free for both TCP and UDP on ``address`` (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for coturn")


@contextlib.contextmanager
def turnserver(address: str, secret: str) -> Iterator[TurnServer]:
    """A running coturn on ``address`` (an IP literal of this namespace)."""
    if not Path(TURNSERVER).exists():
        raise RuntimeError(
            "turnserver not found: install the Debian package coturn (make test does)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="sfu-coturn-"))
    port = _free_port(address)
    log = workdir / "turn.log"
    relay_low = 49152 + (port % 8000)
    proc = subprocess.Popen(
        [
            TURNSERVER, "-n",
            f"--listening-ip={address}", f"--relay-ip={address}", f"--listening-port={port}",
            "--use-auth-secret", f"--static-auth-secret={secret}", "--realm=sfu.test",
            "--no-tls", "--no-dtls", "--no-cli", "--no-multicast-peers",
            f"--min-port={relay_low}", f"--max-port={relay_low + 200}",
            f"--log-file={log}", "--simple-log", "--no-stdout-log",
            f"--pidfile={workdir / 'turn.pid'}", f"--userdb={workdir / 'turn.db'}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + START_S
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.settimeout(0.2)
                if probe.connect_ex((address, port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"turnserver did not start (exit {proc.poll()})")
            time.sleep(0.1)
        yield TurnServer(address, port, secret, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        shutil.rmtree(workdir, ignore_errors=True)
