"""Chromium on a network that drops UDP (a namespace with UDP blocked both ways) joins a
meeting over ICE-TCP and decodes: the server's passive TCP candidate carries ICE, DTLS and
SRTP framed per RFC 4571, and the data plane forwards media between two such pages."""

from __future__ import annotations

import netns
import pytest
from browser import wait_until
from meeting import (
    open_meeting,
    remote_by,
    server_on,
    stats,
    wait_connected,
)

from sfu.transport.ice import is_tcp

pytestmark = pytest.mark.integration

ROOM = "tcp-only"
DECODE_TIMEOUT = 40.0


def _decoding(driver: object, participant: str) -> bool:
    entry = remote_by(stats(driver), participant, "video")  # type: ignore[arg-type]
    return entry is not None and int(entry.get("framesDecoded") or 0) > 10


def test_chromium_without_udp_meets_over_ice_tcp() -> None:
    with netns.lab(["blocked"]) as hosts, server_on(hosts.server_address) as server:
        space = hosts["blocked"]
        space.block_udp()
        flag = f"--unsafely-treat-insecure-origin-as-secure={server.base}"
        with space.chromium((flag,)) as alice, space.chromium((flag,)) as bob:
            open_meeting(alice, server.base, ROOM, "alice")
            open_meeting(bob, server.base, ROOM, "bob")
            alice_id = wait_connected(alice, DECODE_TIMEOUT)
            bob_id = wait_connected(bob, DECODE_TIMEOUT)
            wait_until(lambda: _decoding(bob, alice_id), bool, DECODE_TIMEOUT)
            wait_until(lambda: _decoding(alice, bob_id), bool, DECODE_TIMEOUT)
            selected = server.call(
                lambda: [t.ice.selected_address for t in server.server.port if t.ice.connected]
            )
            assert len(selected) == 2 and all(a is not None and is_tcp(a) for a in selected)
            assert server.call(lambda: server.server.tcp_gate.frames_in) > 100
            counters = server.server.port.counters
            assert server.call(lambda: dict(counters.connected_by_type)) == {"tcp": 2}
            # The data plane forwards it (compiled or reference, as for UDP): frames reach the
            # forwarder, and what it sends to TCP transports comes back framed.
            forwarder = server.server.dataplane.forwarder
            assert server.call(lambda: forwarder.fast_packets) > 100
