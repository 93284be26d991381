"""ICE-TCP on a real listener (loopback): checks over RFC 4571 framing reach the transport,
and hostile connections (silent, garbage, oversized frames, too many) are closed, counted
and leave no state while an established aiortc session keeps its media."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from dataclasses import replace

import aiohttp
import pytest
from clients import LOOPBACK_CONFIG, TIMEOUT, aiortc_echo, frames, running_server

from sfu.app import Server
from sfu.packet.stun import BINDING, StunClass, StunMessage, binding_request
from sfu.transport.tcp import IceTcpGate, frame

pytestmark = pytest.mark.integration

#: Short handshake timeout so the silent-connection case ends quickly.
HANDSHAKE_S = 0.6
CAP = 4


def _short_gate(server: Server) -> None:
    server.tcp_gate = IceTcpGate(
        server.port.is_authenticated, max_unauthenticated=CAP, handshake_timeout=HANDSHAKE_S
    )


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the server closes (EOF or reset) within ``within`` seconds."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), within)
            if not data:
                return True
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


def _tcp_candidate(answer: str) -> tuple[str, int]:
    match = re.search(r"a=candidate:\S+ 1 tcp (\d+) (\S+) (\d+) typ host tcptype passive", answer)
    assert match is not None, answer
    udp = re.search(r"a=candidate:\S+ 1 udp (\d+) ", answer)
    assert udp is not None and int(udp.group(1)) > int(match.group(1)), "UDP must rank first"
    return match.group(2), int(match.group(3))


async def _check_over_tcp() -> None:
    async with running_server() as (server, base), aiortc_echo(base) as (_pc, tracks, _, answer):
        await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)
        _host, port = _tcp_candidate(answer)
        assert server.tcp_address is not None and port == server.tcp_address[1]
        ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)
        pwd = re.search(r"a=ice-pwd:(\S+)", answer)
        assert ufrag is not None and pwd is not None
        transport = next(iter(server.port))
        remote = transport.ice.remote_ufrag
        reader, writer = await _open(port)
        try:
            request = binding_request(
                os.urandom(12),
                f"{ufrag.group(1)}:{remote}",
                pwd.group(1).encode(),
                1,
                controlling=True,
                tie_breaker=7,
            )
            writer.write(frame(request))
            await writer.drain()
            length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TIMEOUT), "big")
            response = StunMessage.parse(await reader.readexactly(length))
            assert response.method == BINDING and response.msg_class is StunClass.SUCCESS
            local = writer.get_extra_info("sockname")
            assert server.port.is_authenticated((local[0], local[1], "tcp"))
            assert server.tcp_gate.unauthenticated_count == 0
            # Not nominated: media stays on UDP and keeps flowing.
            await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)
        finally:
            writer.close()
        await asyncio.sleep(0.2)
        assert server.tcp_gate.connection_count == 0
        assert not server.port.is_authenticated((local[0], local[1], "tcp"))


async def _hostile() -> None:
    server = Server(replace(LOOPBACK_CONFIG))
    _short_gate(server)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.http_addresses[0][1]}"
        assert server.tcp_address is not None
        port = server.tcp_address[1]
        async with aiortc_echo(base) as (_pc, tracks, _, _answer):
            await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)
            addresses_before = server.port.address_count

            silent = await _open(port)
            garbage = await _open(port)
            garbage[1].write(frame(b"\x80" + os.urandom(100)))  # RTP-looking, before any check
            oversized = await _open(port)
            oversized[1].write(b"\xff\xff" + os.urandom(200))
            empty = await _open(port)
            empty[1].write(b"\x00\x00")
            for _, w in (garbage, oversized, empty):
                await w.drain()
            assert await _closed_by_server(garbage[0], TIMEOUT)
            assert await _closed_by_server(oversized[0], TIMEOUT)
            assert await _closed_by_server(empty[0], TIMEOUT)
            assert await _closed_by_server(silent[0], HANDSHAKE_S + 2.0)

            # The cap: CAP silent connections are held, one more is refused at once.
            held = [await _open(port) for _ in range(CAP)]
            await asyncio.sleep(0.1)
            extra = await _open(port)
            assert await _closed_by_server(extra[0], 2.0)
            for _, w in held:
                w.close()
            for _, w in (silent, garbage, oversized, empty, extra):
                w.close()

            # A raw socket that connects and vanishes without a FIN leaves nothing either.
            raw = socket.create_connection(("127.0.0.1", port))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            raw.close()

            await asyncio.sleep(0.5)
            closed = server.tcp_gate.closed
            assert closed["not_stun"] >= 1
            assert closed["oversized_frame"] >= 1
            assert closed["empty_frame"] >= 1
            assert closed["handshake_timeout"] >= 1
            assert closed["refused_capacity"] >= 1
            assert server.tcp_gate.connection_count == 0
            assert server.tcp_gate.buffered_bytes == 0
            assert server.port.address_count == addresses_before
            # The established session never noticed.
            await asyncio.wait_for(frames(tracks["video"], 10), TIMEOUT)
            # Operators see them: closings by reason on /metrics.
            async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
                text = await resp.text()
            for reason in ("not_stun", "oversized_frame", "handshake_timeout", "refused_capacity"):
                line = f'sfu_ice_tcp_connections_closed_total{{tcp_close_reason="{reason}"}}'
                assert any(
                    row.startswith(line) and float(row.split()[-1]) >= 1
                    for row in text.splitlines()
                ), reason
            assert "sfu_ice_tcp_connections 0.0" in text
    finally:
        await asyncio.wait_for(server.stop(), TIMEOUT)


def test_check_over_tcp_is_answered_and_authenticates_the_connection() -> None:
    asyncio.run(asyncio.wait_for(_check_over_tcp(), 3 * TIMEOUT))


def test_hostile_connections_are_closed_counted_and_forgotten() -> None:
    asyncio.run(asyncio.wait_for(_hostile(), 4 * TIMEOUT))


def test_check_over_tcp_on_uvloop() -> None:
    """The server runs on uvloop (whose stream transports are not asyncio's classes)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(asyncio.wait_for(_check_over_tcp(), 3 * TIMEOUT))
