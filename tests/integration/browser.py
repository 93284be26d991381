"""Headless Chromium (Debian chromium + chromium-driver) driven by selenium, for browser tests."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# Flags from DESIGN.md: fake camera and microphone, no network beyond loopback, a fresh profile.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
)

T = TypeVar("T")


@contextlib.contextmanager
def chromium(
    extra_flags: tuple[str, ...] = (), capabilities: dict[str, Any] | None = None
) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with its own temporary profile, always shut down afterwards.

    ``capabilities`` adds WebDriver capabilities, e.g. ``{"goog:loggingPrefs": {"performance":
    "ALL"}}`` to read the DevTools network events with ``driver.get_log("performance")``.
    """
    profile = tempfile.mkdtemp(prefix="sfu-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, *extra_flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run_async(driver: webdriver.Chrome, expression: str) -> Any:
    """Evaluate a JS expression that returns a promise; returns its resolved value."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"Promise.resolve({expression}).then(done, (e) => done({{error: String(e)}}));"
    )


def wait_until(probe: Callable[[], T], accept: Callable[[T], bool], timeout: float) -> T:
    """Poll ``probe`` until ``accept`` holds; fail with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = probe()
    while not accept(value):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s; last value: {value!r}")
        time.sleep(0.25)
        value = probe()
    return value
