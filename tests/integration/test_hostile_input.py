"""Junk on the media port while a real aiortc echo session runs: the session keeps flowing,
nothing raises out of the datagram handler, drops are counted by reason, and state stays bounded."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading

import pytest
from clients import TIMEOUT, aiortc_echo, frames, running_server
from fixture_files import hex_captures

from sfu.packet.stun import binding_request

pytestmark = pytest.mark.integration

PER_CLASS = 10_000
SOURCES = 4  # distinct source ports the junk comes from


def _flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _junk(username: str, rng: random.Random) -> dict[str, list[bytes]]:
    """PER_CLASS datagrams of each class, built up front so sending is a tight loop."""
    request = binding_request(
        os.urandom(12), username, b"x" * 22, 1, controlling=True, tie_breaker=1
    )
    rtp = [d for c in hex_captures("rtp") for d in c.datagrams]
    dtls_header = bytes([22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 1])

    def dtls_record() -> bytes:
        body = os.urandom(rng.randint(0, 200))
        return dtls_header + len(body).to_bytes(2, "big") + body

    return {
        "random": [os.urandom(rng.randint(1, 1400)) for _ in range(PER_CLASS)],
        "stun_truncated": [request[: rng.randrange(1, len(request))] for _ in range(PER_CLASS)],
        "stun_bitflip": [_flip(request, rng) for _ in range(PER_CLASS)],
        # Valid framing and fingerprint, right ufrag, wrong password: a credential guess.
        "stun_wrong_credentials": [
            binding_request(
                os.urandom(12),
                username,
                os.urandom(16),
                1,
                controlling=True,
                tie_breaker=rng.getrandbits(63),
            )
            for _ in range(PER_CLASS)
        ],
        "dtls": [
            _flip(r, rng) if rng.random() < 0.5 else r[: rng.randrange(1, len(r))]
            for r in (dtls_record() for _ in range(PER_CLASS))
        ],
        "srtp": [_flip(rng.choice(rtp), rng) for _ in range(PER_CLASS)],
    }


def _send_all(port: int, junk: dict[str, list[bytes]]) -> int:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOURCES)]
    sent = 0
    try:
        for datagrams in junk.values():
            for i, data in enumerate(datagrams):
                socks[i % SOURCES].sendto(data, ("127.0.0.1", port))
                sent += 1
                if i % 200 == 0:
                    threading.Event().wait(0.002)  # pace: let the server's loop keep up
    finally:
        for s in socks:
            s.close()
    return sent


def test_junk_does_not_disturb_a_live_session() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), aiortc_echo(base) as echo:
            _pc, tracks, location, _answer = echo
            await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)
            transport = server.port.get(location.rsplit("/", 1)[1])
            assert transport is not None
            session = server.echo.sessions[transport.id] if server.echo else None
            assert session is not None
            # USERNAME as the live client uses it (RFC 8445 §7.2.2), so the guesses below
            # get as far as MESSAGE-INTEGRITY.
            local = transport.ice.local_credentials.ufrag
            username = f"{local}:{session.negotiated.remote_ufrag}"
            junk = _junk(username, random.Random(7))
            media_port = server.media_address[1]
            forwarded_before = session.forwarded
            sender = asyncio.to_thread(_send_all, media_port, junk)
            # Media keeps flowing while the junk arrives.
            sent, _ = await asyncio.wait_for(
                asyncio.gather(sender, frames(tracks["video"], 30)), 6 * TIMEOUT
            )
            assert sent == PER_CLASS * len(junk)
            await asyncio.sleep(0.5)
            await asyncio.wait_for(frames(tracks["video"], 10), TIMEOUT)
            assert session.forwarded > forwarded_before + 30

            drops = server.port.counters.drops
            assert server.sink.errors == 0  # nothing raised out of the handler
            assert server.sink.count >= PER_CLASS  # the kernel may drop some under load
            for reason in (
                "stun_malformed",
                "stun_bad_fingerprint",
                "stun_bad_integrity",
                "dtls_unknown_source",
                "rtp_unknown_source",
                "unknown_unknown_source",
            ):
                assert drops[reason] > 0, (reason, dict(drops))
            # Bounded state: still one transport, routed from one address, no pending ones.
            assert server.port.transport_count == 1
            assert server.port.pending_count == 0
            assert server.port.address_count == 1
            assert len(transport.ice.validated_addresses) <= 8
            assert transport.has_srtp

    asyncio.run(asyncio.wait_for(scenario(), 10 * TIMEOUT))
