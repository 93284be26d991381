"""What operators see of failed transports: one INFO line with stage, reason and candidate
type, and the peer's address only when debug_personal_data is on (no sockets: the server is
built, not started)."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

import pytest

from sfu.app import Server
from sfu.config import Config, LoggingConfig
from sfu.packet.stun import binding_request
from sfu.transport.dtls import DtlsRole
from sfu.transport.ice import tcp_address

PEER = tcp_address("192.0.2.44", 50123)


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "failed to connect" in r.getMessage()]


def test_ice_that_never_connected_is_logged_without_an_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server(Config())
    server.port.create_transport(
        remote_ufrag="abcd", remote_fingerprints=[], dtls_role=DtlsRole.SERVER, now=0.0
    )
    with caplog.at_level(logging.INFO, logger="sfu.app"):
        server.port.poll(1000.0)  # past the connect timeout: ICE never heard a check
    assert _failures(caplog) == [
        "transport failed to connect: stage=ice reason=timeout candidate=none"
    ]
    assert server.port.counters.failed_by_type == {"none": 1}


@pytest.mark.parametrize("debug", [False, True])
def test_a_dtls_timeout_names_the_peer_only_with_debug(
    caplog: pytest.LogCaptureFixture, debug: bool
) -> None:
    server = Server(replace(Config(), logging=LoggingConfig(debug_personal_data=debug)))
    # We are the DTLS client: our ClientHello goes unanswered until the handshake times out.
    transport = server.port.create_transport(
        remote_ufrag="abcd", remote_fingerprints=[], dtls_role=DtlsRole.CLIENT, now=0.0
    )
    local = transport.ice.local_credentials
    check = binding_request(
        os.urandom(12), f"{local.ufrag}:abcd", local.pwd.encode(), 1,
        controlling=True, tie_breaker=5, use_candidate=True,
    )  # fmt: skip
    server.port.datagram_received(check, PEER, 0.5)
    with caplog.at_level(logging.INFO, logger="sfu.app"):
        for step in range(1, 30):  # retransmissions, then the handshake timeout
            server.port.poll(0.5 + step)
    line = "transport failed to connect: stage=dtls reason=timeout candidate=tcp"
    assert _failures(caplog) == [line + (" peer=192.0.2.44:50123" if debug else "")]
    assert server.port.counters.failed_by_type == {"tcp": 1}
