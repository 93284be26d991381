"""Per-packet cost of the transport's Python path, against its SRTP parts, in one run.

An in-memory client connects to a MediaPort through real ICE checks and a real DTLS
handshake; then batches of SRTP packets go through ``MediaPort.datagram_received`` to a
listener that does what the echo service does (rewrite the SSRC, protect, send). The SRTP
benchmarks alone show how much of that path is crypto and how much is Python around it: the
gap is what the compiled data plane removes. Run with `make bench`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from sfu import _fastpath
from sfu.packet.stun import StunMessage, binding_request
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, SrtpKeys, SrtpProfile
from sfu.transport.ice import Address
from sfu.transport.port import MediaPort
from sfu.transport.srtp import SrtpSession
from sfu.transport.transport import TransportState, WebRtcTransport

BATCH = 2000
PAYLOAD = bytes(1200 - 12)
CLIENT: Address = ("127.0.0.1", 50000)
SERVER_CERT = Certificate.generate()
CLIENT_CERT = Certificate.generate()


class Echo:
    """Rewrites each packet's SSRC into a reused buffer and sends it back (as sfu.echo does)."""

    def __init__(self) -> None:
        self.buffer = bytearray(1500)
        self.count = 0

    def on_rtp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        n = _fastpath.rewrite_rtp(packet, self.buffer, 0xECC0, 1, 2, 96, -1)
        transport.send_rtp(bytes(self.buffer[:n]))
        self.count += 1

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        pass

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        pass


def connected(profile: SrtpProfile) -> tuple[MediaPort, Echo, SrtpSession, list[bytes]]:
    """A port with one connected transport, the client's SRTP session, and what was sent."""
    sent: list[bytes] = []
    port = MediaPort(
        SERVER_CERT,
        lambda data, addr: sent.append(data),
        srtp_profiles=[profile],
    )
    echo = Echo()
    transport = port.create_transport(
        remote_ufrag="bench",
        remote_fingerprints=[CLIENT_CERT.fingerprint],
        dtls_role=DtlsRole.SERVER,
        now=0.0,
        listener=echo,
    )
    local = transport.ice.local_credentials
    check = binding_request(
        os.urandom(12),
        f"{local.ufrag}:bench",
        local.pwd.encode(),
        1,
        controlling=True,
        tie_breaker=1,
        use_candidate=True,
    )
    port.datagram_received(check, CLIENT, 0.0)
    assert StunMessage.parse(sent.pop()).msg_class.name == "SUCCESS"
    client = DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, [SERVER_CERT.fingerprint])
    flight = client.start(0.0)
    for _ in range(10):
        for datagram in flight:
            port.datagram_received(datagram, CLIENT, 0.0)
        flight = [client_dgram for d in sent for client_dgram in client.receive(d, 0.0)]
        sent.clear()
        if transport.state is TransportState.CONNECTED and client.srtp_keys is not None:
            break
    assert transport.state is TransportState.CONNECTED and client.srtp_keys is not None
    return port, echo, SrtpSession(client.srtp_keys), sent


def plain_packet(seq: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, seq, 0x1234) + PAYLOAD


def protected_batch(session: SrtpSession, start: int) -> list[bytes]:
    return [session.protect_rtp(plain_packet(seq)) for seq in range(start, start + BATCH)]


PROFILES = [
    pytest.param(SrtpProfile.AEAD_AES_128_GCM, id="gcm"),
    pytest.param(SrtpProfile.AES128_CM_SHA1_80, id="cm-sha1-80"),
]


@pytest.mark.parametrize("profile", PROFILES)
def test_port_echo_path_per_batch(benchmark: BenchmarkFixture, profile: SrtpProfile) -> None:
    """demux -> SRTP unprotect -> listener -> rewrite -> SRTP protect -> send, BATCH packets."""
    port, echo, client, sent = connected(profile)
    state = {"seq": 1}

    def setup() -> tuple[tuple[list[bytes]], dict[str, object]]:
        batch = protected_batch(client, state["seq"])
        state["seq"] += BATCH
        sent.clear()
        return (batch,), {}

    def run(batch: list[bytes]) -> None:
        receive = port.datagram_received
        for datagram in batch:
            receive(datagram, CLIENT, 1.0)

    benchmark.pedantic(run, setup=setup, rounds=10, iterations=1)
    assert echo.count == 10 * BATCH and len(sent) == BATCH


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("direction", ["protect", "unprotect"])
def test_srtp_alone_per_batch(
    benchmark: BenchmarkFixture, profile: SrtpProfile, direction: str
) -> None:
    keys = SrtpKeys(
        profile, bytes(16), bytes(profile.salt_length), bytes(16), bytes(profile.salt_length)
    )
    tx, rx = SrtpSession(keys), SrtpSession(keys)
    state = {"seq": 1}

    def setup() -> tuple[tuple[list[bytes]], dict[str, object]]:
        seq = state["seq"]
        state["seq"] += BATCH
        if direction == "unprotect":
            return (protected_batch(tx, seq),), {}
        return ([plain_packet(s) for s in range(seq, seq + BATCH)],), {}

    op: Callable[[bytes], bytes] = rx.unprotect_rtp if direction == "unprotect" else tx.protect_rtp

    def run(batch: list[bytes]) -> None:
        for packet in batch:
            op(packet)

    benchmark.pedantic(run, setup=setup, rounds=10, iterations=1)
