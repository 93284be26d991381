"""IPv4 and IPv6 together: with ``udp_host = "::"`` and both families announced, the answer
carries UDP and TCP candidates for each, an IPv4 aiortc client connects through the
dual-stack socket, and ICE checks over IPv6 (UDP and TCP) are answered too."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from dataclasses import replace

import pytest
from clients import LOOPBACK_CONFIG, TIMEOUT, aiortc_echo, frames, running_server

from sfu.config import MediaConfig
from sfu.packet.stun import StunClass, StunMessage, binding_request
from sfu.transport.tcp import frame

pytestmark = pytest.mark.integration


def _check(answer: str, remote: str) -> bytes:
    ufrag = re.search(r"a=ice-ufrag:(\S+)", answer)
    pwd = re.search(r"a=ice-pwd:(\S+)", answer)
    assert ufrag is not None and pwd is not None
    return binding_request(
        os.urandom(12), f"{ufrag.group(1)}:{remote}", pwd.group(1).encode(), 1,
        controlling=True, tie_breaker=3,
    )  # fmt: skip


async def _scenario() -> None:
    media = MediaConfig(udp_host="::", udp_port=0, announced_addresses=("127.0.0.1", "::1"))
    config = replace(LOOPBACK_CONFIG, media=media)
    async with (
        running_server(config) as (server, base),
        aiortc_echo(base) as (_pc, tracks, _, answer),
    ):
        await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)  # IPv4 via the "::" socket
        cands = re.findall(r"a=candidate:\S+ 1 (udp|tcp) \d+ (\S+) (\d+) typ host", answer)
        assert {(t, a) for t, a, _ in cands} == {
            ("udp", "127.0.0.1"),
            ("udp", "::1"),
            ("tcp", "127.0.0.1"),
            ("tcp", "::1"),
        }
        udp_port = next(int(p) for t, a, p in cands if t == "udp" and a == "::1")
        tcp_port = next(int(p) for t, a, p in cands if t == "tcp" and a == "::1")
        remote = next(iter(server.port)).ice.remote_ufrag
        assert remote is not None
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp:
            udp.setblocking(False)  # the server runs on this loop: never block it
            await loop.sock_sendto(udp, _check(answer, remote), ("::1", udp_port))
            data = await asyncio.wait_for(loop.sock_recv(udp, 2048), TIMEOUT)
            assert StunMessage.parse(data).msg_class is StunClass.SUCCESS
        reader, writer = await asyncio.open_connection("::1", tcp_port)
        try:
            writer.write(frame(_check(answer, remote)))
            length = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), TIMEOUT), "big")
            assert (
                StunMessage.parse(await reader.readexactly(length)).msg_class is StunClass.SUCCESS
            )
        finally:
            writer.close()
        await asyncio.wait_for(frames(tracks["video"], 5), TIMEOUT)


def test_ipv4_and_ipv6_candidates_on_a_dual_stack_socket() -> None:
    asyncio.run(asyncio.wait_for(_scenario(), 3 * TIMEOUT))
