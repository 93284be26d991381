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
from typing import Any, Final, TypeAlias

__all__ = [
    "Address",
    "DatagramCallback",
    "MediaSocket",
    "Pump",
    "open_media_socket",
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


def _bind_socket(host: str, port: int) -> socket.socket:
    """Create and bind a non-blocking UDP socket with enlarged buffers (best effort)."""
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        if family == socket.AF_INET6:
            # "::" serves IPv4 clients too (as ::ffff:a.b.c.d), whatever the host's default.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
        sock.bind(sockaddr)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
    def socket(self) -> socket.socket | None:
        """The bound socket (None once closed), for the forwarder's batched sends."""
        return self._sock

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
