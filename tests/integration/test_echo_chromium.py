"""Headless Chromium opens a secure media session to the server and decodes its own video."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import chromium, run_async, wait_until
from serve_process import HTTP_RE, ServeProcess

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "sfu.toml"
    config.write_text("[http]\nport = 0\n[media]\nudp_port = 0\n[server]\ndrain_timeout_s = 2.0\n")
    proc = ServeProcess(config)
    try:
        yield f"http://127.0.0.1:{proc.wait_for(HTTP_RE).group(1)}"
    finally:
        proc.kill()


def test_chromium_echo_decodes_video_over_gcm(server: str) -> None:
    with chromium() as driver:
        driver.get(server + "/echo-test?autostart")
        started = time.monotonic()
        stats = wait_until(
            lambda: run_async(driver, "window.echoStats()"),
            lambda s: bool(s.get("video")) and s["video"]["framesDecoded"] > 10,
            timeout=10.0,
        )
        assert time.monotonic() - started < 10.0
        assert stats["connectionState"] == "connected"
        # DTLS-SRTP negotiated the preferred AEAD profile (RFC 7714).
        assert stats["srtpCipher"] == "SRTP_AEAD_AES_128_GCM"
        assert stats["video"]["frameWidth"] > 0
        # Frames keep coming: decoding grows over another second.
        first = stats["video"]["framesDecoded"]
        wait_until(
            lambda: run_async(driver, "window.echoStats()"),
            lambda s: s["video"]["framesDecoded"] > first + 10,
            timeout=5.0,
        )
        assert wait_until(
            lambda: run_async(driver, "window.echoStats()"),
            lambda s: bool(s.get("audio")) and s["audio"]["packetsReceived"] > 10,
            timeout=5.0,
        )
