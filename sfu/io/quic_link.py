"""The asyncio adapter of the QUIC node links: one UDP socket, every link of this node.

A :class:`LinkEndpoint` owns a UDP socket; it dials links to other nodes
(:meth:`LinkEndpoint.connect`) and accepts theirs, routes each datagram to the
:class:`~sfu.transport.node_link.NodeLink` of its source address (one link per node pair),
sends what the link returns and keeps one loop timer per link for its ``next_timer``. Events
go to the ``on_event`` callback synchronously: no ``await`` between a datagram and its flow.
Links not yet authenticated are bounded (:data:`MAX_PENDING_LINKS`): an unproven peer costs a
fixed amount of state. The links' sealed media lanes (:mod:`sfu.transport.media_lane`) share
this socket: a datagram whose first byte has QUIC's fixed bit clear is the lane's, and one
from an address that has no link is dropped and counted here, before anything reads it.

The socket is read from a loop reader callback that drains up to :data:`READS_PER_WAKEUP`
datagrams at once (asyncio's datagram transport reads one per loop iteration, which costs a
loop turn per relayed packet), so a batch of media is handled in one turn and the relay's
flushes (``call_soon``) go out once for it. Sends are plain non-blocking ``sendto``: a full
socket buffer drops the datagram (counted), as UDP would. In the server the data plane reads
the socket instead (:attr:`LinkEndpoint.reader`: ``recvmmsg`` batches in the forwarder, which
opens and forwards the relayed media of the links' relay inputs itself); every datagram it
does not take comes to :meth:`LinkEndpoint.datagram_received` as before (receive errors then
end its batch uncounted: the next readiness callback reads on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Final

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress

from sfu.clock import Clock
from sfu.clock import now as monotonic
from sfu.transport.media_lane import REFERENCE_LANE, is_lane_datagram
from sfu.transport.node_link import LinkDown, LinkEvent, NodeLink

__all__ = ["LINK_SOCKET_BUFFER_BYTES", "MAX_PENDING_LINKS", "MAX_PENDING_PER_HOST", "LinkEndpoint"]

log = logging.getLogger(__name__)

#: Links accepted but not yet authenticated; an Initial beyond this is ignored.
MAX_PENDING_LINKS: Final = 16
#: ...and from any one host (a member dials a peer once, a retry replaces its link; the
#: workers of one node, cluster members each, dial from one host at once).
MAX_PENDING_PER_HOST: Final = 8
#: Kernel buffers of the link socket (as the worker pipe's): the sealed lane's media is not
#: paced like QUIC's, so a loop turn late by tens of milliseconds must not overflow them.
LINK_SOCKET_BUFFER_BYTES: Final = 4 * 1024 * 1024

LinkHandler = Callable[[NodeLink, LinkEvent], None]
#: Reads the link socket in the data plane (``DataPlane.read_link``): (socket, now, where the
#: datagrams it does not take go).
LinkReader = Callable[[socket.socket, float, Callable[[bytes, NetworkAddress], None]], None]


#: Datagrams read per readiness callback at most: a burst is handled in one loop turn, and
#: other sockets and timers still get theirs after it.
READS_PER_WAKEUP: Final = 64
#: Largest UDP datagram read (a link sends at most 1452-byte payloads).
MAX_READ_BYTES: Final = 65535


class LinkEndpoint:
    """Every QUIC node link of this node over one UDP socket."""

    def __init__(
        self,
        server_configuration: QuicConfiguration,
        client_configuration: Callable[[str], QuicConfiguration],
        on_event: LinkHandler,
        clock: Clock = monotonic,
    ) -> None:
        self._server_config = server_configuration
        self._client_config = client_configuration
        self._on_event = on_event
        self._clock = clock
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.links: dict[NetworkAddress, NodeLink] = {}
        self._timers: dict[NetworkAddress, asyncio.TimerHandle] = {}
        #: Datagrams from an unknown address that did not start a link.
        self.dropped_unknown = 0
        #: Sealed lane datagrams from an address that has no link (not decrypted).
        self.lane_not_peer = 0
        #: Datagrams the kernel would not send (buffer full, unreachable), and receive errors
        #: (ICMP port unreachable from a peer that is restarting).
        self.send_errors = 0
        self.receive_errors = 0
        #: Whether new links may carry media on the sealed lane (the benchmarks turn it off
        #: to measure QUIC DATAGRAMs alone).
        self.media_lane = True
        #: The lane kernels new links' media lanes are made of (the app passes its own, so
        #: that the forwarder seals relayed packets through the same objects).
        self.lane_kernels = REFERENCE_LANE
        #: Whether a host may start a link (the live nodes' link hosts); None: any host.
        #: Without it a stranger could hold every pending slot with forged Initials.
        self.accept_from: Callable[[str], bool] | None = None
        #: Reads the socket instead of :meth:`_readable`'s loop (the data plane: relayed
        #: media of the links' relay inputs never reaches Python); what it does not take
        #: comes to :meth:`datagram_received` as before. Set before :meth:`listen` returns
        #: or any time after.
        self.reader: LinkReader | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        server_configuration: QuicConfiguration,
        client_configuration: Callable[[str], QuicConfiguration],
        on_event: LinkHandler,
        clock: Clock = monotonic,
    ) -> LinkEndpoint:
        """Bind ``host:port`` (0: a free port) and serve links there."""
        loop = asyncio.get_running_loop()
        endpoint = cls(server_configuration, client_configuration, on_event, clock)
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                with contextlib.suppress(OSError):  # best effort (net.core.rmem_max caps it)
                    sock.setsockopt(socket.SOL_SOCKET, opt, LINK_SOCKET_BUFFER_BYTES)
            sock.bind(address)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        endpoint._sock = sock
        endpoint._loop = loop
        loop.add_reader(sock.fileno(), endpoint._readable)
        return endpoint

    def _readable(self) -> None:
        """Drain what the socket holds (up to READS_PER_WAKEUP datagrams; the data
        plane's reader: up to its pump's batches)."""
        sock = self._sock
        if sock is not None and self.reader is not None:
            try:
                self.reader(sock, self._clock(), self._received)
            except Exception:  # a bug must not stop the links' socket
                log.exception("node link reader failed")
            return
        for _ in range(READS_PER_WAKEUP):
            if sock is None or self._sock is None:  # closed by a handler
                return
            try:
                data, addr = sock.recvfrom(MAX_READ_BYTES)
            except BlockingIOError:
                return
            except OSError:  # an ICMP error queued on the socket: the next read goes on
                self.receive_errors += 1
                continue
            self.datagram_received(data, addr)

    @property
    def link_socket(self) -> socket.socket | None:
        """The links' UDP socket (None before :meth:`bind` and after :meth:`close`): the
        forwarder sends sealed lane datagrams on it, as the links do."""
        return self._sock

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket is bound to."""
        assert self._sock is not None
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Close every link (their CONNECTION_CLOSE is sent) and the socket."""
        for link in list(self.links.values()):
            link.close("node leaving")
            self._flush(link)
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self.links.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()

    # -- links --------------------------------------------------------------------------------

    def connect(self, addr: NetworkAddress, peer_node: str) -> NodeLink:
        """Dial the link to node ``peer_node`` at ``addr`` (its certificate must name it)."""
        existing = self.links.get(addr)
        if existing is not None and not existing.closed:
            return existing
        link = NodeLink(
            self._client_config(peer_node),
            peer_address=addr,
            now=self._clock(),
            media_lane=self.media_lane,
            lane_kernels=self.lane_kernels,
        )
        self.links[addr] = link
        self._flush(link)
        return link

    def flush(self, link: NodeLink) -> None:
        """Send what ``link`` has queued (after :meth:`NodeLink.send_flow` and friends)."""
        self._flush(link)

    # -- socket input -------------------------------------------------------------------------

    def _received(self, data: bytes, addr: NetworkAddress) -> None:
        if self._sock is not None:  # not closed by a handler meanwhile
            self.datagram_received(data, addr)

    def flow_opened(self, link: NodeLink, flow: int, payload: bytes) -> None:
        """A flow datagram of ``link``'s lane the data plane opened and did not forward."""
        for event in link.flow_opened(flow, payload):
            self._deliver(link, event)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        link = self.links.get(addr)
        if is_lane_datagram(data):
            # Media of a sealed lane: nothing to send back, no QUIC timer moved.
            if link is None:
                self.lane_not_peer += 1
                return
            for event in link.receive_sealed(data, addr):
                self._deliver(link, event)
            return
        if link is None:
            link = self._accept(data, addr)
            if link is None:
                self.dropped_unknown += 1
                return
        for event in link.receive(data, addr, now=self._clock()):
            self._deliver(link, event)
        self._flush(link)

    def _accept(self, data: bytes, addr: NetworkAddress) -> NodeLink | None:
        if self.accept_from is not None and not self.accept_from(str(addr[0])):
            return None
        pending = [a for a, link in self.links.items() if link.peer is None]
        if len(pending) >= MAX_PENDING_LINKS:
            return None
        if sum(1 for a in pending if a[0] == addr[0]) >= MAX_PENDING_PER_HOST:
            return None
        link = NodeLink.accept(
            self._server_config,
            data,
            addr,
            now=self._clock(),
            media_lane=self.media_lane,
            lane_kernels=self.lane_kernels,
        )
        if link is not None:
            self.links[addr] = link
        return link

    def _deliver(self, link: NodeLink, event: LinkEvent) -> None:
        if isinstance(event, LinkDown) and self.links.get(link.peer_address) is link:
            del self.links[link.peer_address]
        try:
            self._on_event(link, event)
        except Exception:  # a handler's bug must not kill the socket's reader
            log.exception("node link event handler failed")

    # -- output and timers --------------------------------------------------------------------

    def _flush(self, link: NodeLink) -> None:
        sock = self._sock
        if sock is not None:
            for data, addr in link.datagrams(now=self._clock()):
                try:
                    sock.sendto(data, addr)
                except OSError:  # buffer full or unreachable: lost, as UDP may lose it
                    self.send_errors += 1
        self._arm(link)

    def _arm(self, link: NodeLink) -> None:
        addr = link.peer_address
        handle = self._timers.pop(addr, None)
        if handle is not None:
            handle.cancel()
        at = link.next_timer()
        if at is None or self._loop is None:
            return
        delay = max(0.0, at - self._clock())
        self._timers[addr] = self._loop.call_later(delay, self._fire, link)

    def _fire(self, link: NodeLink) -> None:
        self._timers.pop(link.peer_address, None)
        for event in link.handle_timer(now=self._clock()):
            self._deliver(link, event)
        self._flush(link)
