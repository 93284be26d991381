"""Relay-only through coturn: Chromium on a network that drops UDP, with
``iceTransportPolicy: "relay"``, joins with the TURN credentials from the join response,
reaches the SFU through coturn's relay (TURN over TCP) and decodes; the server counts the
transports as relayed."""

from __future__ import annotations

import contextlib
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace

import netns
import pytest
from browser import wait_until
from meeting import MEETING_CONFIG, ServerThread, remote_by, stats, wait_connected
from turn_server import turnserver

from sfu.config import AuthConfig, HttpConfig, MediaConfig, TurnConfig

pytestmark = pytest.mark.integration

ROOM = "relayed"
SECRET = "coturn-test-secret-0123456789"
DECODE_TIMEOUT = 40.0


@contextlib.contextmanager
def _server(address: str, urls: tuple[str, ...]) -> Iterator[ServerThread]:
    config = replace(
        MEETING_CONFIG,
        http=HttpConfig(host=address, port=0),
        media=MediaConfig(udp_host=address, udp_port=0, tcp_enabled=False),
        auth=AuthConfig(jwt_secret="turn-test-" + "k" * 40, dev_tokens=True),
        turn=TurnConfig(urls=urls, secret=SECRET, ttl_s=600),
    )
    server = ServerThread(config)
    try:
        server.start()
        server.base = f"http://{address}:{server.server.http_addresses[0][1]}"
        yield server
    finally:
        server.stop()


def _open_relay_only(driver: object, base: str, name: str) -> None:
    query = urllib.parse.urlencode({"room": ROOM, "name": name, "ice": "relay"})
    driver.get(f"{base}/?{query}")  # type: ignore[attr-defined]


def _decoding(driver: object, participant: str) -> bool:
    entry = remote_by(stats(driver), participant, "video")  # type: ignore[arg-type]
    return entry is not None and int(entry.get("framesDecoded") or 0) > 10


def test_relay_only_chromium_meets_through_coturn() -> None:
    with netns.lab(["blocked"]) as hosts:
        address = hosts.server_address
        with turnserver(address, SECRET) as turn, _server(address, turn.urls()) as server:
            space = hosts["blocked"]
            space.block_udp()
            flag = f"--unsafely-treat-insecure-origin-as-secure={server.base}"
            with space.chromium((flag,)) as alice, space.chromium((flag,)) as bob:
                _open_relay_only(alice, server.base, "alice")
                _open_relay_only(bob, server.base, "bob")
                alice_id = wait_connected(alice, DECODE_TIMEOUT)
                bob_id = wait_connected(bob, DECODE_TIMEOUT)
                wait_until(lambda: _decoding(bob, alice_id), bool, DECODE_TIMEOUT)
                wait_until(lambda: _decoding(alice, bob_id), bool, DECODE_TIMEOUT)
                counters = server.server.port.counters
                assert server.call(lambda: counters.connected_by_type["relay"]) == 2
                assert server.call(lambda: counters.connected_by_type["udp"]) == 0
                # The peers the server saw are coturn's relay addresses, not the clients'.
                selected = server.call(lambda: [t.ice.selected_address for t in server.server.port])
                assert all(a is not None and a[0] == address for a in selected)
