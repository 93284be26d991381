"""``python -m bench.reconnect``: how fast a meeting heals after a network outage.

Two demo pages in Chromium, each in its own network namespace (tests/integration/netns.py),
meet through an in-process server; then, ``--outages`` times, one page's network is cut
(``tc``: nothing passes) for ``--outage-s`` seconds and restored. Measured each time: seconds
from the network's return until the page decodes the other's video again and the other page
decodes its (republished) video. Prints every sample and the median; needs root and Chromium.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

import netns
from browser import wait_until
from meeting import (
    MEETING_CONFIG,
    ServerThread,
    open_meeting,
    page_state,
    remote_by,
    stats,
    wait_connected,
)

from sfu.config import AuthConfig, HttpConfig, MediaConfig

ROOM = "bench-reconnect"
#: Give up on one sample after this long (it is then reported as a failure).
SAMPLE_TIMEOUT_S = 60.0


def _frames(driver: Any, participant: str | None) -> int:
    entry = remote_by(stats(driver), participant or "", "video") if participant else None
    return int(entry.get("framesDecoded") or 0) if entry else 0


def _other(driver: Any) -> str | None:
    remote = stats(driver).get("remote") or {}
    ids = {e.get("participant") for e in remote.values() if e.get("kind") == "video"}
    return next(iter(ids), None)


def run(outages: int, outage_s: float) -> list[float]:
    samples: list[float] = []
    with netns.lab(["a", "b"]) as hosts:
        address = hosts.server_address
        config = replace(
            MEETING_CONFIG,
            http=HttpConfig(host=address, port=0),
            media=MediaConfig(udp_host=address, udp_port=0),
            auth=AuthConfig(jwt_secret="bench-reconnect-" + "k" * 40, dev_tokens=True),
        )
        server = ServerThread(config)
        server.start()
        base = f"http://{address}:{server.server.http_addresses[0][1]}"
        flag = f"--unsafely-treat-insecure-origin-as-secure={base}"
        try:
            with hosts["a"].chromium((flag,)) as alice, hosts["b"].chromium((flag,)) as bob:
                open_meeting(alice, base, ROOM, "alice")
                open_meeting(bob, base, ROOM, "bob")
                wait_connected(alice, SAMPLE_TIMEOUT_S)
                wait_connected(bob, SAMPLE_TIMEOUT_S)
                wait_until(lambda: _frames(bob, _other(bob)), lambda n: n > 10, SAMPLE_TIMEOUT_S)
                for i in range(outages):
                    seen_by_bob = _frames(bob, _other(bob))
                    hosts["a"].outage()
                    time.sleep(outage_s)
                    hosts["a"].clear()
                    back = time.monotonic()
                    try:
                        wait_until(
                            lambda: (
                                page_state(alice).get("status") == "connected"
                                and _frames(alice, _other(alice)) > 5
                            ),
                            bool,
                            SAMPLE_TIMEOUT_S,
                        )
                        wait_until(
                            lambda: _frames(bob, page_state(alice).get("participantId")),
                            lambda n, seen=seen_by_bob: n > seen + 5 or 5 < n < seen,
                            SAMPLE_TIMEOUT_S,
                        )
                    except AssertionError:
                        print(f"outage {i + 1}: not back within {SAMPLE_TIMEOUT_S:.0f} s")
                        continue
                    elapsed = time.monotonic() - back
                    samples.append(elapsed)
                    print(
                        f"outage {i + 1}: decoding again {elapsed:.2f} s after the network returned"
                    )
                    time.sleep(2.0)
        finally:
            server.stop()
    return samples


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reconnect", description=__doc__)
    p.add_argument("--outages", type=int, default=5, help="outages to measure (default 5)")
    p.add_argument("--outage-s", type=float, default=20.0, help="seconds each (default 20)")
    args = p.parse_args(argv)
    if not 1 <= args.outages <= 50 or not 1.0 <= args.outage_s <= 120.0:
        print("python -m bench.reconnect: 1-50 outages of 1-120 s", file=sys.stderr)
        return 2
    samples = run(args.outages, args.outage_s)
    if samples:
        print(
            f"median {statistics.median(samples):.2f} s, min {min(samples):.2f} s, "
            f"max {max(samples):.2f} s over {len(samples)}/{args.outages} outages of "
            f"{args.outage_s:.0f} s"
        )
    return 0 if len(samples) == args.outages else 1


if __name__ == "__main__":
    raise SystemExit(main())
