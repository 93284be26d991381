"""Media between nodes: the relay pipes of this node, one per node link.

The same relay that joins two workers of one node (:mod:`sfu.core.relay`: ``RelayHub``,
``PublicationRelay`` on the publishing side, ``RemotePublication`` on the receiving side)
joins two nodes here; only the carrier differs: a :class:`~sfu.transport.link_pipe.LinkPipe`
over the node pair's QUIC link instead of a loopback UDP socket. So a publication on node A
reaches node B once, whatever the number of B's subscribers, with only the layers B's
subscriptions are allocated (DEMAND), and PLI/FIR, NACK and demanded rates flowing back.

:class:`NodePipes` is the room service's ``RemoteTracks`` when clustered: a track another
node publishes (the room bus's ``track_published``) becomes a stand-in publication that
``open`` hands to the hub, which asks that node for it over the link. A stand-in is wanted
for as long as the room lists it, and fed whenever a link to its node is up: opened when the
link comes up (or is replaced), its flow forgotten when the link goes down (the link's idle
timeout: a killed node is gone within :data:`~sfu.transport.node_link.IDLE_TIMEOUT_S`), and
closed on ``close`` (unpublished, the node's lease lapsed, the room ended here). A local
publication that ends closes its flows to every node at once (``ended``).

Node origins (the room service's shard numbers of other nodes) come from the room bus, so a
stand-in and its link name the node alike. Sans-I/O but for two injected hooks: ``flush``
sends a link's queued UDP datagrams and ``call_soon`` defers it to the end of the current
batch of packets (one ``datagrams_to_send`` per batch, not per packet).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from sfu.core.publication import Publication
from sfu.core.relay import DEMAND_POLL_S, RelayHub, RelayTarget
from sfu.core.router import AudioLevelSink
from sfu.packet.pipe import CONTROL_FLOW
from sfu.transport.link_pipe import LinkPipe
from sfu.transport.node_link import MAX_DATAGRAM_DATA, NodeLink
from sfu.transport.pipe import Pipe

if TYPE_CHECKING:
    from sfu.cluster.links import NodeLinks
    from sfu.core.dataplane import DataPlane

__all__ = ["TICK_S", "NodePipes"]

log = logging.getLogger(__name__)

#: How often the pipes' timers run: the hub's demand and NACK poll is the shortest.
TICK_S: Final = DEMAND_POLL_S
#: The first byte of a pipe control datagram (flow 0 as a one-byte varint).
CONTROL_PREFIX: Final = bytes((CONTROL_FLOW,))
#: Sealed datagrams queued on one link that are sent at once rather than at the end of the
#: batch: a long batch (a keyframe burst, a loop late by a stall) leaves in slices instead
#: of filling the link's 512-datagram queue.
FLUSH_AT: Final = 64

FindPublication = Callable[[str], Publication | None]
OriginOf = Callable[[str], int | None]


class NodePipes:
    """The relay of publications between this node and every linked node."""

    def __init__(
        self,
        find: FindPublication,
        origin_of: OriginOf,
        flush: Callable[[NodeLink], None],
        clock: Callable[[], float],
        call_soon: Callable[[Callable[[], None]], object] | None = None,
    ) -> None:
        self._origin_of = origin_of
        self._flush_link = flush
        self._clock = clock
        self._call_soon = call_soon
        #: The pipe over each node's link, by node origin.
        self.carriers: dict[int, LinkPipe] = {}
        #: The same pipes as the hub sees them.
        self.pipes: dict[int, Pipe] = {}
        self.hub = RelayHub(
            self.pipes, find, self._send, self._flush, clock, self._target, self._folded
        )
        #: The node links, once attached: their socket is where relay outputs send.
        self._links: NodeLinks | None = None
        #: Stand-ins the room lists: publication id -> (origin, publication, level sink).
        self._wanted: dict[int, tuple[int, Publication, AudioLevelSink | None]] = {}
        #: Origins with datagrams queued on their link, flushed at the end of the batch.
        self._dirty: set[int] = set()
        self._flush_pending = False
        self._ticker: asyncio.TimerHandle | None = None
        self._started = False
        #: The data plane whose forwarder reads the links' socket (set with the links'
        #: ``reader``): each link's relay pipe is a relay input there, so the relayed media
        #: of the stand-ins it feeds is forwarded without Python (None: all on Python's path).
        self.plane: DataPlane | None = None
        #: Links whose relay input the data plane opened.
        self.inputs_opened = 0
        #: Counters read at scrape time: links whose pipe started, and stand-ins a link
        #: could not open (its flow limit).
        self.pipes_started = 0
        self.open_failures = 0

    def attach(self, links: NodeLinks) -> None:
        """Take the node links' events (and the links already up)."""
        self._links = links
        links.before_totals = self.fold
        links.on_link_up = self.link_up
        links.on_link_down = self.link_down
        links.on_flow = self.on_flow
        links.on_control = self.on_control
        for peer, link in list(links.up.items()):
            self.link_up(peer, link)

    # -- the room service's RemoteTracks ---------------------------------------------------------

    def open(
        self, origin: int, publication: Publication, on_audio_level: AudioLevelSink | None
    ) -> bool:
        """List ``publication`` (a track of node ``origin``) and feed it while a link is up."""
        self._wanted[id(publication)] = (origin, publication, on_audio_level)
        if origin in self.carriers:
            if not self.hub.open(origin, publication, on_audio_level):
                self.open_failures += 1
            self._arm()  # its demand is polled from now on
        return True

    def close(self, publication: Publication) -> None:
        """Stop feeding ``publication`` (the other node hears it)."""
        self._wanted.pop(id(publication), None)
        self.hub.close(publication)

    def ended(self, publication: Publication) -> None:
        """A local ``publication`` ended: its flows to every node close now."""
        self.hub.ended(publication)

    def wanted(self) -> int:
        """Stand-ins listed here (fed or waiting for their node's link)."""
        return len(self._wanted)

    # -- what the node links bring ---------------------------------------------------------------

    def link_up(self, peer: str, link: NodeLink) -> None:
        """A link to node ``peer`` is up (new, or replacing one): a fresh pipe over it, and
        every stand-in of that node asks for its track again."""
        origin = self._origin_of(peer)
        if origin is None:
            return
        if origin in self.carriers:
            self._drop(origin)
        carrier = LinkPipe(link, now=self._clock())
        self.carriers[origin] = carrier
        self.pipes[origin] = carrier.pipe
        self.pipes_started += 1
        self._open_input(carrier)
        for wanted_origin, publication, sink in list(self._wanted.values()):
            if wanted_origin == origin and not self.hub.open(origin, publication, sink):
                self.open_failures += 1
        self._flush(origin)
        self._arm()

    def link_down(self, peer: str, link: NodeLink) -> None:
        """The link to ``peer`` closed: what it relayed either way ends (stand-ins stay
        listed, fed again when a link comes back)."""
        origin = self._origin_of(peer)
        carrier = self.carriers.get(origin) if origin is not None else None
        if origin is not None and carrier is not None and carrier.link is link:
            self._drop(origin)

    def on_flow(self, peer: str, flow: int, payload: bytes) -> None:
        """A DATAGRAM of ``peer``'s link: relayed media or feedback."""
        origin = self._origin_of(peer)
        carrier = self.carriers.get(origin) if origin is not None else None
        if origin is None or carrier is None:
            return
        now = self._clock()
        event = carrier.receive_flow(flow, payload, now=now)
        if event is not None:
            self.hub.on_event(origin, event, now=now)

    def on_control(self, peer: str, message: bytes) -> None:
        """A control message of ``peer``'s link: one of the pipe's."""
        origin = self._origin_of(peer)
        carrier = self.carriers.get(origin) if origin is not None else None
        if origin is None or carrier is None:
            return
        now = self._clock()
        event = carrier.receive_control(message, now=now)
        if event is not None:
            self.hub.on_event(origin, event, now=now)
        self._flush(origin)

    # -- timers ------------------------------------------------------------------------------------

    def handle_timer(self, *, now: float) -> None:
        """The hub's poll (NACKs due, demand) and the pipes' refreshes and expiries."""
        if self.hub.remotes:
            self.hub.poll(now=now)
        self.fold()
        for origin, carrier in list(self.carriers.items()):
            if carrier.next_timer() <= now:
                for event in carrier.handle_timer(now=now):
                    self.hub.on_event(origin, event, now=now)
                self._flush(origin)

    def start(self) -> None:
        """Run :meth:`handle_timer` on the running loop when due: every :data:`TICK_S`
        while other nodes' tracks are fed here (their demand and NACKs), else at the pipes'
        own refreshes (once a second), and not at all without a link."""
        self._started = True
        self._arm()

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` is next due (None: no link, nothing to do)."""
        if not self.carriers:
            return None
        due = min(carrier.next_timer() for carrier in self.carriers.values())
        if self.hub.remotes:
            due = min(due, self._clock() + TICK_S)
        return due

    def _arm(self) -> None:
        """(Re)arm the loop timer for :meth:`next_timer` (started only)."""
        if not self._started:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        due = self.next_timer()
        if due is not None:
            delay = max(0.0, due - self._clock())
            self._ticker = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        self._ticker = None
        try:
            self.handle_timer(now=self._clock())
        except Exception:  # one failed tick must not stop the refreshes
            log.exception("node pipes: timer failed")
        self._arm()

    def stop(self) -> None:
        """Stop the timer (the links close with the node)."""
        self._started = False
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    # -- internals ---------------------------------------------------------------------------------

    def fold(self) -> None:
        """Count what the data plane's relay outputs sent and its relay inputs forwarded
        (read before the counters)."""
        self.hub.relay.fold()
        if self.plane is not None:
            self.plane.fold_inputs(self._clock())

    def _open_input(self, carrier: LinkPipe) -> None:
        """Make ``carrier``'s link a relay input of the data plane: the forwarder opens its
        lane's datagrams with the lane's own opener (one replay window, one count for the
        liveness REPORT) and forwards the relayed RTP of the stand-ins' flows; the rest
        comes to the link as it would have."""
        link = carrier.link
        links = self._links
        if self.plane is None or links is None or link.lane is None or link.closed:
            return
        pipe = carrier.pipe

        def deliver(flow: int, payload: bytes) -> None:
            links.flow_opened(link, flow, payload)

        def fold(packets: int, octets: int, malformed: int, now: float) -> None:
            # Counted where the link's and the pipe's Python path count each datagram.
            link.flows_received += packets
            link.bytes_received += octets
            link.dropped_malformed += malformed
            pipe.counters.received += packets
            pipe.counters.received_bytes += octets
            if packets and (pipe.peer_seen is None or now > pipe.peer_seen):
                pipe.peer_seen = now

        opener = link.lane.opener
        if self.plane.open_input(pipe, link.peer_address, opener, deliver=deliver, fold=fold):
            self.inputs_opened += 1

    def _target(self, origin: int) -> RelayTarget | None:
        """Where the data plane may seal and send a tap's packets to node ``origin`` itself:
        its link's media lane, from the links' socket (the peer accepts lane datagrams only
        from there); None without a lane (QUIC DATAGRAMs only) or a socket."""
        carrier = self.carriers.get(origin)
        sock = None if self._links is None else self._links.link_socket
        if carrier is None or sock is None:
            return None
        link = carrier.link
        if link.lane is None or link.closed:
            return None
        return RelayTarget(link.lane.sealer, sock, link.peer_address, MAX_DATAGRAM_DATA)

    def _folded(self, origin: int, packets: int, octets: int) -> None:
        """The relay outputs sent ``packets`` flow datagrams to ``origin``: its link's."""
        carrier = self.carriers.get(origin)
        if carrier is not None:
            carrier.link.flows_sent += packets
            carrier.link.bytes_sent += octets

    def _drop(self, origin: int) -> None:
        carrier = self.carriers.get(origin)
        if carrier is not None and self.plane is not None:
            # First: what it forwarded is counted on the link before the link is retired.
            self.plane.close_input(carrier.pipe, self._clock())
        self.hub.drop_peer(origin)
        self.carriers.pop(origin, None)
        self.pipes.pop(origin, None)
        self._dirty.discard(origin)

    def _send(self, origin: int, datagram: bytes) -> None:
        """A tap's media or a remote publication's feedback: onto the link, sent with the
        rest of the batch."""
        carrier = self.carriers.get(origin)
        if carrier is None:
            return
        carrier.send(datagram)
        if self._call_soon is None or datagram[:1] == CONTROL_PREFIX:
            # Control (a STREAMS before a new layer's first packet) leaves at once, in its own
            # UDP datagram: in one QUIC packet aioquic writes DATAGRAM frames before stream
            # frames, so deferred it would reach the peer after the packet it announces.
            self._dirty.discard(origin)
            self._flush_link(carrier.link)
            return
        if carrier.link.sealed_pending >= FLUSH_AT:
            self._flush_link(carrier.link)
        self._dirty.add(origin)
        if not self._flush_pending:
            self._flush_pending = True
            self._call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._flush_pending = False
        dirty, self._dirty = self._dirty, set()
        for origin in dirty:
            carrier = self.carriers.get(origin)
            if carrier is not None:
                self._flush_link(carrier.link)

    def _flush(self, origin: int) -> None:
        """The pipe's queued control onto the link, and the link's datagrams out now."""
        carrier = self.carriers.get(origin)
        if carrier is not None:
            carrier.flush()
            self._dirty.discard(origin)
            self._flush_link(carrier.link)
