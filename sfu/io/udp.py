"""Thin asyncio adapter for the single media UDP socket.

Every received datagram goes straight to a synchronous callback; the adapter does no
awaiting, buffering or per-packet allocation of its own, so the transport layer that
plugs in later owns all per-packet work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any, Final, TypeAlias, cast

__all__ = [
    "Address",
    "DatagramCallback",
    "MediaSocket",
    "Pump",
    "UdpEndpoint",
    "open_media_socket",
    "open_udp_endpoint",
]

log = logging.getLogger(__name__)

#: A socket address as asyncio reports it: ``(host, port)`` or the IPv6 4-tuple.
Address: TypeAlias = tuple[Any, ...]
#: Receives ``(datagram, source address)``; must not block.
DatagramCallback: TypeAlias = Callable[[bytes, Address], None]

#: Reads what a non-blocking socket holds, forwards the media it can, and returns the rest.
Pump: TypeAlias = Callable[[socket.socket, float], list[tuple[bytes, Address]]]

#: Requested kernel buffer sizes; media bursts (keyframes) overflow the small defaults.
SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024


class UdpEndpoint(asyncio.DatagramProtocol):
    """A bound UDP socket that hands datagrams to a callback and can send."""

    def __init__(self, on_datagram: DatagramCallback) -> None:
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: Send/receive errors reported by the OS (e.g. ICMP unreachable); no addresses kept.
        self.error_count = 0

    # -- asyncio.DatagramProtocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport implements the interface without subclassing it.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.error_count += 1
        log.debug("media socket error: %s", type(exc).__name__)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self._closed.done():
            self._closed.set_result(None)

    # -- API -------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        """Whether the socket is bound and not yet closed."""
        return self._transport is not None and not self._transport.is_closing()

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port, ...)``; raises if the socket is closed."""
        if self._transport is None:
            raise RuntimeError("UDP endpoint is closed")
        addr: Address = self._transport.get_extra_info("sockname")
        return addr

    def sendto(self, data: bytes, addr: Address) -> None:
        """Queue ``data`` for ``addr``; silently dropped once the socket is closed."""
        if self._transport is not None:
            self._transport.sendto(data, addr)

    async def close(self) -> None:
        """Close the socket and wait until asyncio reports it closed."""
        if self._transport is not None:
            self._transport.close()
        await asyncio.shield(self._closed)


def _bind_socket(host: str, port: int) -> socket.socket:
    """Create and bind a non-blocking UDP socket with enlarged buffers (best effort)."""
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_udp_endpoint(host: str, port: int, on_datagram: DatagramCallback) -> UdpEndpoint:
    """Bind ``host:port`` and deliver datagrams to ``on_datagram``.

    ``host`` must be an IP literal (no blocking name lookup); port 0 picks a free port.
    """
    loop = asyncio.get_running_loop()
    sock = _bind_socket(host, port)
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: UdpEndpoint(on_datagram), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    if protocol._transport is None:  # connection_made may still be scheduled
        protocol.connection_made(transport)
    return protocol


class MediaSocket:
    """The media socket read in batches by the data plane's pump from a loop reader callback.

    When the socket is readable, :attr:`pump` (the forwarder) drains it with ``recvmmsg``,
    forwards established media itself and returns what the control plane must see (STUN,
    DTLS, RTCP, anything unknown), which goes to the synchronous ``on_datagram`` callback.
    Sends from the control plane are plain non-blocking ``sendto`` calls; a full socket
    buffer drops the datagram (counted), as UDP would.
    """

    def __init__(
        self,
        sock: socket.socket,
        pump: Pump,
        on_datagram: DatagramCallback,
        clock: Callable[[], float],
    ) -> None:
        self._sock: socket.socket | None = sock
        self._pump = pump
        self._on_datagram = on_datagram
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)
        #: Send errors reported by the OS (buffer full, unreachable); no addresses kept.
        self.error_count = 0

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            slow = self._pump(sock, self._clock())
        except Exception:  # pragma: no cover - a bug must not take the reader down
            log.exception("internal error in the media pump")
            return
        for data, addr in slow:
            self._on_datagram(data, addr)

    @property
    def is_open(self) -> bool:
        """Whether the socket is bound and not yet closed."""
        return self._sock is not None

    @property
    def local_address(self) -> Address:
        """The bound ``(host, port, ...)``; raises if the socket is closed."""
        if self._sock is None:
            raise RuntimeError("UDP endpoint is closed")
        addr: Address = self._sock.getsockname()
        return addr

    def sendto(self, data: bytes, addr: Address) -> None:
        """Send ``data`` to ``addr`` now; dropped (and counted) if the kernel refuses it."""
        sock = self._sock
        if sock is None:
            return
        try:
            sock.sendto(data, addr)
        except OSError:
            self.error_count += 1

    async def close(self) -> None:
        """Stop reading and close the socket."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()


async def open_media_socket(
    host: str,
    port: int,
    pump: Pump,
    on_datagram: DatagramCallback,
    clock: Callable[[], float],
) -> MediaSocket:
    """Bind ``host:port`` (an IP literal; port 0 picks a free port) and start pumping it."""
    sock = _bind_socket(host, port)
    try:
        return MediaSocket(sock, pump, on_datagram, clock)
    except BaseException:
        sock.close()
        raise
