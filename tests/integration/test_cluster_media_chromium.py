"""One meeting over two clustered nodes, a Chromium page on each.

Two in-process servers share a real redis-server and link over QUIC (loopback, certificates
of one CA). Alice's page joins on node A, Bob's on node B: each decodes the other's audio and
video (Chromium publishes VP8 simulcast), which crossed the node link once, with the layers
the far page's subscription needs (its SSRCs named by STREAMS on the control stream).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium, wait_until
from cluster_nodes import node_configs
from meeting import (
    MEETING_CONFIG,
    open_meeting,
    page_state,
    remote_by,
    server_thread,
    stats,
    wait_connected,
)
from redis_server import RedisServer, redis_server

from sfu.transport.media_lane import BLOCKED_WINDOW_S, REPORT_INTERVAL_S

pytestmark = pytest.mark.integration

ROOM = "two-nodes"
SECRET = "cluster-chromium-test-secret-of-enough-length-01"
#: Media from the other node must be decoding this soon after both pages joined.
JOIN_DEADLINE_S = 20.0
KINDS = ("audio", "video")


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def _flowing(entry: dict[str, Any] | None, kind: str) -> bool:
    if entry is None:
        return False
    if kind == "video":
        return bool(entry["framesDecoded"] > 0 and entry["frameWidth"] > 0)
    return bool(entry["totalSamplesReceived"] > 0 and entry["packetsReceived"] > 0)


def test_pages_on_two_nodes_decode_each_other(server: RedisServer, tmp_path: Path) -> None:
    configs = node_configs(server.url, tmp_path, MEETING_CONFIG, SECRET)
    with (
        server_thread(configs["node-a"]) as node_a,
        server_thread(configs["node-b"]) as node_b,
        contextlib.ExitStack() as browsers,
    ):
        wait_until(
            lambda: (node_a.server.node_pipes, node_b.server.node_pipes),
            lambda pipes: all(p is not None and p.carriers for p in pipes),
            timeout=JOIN_DEADLINE_S,
        )
        alice, bob = browsers.enter_context(chromium()), browsers.enter_context(chromium())
        open_meeting(alice, node_a.base, ROOM, "Alice")
        alice_id = wait_connected(alice)
        open_meeting(bob, node_b.base, ROOM, "Bob")
        bob_id = wait_connected(bob)
        pairs = [(alice, bob_id), (bob, alice_id)]
        wait_until(
            lambda: [stats(driver) for driver, _ in pairs],
            lambda s: all(
                _flowing(remote_by(s[i], pid, kind), kind)
                for i, (_, pid) in enumerate(pairs)
                for kind in KINDS
            ),
            timeout=JOIN_DEADLINE_S,
        )
        for driver in (alice, bob):
            assert page_state(driver).get("error") is None
        # Each node relays its page's two tracks to the other, once.
        for node in (node_a, node_b):
            pipes = node.server.node_pipes
            assert pipes is not None
            assert len(pipes.hub.relay.taps) == 2 and len(pipes.hub.remotes) == 2
        # The relayed media stays on the sealed lane: given windows to judge (real video,
        # keyframe bursts and all), the liveness check makes neither node fall back.
        time.sleep(BLOCKED_WINDOW_S + 2 * REPORT_INTERVAL_S)
        for node in (node_a, node_b):
            links = node.server.links
            assert links is not None and links.lanes_up() == 1
            lane = links.lane_totals()
            assert lane["blocked"] == 0 and lane["sent"] > 100 and lane["received"] > 100
