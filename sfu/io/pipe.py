"""Thin asyncio adapter of the pipes: one loopback UDP socket per worker, one Pipe per peer.

A worker binds one UDP socket on loopback and learns its peers' bound addresses from the
supervisor. A datagram is accepted only from a known peer's address (anything else is
counted as ``not_peer`` and dropped: on loopback only a process of this host can send, and
it cannot take a peer's bound port); the peer's Pipe makes the events, which go to one
synchronous handler, and whatever the pipes queued is sent at once. One loop timer runs the
pipes' refreshes. There is no await on the packet path.

Why UDP on loopback rather than a Unix socket or shared memory: the same datagrams (flow id,
then RTP/RTCP) are what the cluster puts in QUIC DATAGRAMs, the kernel keeps message
boundaries, and a dead peer costs nothing but the datagrams it no longer reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Final, TypeAlias

from sfu.transport.pipe import Pipe, PipeEvent

__all__ = ["PIPE_MAX_DATAGRAM", "PIPE_SOCKET_BUFFER_BYTES", "PipeEndpoint", "PipeEventHandler"]

log = logging.getLogger(__name__)

#: Kernel buffers of the pipe socket: a keyframe burst of a room's every publication.
PIPE_SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024
#: Largest pipe datagram (a UDP payload on loopback IPv4); a relayed RTP packet is far less.
PIPE_MAX_DATAGRAM: Final = 65507
#: Called with (peer id, event) for every event a pipe makes; must not block.
PipeEventHandler: TypeAlias = Callable[[int, PipeEvent], None]
_Address: TypeAlias = tuple[Any, ...]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: PipeEndpoint) -> None:
        self._endpoint = endpoint

    def datagram_received(self, data: bytes, addr: _Address) -> None:
        self._endpoint.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # A peer that is restarting refuses datagrams (ICMP port unreachable): expected.
        log.debug("pipe socket error: %s", exc)


class PipeEndpoint:
    """This worker's end of every pipe: the socket, the peers, the timer."""

    def __init__(self, *, worker: int, handler: PipeEventHandler, clock: Callable[[], float]):
        self.worker = worker
        self._handler = handler
        self._clock = clock
        self._pipes: dict[int, Pipe] = {}
        self._by_address: dict[_Address, int] = {}
        self._address_of: dict[int, _Address] = {}
        self._transport: asyncio.DatagramTransport | None = None
        #: The bound socket (the transport's): the data plane's relay outputs send relayed
        #: packets on it themselves, so they come from this worker's pipe address.
        self.socket: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        #: Datagrams from an address that is no known peer's.
        self.not_peer = 0
        #: Events the owner's handler raised on (logged; the pipe goes on).
        self.handler_errors = 0

    async def start(self, host: str = "127.0.0.1") -> int:
        """Bind the loopback socket; its port (what the peers must be told)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):  # best effort, as for the media socket
                sock.setsockopt(socket.SOL_SOCKET, opt, PIPE_SOCKET_BUFFER_BYTES)
        sock.bind((host, 0))
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._transport = transport
        self.socket = sock
        self._arm()
        port: int = sock.getsockname()[1]
        return port

    @property
    def pipes(self) -> dict[int, Pipe]:
        """The pipe to each peer worker, by its id."""
        return self._pipes

    def addresses(self) -> dict[int, _Address]:
        """Each peer worker's pipe address, by its id."""
        return dict(self._address_of)

    def add_peer(self, peer: int, address: tuple[str, int]) -> Pipe:
        """Start (or restart, at a new address) the pipe to worker ``peer``; the lower
        worker id takes role 0, so both ends agree on flow id parity without talking."""
        old = self._address_of.pop(peer, None)
        if old is not None:
            self._by_address.pop(old, None)
        pipe = Pipe(role=0 if self.worker < peer else 1, now=self._clock())
        self._pipes[peer] = pipe
        self._by_address[address] = peer
        self._address_of[peer] = address
        self.flush(peer)
        return pipe

    def remove_peer(self, peer: int) -> None:
        """Forget worker ``peer`` (it is gone for good)."""
        self._pipes.pop(peer, None)
        address = self._address_of.pop(peer, None)
        if address is not None:
            self._by_address.pop(address, None)

    def send(self, peer: int, datagram: bytes | None) -> None:
        """Send one datagram (from ``Pipe.relay`` and friends) to worker ``peer``."""
        if datagram is None or self._transport is None:
            return
        address = self._address_of.get(peer)
        if address is not None:
            self._transport.sendto(datagram, address)

    def flush(self, peer: int) -> None:
        """Send what the pipe to ``peer`` queued (control messages, replies)."""
        pipe = self._pipes.get(peer)
        if pipe is None or self._transport is None:
            return
        address = self._address_of[peer]
        for datagram in pipe.take_datagrams():
            self._transport.sendto(datagram, address)

    def datagram_received(self, data: bytes, addr: _Address) -> None:
        peer = self._by_address.get(addr[:2])
        if peer is None:
            self.not_peer += 1
            return
        pipe = self._pipes[peer]
        event = pipe.receive(data, now=self._clock())
        if event is not None:
            self._handle(peer, event)
        self.flush(peer)

    def _handle(self, peer: int, event: PipeEvent) -> None:
        """Hand one event to the owner; a failure is logged and counted, never raised
        into the socket's callback or the timer."""
        try:
            self._handler(peer, event)
        except Exception:
            self.handler_errors += 1
            log.exception("pipe: an event from worker %d could not be handled", peer)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = min((p.next_timer() for p in self._pipes.values()), default=None)
        delay = 1.0 if deadline is None else max(0.0, deadline - self._clock())
        self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        now = self._clock()
        try:
            for peer, pipe in list(self._pipes.items()):
                for event in pipe.handle_timer(now=now):
                    self._handle(peer, event)
                self.flush(peer)
        finally:
            # Re-armed whatever happened: a timer that stopped would end every flow at the
            # peer once its refreshes lapse.
            self._arm()

    def close(self) -> None:
        """Stop the timer and close the socket."""
        if self._timer is not None:
            self._timer.cancel()
        self.socket = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None
