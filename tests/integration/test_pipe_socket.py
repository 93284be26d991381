"""The pipe's asyncio adapter on real loopback sockets (127.0.0.1, port 0): two workers'
endpoints open a flow, relay a packet, and refuse a stranger's datagrams."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from sfu.io.pipe import PipeEndpoint
from sfu.transport.pipe import FlowRequested, Media, PipeEvent

#: Bound on each wait for a datagram to cross loopback (seconds).
WAIT_S = 5.0


async def _until(events: list[tuple[int, PipeEvent]], kind: type, start: int = 0) -> PipeEvent:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for _, event in events[start:]:
            if isinstance(event, kind):
                return event
        await asyncio.sleep(0.005)
    raise AssertionError(f"no {kind.__name__} within {WAIT_S} s")


def test_two_endpoints_relay_a_flow_and_refuse_strangers() -> None:
    async def scenario() -> None:
        at_0: list[tuple[int, PipeEvent]] = []
        at_1: list[tuple[int, PipeEvent]] = []
        zero = PipeEndpoint(
            worker=0, handler=lambda p, e: at_0.append((p, e)), clock=time.monotonic
        )
        one = PipeEndpoint(worker=1, handler=lambda p, e: at_1.append((p, e)), clock=time.monotonic)
        port_0 = await zero.start()
        port_1 = await one.start()
        try:
            zero.add_peer(1, ("127.0.0.1", port_1))
            one.add_peer(0, ("127.0.0.1", port_0))
            assert zero.pipes[1].role == 0 and one.pipes[0].role == 1

            flow = one.pipes[0].open_flow("TR_cam", spatial_mask=1, bitrate=0, now=time.monotonic())
            assert flow is not None
            one.flush(0)
            requested = await _until(at_0, FlowRequested)
            assert requested == FlowRequested(flow, "TR_cam", 1, 0)

            packet = struct.pack("!BBHII", 0x80, 96, 7, 7000, 0x111) + b"payload"
            zero.send(1, zero.pipes[1].relay(flow, packet, 0))
            media = await _until(at_1, Media)
            assert isinstance(media, Media) and media.data[media.offset :] == packet

            # A datagram from any other address is dropped and counted, never handed on.
            stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                stranger.sendto(zero.pipes[1].relay(flow, packet, 0) or b"", ("127.0.0.1", port_1))
                deadline = time.monotonic() + WAIT_S
                while one.not_peer == 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
            finally:
                stranger.close()
            assert one.not_peer == 1
            assert sum(isinstance(e, Media) for _, e in at_1) == 1
            assert one.pipes[0].peer_up(now=time.monotonic())
        finally:
            zero.close()
            one.close()

    asyncio.run(asyncio.wait_for(scenario(), 4 * WAIT_S))


def test_a_handler_that_raises_is_counted_and_the_endpoint_goes_on() -> None:
    async def scenario() -> None:
        at_1: list[tuple[int, PipeEvent]] = []
        failures = [1]  # the first event's handler raises

        def fragile(peer: int, event: PipeEvent) -> None:
            if failures:
                failures.pop()
                raise RuntimeError("a bug in the owner's handler")
            at_1.append((peer, event))

        at_0: list[tuple[int, PipeEvent]] = []
        zero = PipeEndpoint(
            worker=0, handler=lambda p, e: at_0.append((p, e)), clock=time.monotonic
        )
        one = PipeEndpoint(worker=1, handler=fragile, clock=time.monotonic)
        port_0 = await zero.start()
        port_1 = await one.start()
        try:
            zero.add_peer(1, ("127.0.0.1", port_1))
            one.add_peer(0, ("127.0.0.1", port_0))
            flow = one.pipes[0].open_flow("TR_cam", spatial_mask=1, bitrate=0, now=time.monotonic())
            assert flow is not None
            one.flush(0)
            await _until(at_0, FlowRequested)
            for seq in (7, 8):
                packet = struct.pack("!BBHII", 0x80, 96, seq, 7000, 0x111) + b"payload"
                zero.send(1, zero.pipes[1].relay(flow, packet, 0))
            # The first packet's event raised in the handler; the second still arrives.
            media = await _until(at_1, Media)
            assert isinstance(media, Media)
            assert one.handler_errors == 1
        finally:
            zero.close()
            one.close()

    asyncio.run(asyncio.wait_for(scenario(), 4 * WAIT_S))
