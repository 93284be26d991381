"""Thin asyncio adapter for the ICE-TCP listener (RFC 6544 passive candidates).

Every accepted connection's bytes go to the sans-I/O :class:`~sfu.transport.tcp.IceTcpGate`,
which frames them (RFC 4571) and hands each datagram synchronously to the same callback the
UDP socket feeds, with the peer's address marked as TCP (:func:`sfu.transport.ice.tcp_address`).
Sends to such an address are framed and queued on its connection; the queue is written with
one ``write`` per connection when the event loop next runs (a burst of media fanned out to a
TCP subscriber costs one system call, not one per packet). A connection whose kernel and
asyncio buffers already hold more than :data:`MAX_WRITE_BUFFER_BYTES` drops the datagram
(counted), as a full UDP socket would, so one stalled reader cannot make the server buffer
without bound. Nothing is awaited per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Final, cast

from sfu.io.udp import Address, DatagramCallback
from sfu.transport.ice import address_key, tcp_address
from sfu.transport.tcp import IceTcpGate, frame

__all__ = ["MAX_WRITE_BUFFER_BYTES", "IceTcpListener", "open_ice_tcp_listener"]

log = logging.getLogger(__name__)

#: Bytes a connection may have queued for writing before datagrams to it are dropped
#: (about 200 full media packets: half a second of a 4 Mbit/s subscription).
MAX_WRITE_BUFFER_BYTES: Final = 256 * 1024
#: Pending connections the kernel queues for accept.
LISTEN_BACKLOG: Final = 128
#: How often handshake and idle deadlines are checked.
TIMER_INTERVAL_S: Final = 0.5


class _Connection(asyncio.Protocol):
    __slots__ = ("_address", "_listener", "queued", "transport")

    def __init__(self, listener: IceTcpListener) -> None:
        self._listener = listener
        self._address: Address | None = None
        self.transport: asyncio.Transport | None = None
        #: Framed datagrams waiting for the next flush.
        self.queued: list[bytes] = []

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's TCPTransport is one, without subclassing asyncio's).
        transport = cast(asyncio.Transport, base)
        peer = transport.get_extra_info("peername")
        if not peer:
            transport.abort()
            return
        self.transport = transport
        self._address = tcp_address(str(peer[0]), int(peer[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._listener._opened(self._address, self)

    def data_received(self, data: bytes) -> None:
        if self._address is not None:
            self._listener._received(self._address, data, self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is not None:
            self._listener._lost(self._address, self)
        self.transport = None


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; on "::" dual-stack like the media UDP socket (asyncio's
    own ``create_server`` would make an IPv6 socket IPv6-only)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class IceTcpListener:
    """The listening socket and its connections; ``sendto`` frames and writes."""

    def __init__(
        self, gate: IceTcpGate, on_datagram: DatagramCallback, clock: Callable[[], float]
    ) -> None:
        self.gate = gate
        self._on_datagram = on_datagram
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._connections: dict[tuple[str, int] | tuple[str, int, str], _Connection] = {}
        self._timer: asyncio.Task[None] | None = None
        self._dirty: list[_Connection] = []
        self._flush_scheduled = False
        #: Called with the address of every connection that ends (the media port forgets it).
        self.on_closed: Callable[[Address], None] = lambda _addr: None
        #: Datagrams dropped because the connection's write buffer was full.
        self.write_drops = 0
        #: Datagrams for an address without a connection (closed meanwhile).
        self.no_connection_drops = 0

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = _listening_socket(host, port)
        try:
            self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        self._timer = asyncio.ensure_future(self._run_timer())

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port, ...)``."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("ICE-TCP listener is closed")
        addr: Address = self._server.sockets[0].getsockname()
        return addr

    @property
    def is_open(self) -> bool:
        return self._server is not None

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def sendto(self, data: bytes, addr: Address) -> None:
        """Frame ``data`` and write it to the connection of ``addr``, or drop it (counted)."""
        conn = self._connections.get(address_key(addr))
        transport = conn.transport if conn is not None else None
        if conn is None or transport is None or transport.is_closing():
            self.no_connection_drops += 1
            return
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER_BYTES:
            self.write_drops += 1
            return
        if not conn.queued:
            self._dirty.append(conn)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        conn.queued.append(frame(data))

    def _flush(self) -> None:
        """Write what each connection queued since the last flush, one write apiece."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            queued, conn.queued = conn.queued, []
            transport = conn.transport
            if transport is not None and not transport.is_closing() and queued:
                transport.write(b"".join(queued))

    # -- connection events (from _Connection) ---------------------------------------------

    def _opened(self, address: Address, conn: _Connection) -> None:
        if not self.gate.open(address, self._clock()):
            assert conn.transport is not None
            conn.transport.abort()
            return
        self._connections[address_key(address)] = conn

    def _received(self, address: Address, data: bytes, conn: _Connection) -> None:
        on_datagram = self._on_datagram

        def deliver(payload: bytes) -> None:
            on_datagram(payload, address)

        reason = self.gate.received(address, data, self._clock(), deliver)
        if reason is not None:
            self._drop(address, conn)

    def _lost(self, address: Address, conn: _Connection) -> None:
        if self._connections.get(address_key(address)) is conn:
            del self._connections[address_key(address)]
            self.gate.lost(address)
            self.on_closed(address)

    def _drop(self, address: Address, conn: _Connection) -> None:
        if self._connections.get(address_key(address)) is conn:
            del self._connections[address_key(address)]
            self.on_closed(address)
        if conn.transport is not None:
            conn.transport.abort()

    async def _run_timer(self) -> None:
        while True:
            await asyncio.sleep(TIMER_INTERVAL_S)
            try:
                for key, _reason in self.gate.expire(self._clock()):
                    conn = self._connections.get(address_key(key))
                    if conn is not None:
                        self._drop(key, conn)
            except Exception:  # pragma: no cover - a bug must not stop the timer
                log.exception("internal error in ICE-TCP timers")

    async def close(self) -> None:
        """Stop listening and close every connection (what is queued is written first)."""
        self._flush()
        server, self._server = self._server, None
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
            self._timer = None
        for key, conn in list(self._connections.items()):
            self.gate.lost(key, "shutdown")
            self._drop(key, conn)
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)


async def open_ice_tcp_listener(
    host: str,
    port: int,
    gate: IceTcpGate,
    on_datagram: DatagramCallback,
    clock: Callable[[], float],
) -> IceTcpListener:
    """Listen on ``host:port`` (an IP literal; 0 picks a free port) for ICE-TCP."""
    listener = IceTcpListener(gate, on_datagram, clock)
    await listener.start(host, port)
    return listener
