"""`sfu serve` in a subprocess, with its log collected, for tests of the real process."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 15.0
HTTP_RE = re.compile(r"http listening on 127\.0\.0\.1:(\d+)")
MEDIA_RE = re.compile(r"media listening on udp 127\.0\.0\.1:(\d+)")


class ServeProcess:
    """``python -m sfu serve`` in a subprocess, with its stderr lines collected by a thread."""

    def __init__(
        self,
        config_path: Path | None,
        extra_env: dict[str, str] | None = None,
        command: list[str] | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        """``prefix`` goes before the command, e.g. ``ip netns exec NS`` to run it in a
        network namespace (the process exec's the command, so its pid is the server's)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(extra_env or {})
        args = ["--config", str(config_path)] if config_path is not None else []
        self.proc = subprocess.Popen(
            [*prefix, *(command or [sys.executable, "-m", "sfu", "serve", *args])],
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

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL if it has not ended within TIMEOUT."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.finish()
            except Exception:
                self.kill()


def http_get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
