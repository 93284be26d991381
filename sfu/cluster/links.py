"""This node's QUIC links to the other nodes: one per node pair, dialled from the directory.

Every node with ``cluster.advertise_address`` listens for links on ``cluster.link_port``.
After each lease renewal the registry hands over the live nodes; for every one that offers a
link the node with the smaller id dials (so a pair has exactly one connection, whichever
node saw the other first) and the other accepts. A link that goes down is dialled again at
the next renewal while its peer is alive. What the links carry (the relayed publications and
their feedback) is the relay pipes' (:mod:`sfu.cluster.node_pipes`): links coming up and
going down, flows and control messages go to its hooks. Each link keys its own sealed media
lane once up (:mod:`sfu.transport.media_lane`), so relayed media leaves QUIC by itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from aioquic.quic.configuration import QuicConfiguration

from sfu.cluster.directory import NodeInfo
from sfu.cluster.registry import node_of_member
from sfu.config import ClusterConfig
from sfu.io.quic_link import LinkEndpoint, LinkReader
from sfu.transport.media_lane import LANE_DROP_REASONS, REFERENCE_LANE
from sfu.transport.node_link import (
    ControlReceived,
    FlowReceived,
    LinkDown,
    LinkEvent,
    LinkUp,
    NodeLink,
    link_configuration,
)

__all__ = ["LinkSetupError", "NodeLinks"]

log = logging.getLogger(__name__)

FlowHandler = Callable[[str, int, bytes], None]
ControlHandler = Callable[[str, bytes], None]
LinkHandler = Callable[[str, NodeLink], None]


def _address_key(addr: tuple[Any, ...]) -> tuple[str, int]:
    """``(host, port)`` of a socket address, an IPv4-mapped IPv6 host as the IPv4 address it
    maps (a dual-stack socket sees ``::ffff:10.0.0.5`` where the directory says ``10.0.0.5``)."""
    host = str(addr[0])
    return (
        host.removeprefix("::ffff:") if host.startswith("::ffff:") and "." in host else host,
        int(addr[1]),
    )


class LinkSetupError(RuntimeError):
    """The node links cannot start: a certificate file is missing or unreadable (the message
    names the key)."""


class NodeLinks:
    """The node links of one node: listening, dialling by id order, the links up by peer."""

    def __init__(self, node_id: str, cluster: ClusterConfig, host: str) -> None:
        self.node_id = node_id
        self._cluster = cluster
        self._host = host
        self._endpoint: LinkEndpoint | None = None
        #: Links that are up, by the peer's node id (proven by its certificate).
        self.up: dict[str, NodeLink] = {}
        self._dialling: dict[str, NodeLink] = {}
        #: The hosts of the live nodes' link addresses: only they may start a link here
        #: (from the directory, refreshed by :meth:`update`).
        self._known_hosts: set[str] = set()
        #: The live members by their resolved link address (from the directory): which
        #: worker of a node dialled here, when its certificate names only the node.
        self._members_at: dict[tuple[str, int], str] = {}
        #: Links refused at the handshake because no live member of the certificate's node
        #: is at the address they came from.
        self.refused_unknown_member = 0
        #: Where flows and control messages go (the pipe, next); by default only counted.
        self.on_flow: FlowHandler | None = None
        self.on_control: ControlHandler | None = None
        #: A link to a node came up (or replaced one) / went down.
        self.on_link_up: LinkHandler | None = None
        self.on_link_down: LinkHandler | None = None
        #: The lane kernels the links' media lanes are made of (set before :meth:`start`),
        #: so that the data plane can seal relayed packets through the same objects.
        self.lane_kernels = REFERENCE_LANE
        #: Called before :meth:`totals` reads the links' counters (the relay pipes add what
        #: the data plane's relay outputs sent for them).
        self.before_totals: Callable[[], None] | None = None
        #: Reads the links' socket in the data plane (set before :meth:`start`).
        self.reader: LinkReader | None = None
        #: Counters read at scrape time (the links' own counters are summed with them).
        self.links_established = 0
        self.links_lost = 0
        self._retired = {"flows_sent": 0, "flows_received": 0, "dropped": 0}
        self._retired_lane = {
            "sent": 0, "received": 0, "blocked": 0, **dict.fromkeys(LANE_DROP_REASONS, 0)
        }  # fmt: skip

    def _server(self) -> QuicConfiguration:
        c = self._cluster
        return link_configuration(
            is_client=False, ca_file=c.ca_file, cert_file=c.cert_file, key_file=c.key_file
        )

    def _client(self, peer: str) -> QuicConfiguration:
        c = self._cluster
        return link_configuration(
            is_client=True,
            ca_file=c.ca_file,
            cert_file=c.cert_file,
            key_file=c.key_file,
            server_name=node_of_member(peer),  # a worker's certificate names its node
        )

    async def start(self) -> tuple[str, int]:
        """Listen on ``host:link_port``; the bound address. Raises OSError when it cannot
        bind, LinkSetupError when a certificate file cannot be used."""
        c = self._cluster
        try:
            self._server()  # read the files now, to fail at start, not at the first link
        except (OSError, ValueError) as exc:
            raise LinkSetupError(
                "cluster.ca_file, cluster.cert_file or cluster.key_file cannot be used "
                f"({c.ca_file}, {c.cert_file}, {c.key_file}): {exc}"
            ) from None
        self._endpoint = await LinkEndpoint.listen(
            self._host, self._cluster.link_port, self._server(), self._client, self._event
        )
        self._endpoint.accept_from = lambda host: host in self._known_hosts
        self._endpoint.lane_kernels = self.lane_kernels
        self._endpoint.reader = self.reader
        return self._endpoint.address

    @property
    def link_socket(self) -> socket.socket | None:
        """The links' UDP socket once started: where the data plane sends sealed relayed
        media (the peers accept lane datagrams only from a link's address)."""
        return None if self._endpoint is None else self._endpoint.link_socket

    async def update(self, peers: list[NodeInfo]) -> None:
        """Dial every live node with a larger id that offers a link and has none up."""
        if self._endpoint is None:
            return
        loop = asyncio.get_running_loop()
        known: set[str] = set()
        members: dict[tuple[str, int], str] = {}
        for peer in peers:
            if peer.node_id == self.node_id or not peer.link_address:
                continue
            host, _, port = peer.link_address.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_DGRAM)
            except (OSError, ValueError):
                log.warning("cluster: cannot resolve a peer's link address")
                continue
            addr = infos[0][4]
            known.add(str(addr[0]))  # a live node's host may start a link to us
            members[_address_key(addr)] = peer.node_id
            if peer.node_id < self.node_id:
                continue  # it dials us
            if peer.node_id in self.up or peer.node_id in self._dialling:
                continue
            link = self._endpoint.connect((str(addr[0]), int(addr[1])), peer.node_id)
            self._dialling[peer.node_id] = link
        self._known_hosts = known
        self._members_at = members

    def _member(self, link: NodeLink, proven: str) -> str | None:
        """The cluster member at the far end of ``link``, whose certificate proved node
        ``proven``: the member dialled, or the live member at the address the link came
        from; either must be ``proven`` itself or one of its workers (``proven.w<i>``).
        None: not a live member this node knows (one that registered after this node's last
        view of the directory dials again at its next renewal), or the dialled member is not
        of the proven node."""
        for member, dialled in self._dialling.items():
            if dialled is link:
                return member if node_of_member(member) == proven else None
        at = self._members_at.get(_address_key(link.peer_address))
        if at is not None and node_of_member(at) == proven:
            return at
        if proven in self._members_at.values():
            return proven  # a single-process node (its certificate names the member) behind NAT
        return None

    def _event(self, link: NodeLink, event: LinkEvent) -> None:
        if isinstance(event, LinkUp):
            member = self._member(link, event.peer)
            if member is None:
                self.refused_unknown_member += 1
                link.peer = None  # never up: nothing from it is delivered, nor counted lost
                link.close("not a known member")
                return
            link.peer = member  # flows and control are told apart by member from here on
            self._dialling.pop(member, None)
            old = self.up.get(member)
            if old is not None and old is not link:
                old.close("replaced")
            self.up[member] = link
            self.links_established += 1
            log.info("cluster: link up with node %s", member)
            if self.on_link_up is not None:
                self.on_link_up(member, link)
        elif isinstance(event, LinkDown):
            for table in (self.up, self._dialling):
                for peer, known in list(table.items()):
                    if known is link:
                        del table[peer]
            if link.peer is not None:
                self.links_lost += 1
                log.info("cluster: link with node %s down (%s)", link.peer, event.reason)
                if self.on_link_down is not None:
                    # First: its relay pipe folds what the data plane sent into its counters.
                    self.on_link_down(link.peer, link)
            self._retired["flows_sent"] += link.flows_sent
            self._retired["flows_received"] += link.flows_received
            self._retired["dropped"] += (
                link.dropped_too_large + link.dropped_congested + link.dropped_malformed
            )
            for key, count in link.lane_totals().items():
                self._retired_lane[key] += count
        elif link.peer is None:
            return
        elif isinstance(event, FlowReceived):
            if self.on_flow is not None:
                self.on_flow(link.peer, event.flow_id, event.payload)
        elif isinstance(event, ControlReceived) and self.on_control is not None:
            self.on_control(link.peer, event.message)

    def flow_opened(self, link: NodeLink, flow: int, payload: bytes) -> None:
        """A flow datagram of ``link``'s lane that the data plane opened but did not forward:
        on through the link's events, as if the link had opened it."""
        if self._endpoint is not None:
            self._endpoint.flow_opened(link, flow, payload)

    def flush(self, link: NodeLink) -> None:
        """Send the UDP datagrams ``link`` has queued (after flows or control were put on it)."""
        if self._endpoint is not None:
            self._endpoint.flush(link)

    def totals(self) -> dict[str, int]:
        """Flow datagrams sent, received and dropped over every link so far."""
        if self.before_totals is not None:
            self.before_totals()  # what the data plane sent on the links' behalf
        out = dict(self._retired)
        for link in self.up.values():
            out["flows_sent"] += link.flows_sent
            out["flows_received"] += link.flows_received
            out["dropped"] += (
                link.dropped_too_large + link.dropped_congested + link.dropped_malformed
            )
        return out

    def lane_totals(self) -> dict[str, int]:
        """The sealed media lanes' datagrams sent and received over every link so far, the
        times one was found blocked (media back on QUIC DATAGRAMs), and their drops by
        reason (LANE_DROP_REASONS)."""
        out = dict(self._retired_lane)
        for link in self.up.values():
            for key, count in link.lane_totals().items():
                out[key] += count
        if self._endpoint is not None:
            out["not_peer"] += self._endpoint.lane_not_peer
        return out

    def rtts(self) -> list[float]:
        """The smoothed round-trip times (seconds) of the links that are up and measured:
        twice a relayed packet's time on the wire between two nodes, near enough."""
        return [rtt for link in self.up.values() if (rtt := link.rtt) is not None]

    def lanes_up(self) -> int:
        """Links whose sealed media lane is keyed both ways (media leaves QUIC)."""
        return sum(1 for link in self.up.values() if link.lane is not None and link.lane.up)

    def lanes_in_fallback(self) -> int:
        """Links whose sealed media lane went silent: media on QUIC DATAGRAMs until a retry."""
        return sum(
            1 for link in self.up.values() if link.lane is not None and link.lane.in_fallback
        )

    def close(self) -> None:
        """Close every link and the socket."""
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        self.up.clear()
        self._dialling.clear()
