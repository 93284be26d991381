"""`make run`, the README's first command, starts the server on configs/default.toml."""

from __future__ import annotations

import os
import signal

import pytest
from serve_process import HTTP_RE, MEDIA_RE, ServeProcess, http_get

pytestmark = pytest.mark.integration


def test_make_run_serves_healthz_on_the_default_config() -> None:
    # The default config with ports overridden through the environment (0 = any free port),
    # so the test never collides with a server a developer already runs on 8080/40000.
    proc = ServeProcess(
        None,
        extra_env={"SFU_HTTP_PORT": "0", "SFU_MEDIA_UDP_PORT": "0"},
        command=["make", "--no-print-directory", "run"],
    )
    try:
        http_port = int(proc.wait_for(HTTP_RE).group(1))
        assert int(proc.wait_for(MEDIA_RE).group(1)) > 0
        assert http_get(http_port, "/healthz") == (200, {"status": "ok"})
        assert http_get(http_port, "/readyz") == (200, {"status": "ok"})
        os.killpg(proc.proc.pid, signal.SIGTERM)
        proc.finish()
        assert "stopped (media datagrams received:" in proc.log
        assert "Traceback" not in proc.log
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.proc.pid, signal.SIGKILL)
        proc.kill()
