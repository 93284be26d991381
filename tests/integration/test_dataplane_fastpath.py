"""Forwarded RTP never enters Python: the data plane carries it from socket to socket.

A real server on loopback forwards a real aiortc WHIP publisher (VP8 + Opus) to two WHEP
viewers. While media flows, the forwarder's own counters grow, the media port's Python
handler sees no RTP at all (every RTP datagram was forwarded or dropped by the data plane,
none went up the slow path), and in the compiled build the Python per-packet functions of
the reference path (``Peer.on_rtp``, ``Subscription.forward``) are never called. The
control plane still learns everything: its receive counters come from the replayed log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from clients import running_server
from kernel_selection import EXPECT_COMPILED
from media_load import media_load

from sfu.core.kernels import Kernels, default_kernels
from sfu.core.peer import Peer
from sfu.core.subscription import Subscription


def _counting(calls: list[int], method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return method(*args, **kwargs)

    return wrapper


def test_forwarded_rtp_takes_no_python_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    on_rtp_calls, forward_calls = [0], [0]
    monkeypatch.setattr(Peer, "on_rtp", _counting(on_rtp_calls, Peer.on_rtp))
    monkeypatch.setattr(Subscription, "forward", _counting(forward_calls, Subscription.forward))

    async def scenario() -> None:
        async with running_server() as (server, base):  # noqa: SIM117 - load needs the server
            async with media_load(base, server.token_secret, "fastpath", viewers=2):
                forwarder = server.dataplane.forwarder
                assert server.dataplane.kernels is server.kernels is default_kernels()
                assert isinstance(forwarder, server.kernels.Forwarder)
                await asyncio.sleep(1.5)  # connect, keyframes, layer choice
                fast0, sent0 = forwarder.fast_packets, forwarder.sent_packets
                python_rtp0 = server.port.counters.received.get("rtp", 0)
                calls0 = on_rtp_calls[0], forward_calls[0]
                await asyncio.sleep(2.0)
                fast = forwarder.fast_packets - fast0
                sent = forwarder.sent_packets - sent0
                python_rtp = server.port.counters.received.get("rtp", 0) - python_rtp0
                calls = on_rtp_calls[0] - calls0[0], forward_calls[0] - calls0[1]
                assert fast > 100, "the publisher's media went through the data plane"
                assert sent >= fast, "each packet reached both viewers (audio and video)"
                assert python_rtp == 0, "no RTP datagram entered the Python slow path"
                if server.kernels.name == "cython":
                    assert calls == (0, 0), "no Python per-packet code ran"
                # The control plane still accounts for every packet, from the replayed log.
                ingested = sum(
                    p.peer.counters.rtp_in
                    for room in server.rooms.rooms.values()
                    for p in room.participants.values()
                    if p.peer is not None
                )
                assert ingested >= forwarder.fast_packets - 200  # at most a tick behind
                # Suspended, the same media takes the Python path (same state, no gap) ...
                dataplane = server.dataplane
                dataplane.suspend()
                fast1, python1 = forwarder.fast_packets, on_rtp_calls[0]
                await asyncio.sleep(0.6)
                assert forwarder.fast_packets == fast1
                assert on_rtp_calls[0] - python1 > 20
                # ... and back in the data plane when resumed.
                dataplane.resume()
                await asyncio.sleep(0.6)
                assert forwarder.fast_packets - fast1 > 20

    asyncio.run(scenario())


@pytest.mark.skipif(not EXPECT_COMPILED, reason="compiled run only")
def test_compiled_build_uses_the_compiled_forwarder(kernels: Kernels) -> None:
    assert default_kernels() is kernels
    assert kernels.Forwarder.__module__ == "sfu._fastpath._forward"
