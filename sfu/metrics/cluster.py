"""``sfu_cluster_*`` metrics: this node's lease, the directory's health, the bus.

Read at scrape time from the :class:`~sfu.cluster.registry.NodeRegistry`'s plain counters.
No labels name a node, a room or a person: Prometheus's own ``instance`` label tells nodes
apart; every label value (bus event, redirect reason, lookup or WHIP/WHEP forward
result) is from a fixed set (:mod:`sfu.metrics.labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sfu.cluster.links import NodeLinks
from sfu.cluster.node_pipes import NodePipes
from sfu.cluster.placement import FORWARD_RESULTS, LOOKUP_RESULTS, MOVED_KINDS, NodePlacement
from sfu.cluster.registry import NodeRegistry
from sfu.cluster.room_bus import ClusterRoomBus
from sfu.transport.media_lane import LANE_DROP_REASONS
from sfu.transport.pipe import DROP_REASONS

__all__ = ["ClusterCollector"]


class ClusterCollector(Collector):
    """Yields the cluster metric families of one node."""

    def __init__(
        self,
        registry: NodeRegistry,
        links: Callable[[], NodeLinks | None] = lambda: None,
        room_bus: Callable[[], ClusterRoomBus | None] = lambda: None,
        node_pipes: Callable[[], NodePipes | None] = lambda: None,
        placement: Callable[[], NodePlacement | None] = lambda: None,
        whip_forwards: Callable[[], Mapping[str, int] | None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._whip_forwards = whip_forwards
        self._placement = placement
        self._links = links
        self._room_bus = room_bus
        self._node_pipes = node_pipes

    def collect(self) -> Iterator[Metric]:
        reg = self._registry
        directory = reg.directory
        yield GaugeMetricFamily(
            "sfu_cluster_lease_live",
            "1 while this node's lease in the directory is live (renewed within its TTL)",
            value=1.0 if reg.healthy else 0.0,
        )
        yield GaugeMetricFamily(
            "sfu_cluster_directory_up",
            "1 when the last lease renewal reached the directory (Redis), else 0",
            value=1.0 if reg.connected else 0.0,
        )
        yield GaugeMetricFamily(
            "sfu_cluster_nodes", "Nodes with a live lease, this one included", value=len(reg.peers)
        )
        yield GaugeMetricFamily(
            "sfu_cluster_room_homes", "Rooms this node is the home of", value=len(reg.homes)
        )
        yield GaugeMetricFamily(
            "sfu_cluster_draining", "1 while this node drains", value=float(reg.node.draining)
        )
        yield GaugeMetricFamily(
            "sfu_cluster_node_load",
            "This node's load as its lease last announced it (0-1: CPU share or seats taken)",
            value=reg.node.load,
        )
        placement = self._placement()
        if placement is not None:
            redirects = CounterMetricFamily(
                "sfu_cluster_redirects",
                "Joins (WebSocket, WHIP, WHEP) sent to another node, by why",
                labels=["reason"],
            )
            for reason, count in sorted(placement.redirects.items()):
                redirects.add_metric([reason], count)
            yield redirects
            moved = CounterMetricFamily(
                "sfu_cluster_participants_moved",
                "Participants a drain asked to reconnect to another node, by kind "
                "(websocket, whip, whep)",
                labels=["kind"],
            )
            for kind in MOVED_KINDS:
                moved.add_metric([kind], placement.moved_by[kind])
            yield moved
            lookups = CounterMetricFamily(
                "sfu_cluster_room_lookups",
                "Directory reads of which nodes a room is on, for joins sent on from a node "
                "that does not hold the room, by result: found (on another node), absent, "
                "error or timeout (placed by region and load alone)",
                labels=["result"],
            )
            for result in LOOKUP_RESULTS:
                lookups.add_metric([result], placement.lookups[result])
            yield lookups
        forwarded = self._whip_forwards()
        if forwarded is not None:
            forwards = CounterMetricFamily(
                "sfu_cluster_whip_forwards",
                "WHIP/WHEP POSTs placed on another node and forwarded there by this one, by "
                "result: forwarded (the answer relayed), fallback (the node was unreachable "
                "or answered 5xx: 307 instead) or failed (the answer was not relayable: 502)",
                labels=["result"],
            )
            for result in FORWARD_RESULTS:
                forwards.add_metric([result], forwarded.get(result, 0))
            yield forwards
        yield GaugeMetricFamily(
            "sfu_cluster_rooms_held",
            "Rooms open on this node, each with an entry in the directory's span of the room",
            value=len(reg.held),
        )
        yield CounterMetricFamily(
            "sfu_cluster_room_span_writes",
            "Entries this node wrote in rooms' spans in the directory (added or refreshed)",
            value=reg.span_writes,
        )
        yield CounterMetricFamily(
            "sfu_cluster_room_span_failures",
            "Span writes or removals that could not reach the directory (retried at the next "
            "renewal, or left to lapse)",
            value=reg.span_failures,
        )
        yield CounterMetricFamily(
            "sfu_cluster_lease_renewals", "Lease renewals that reached the directory",
            value=reg.renewals,
        )  # fmt: skip
        yield CounterMetricFamily(
            "sfu_cluster_lease_renew_failures",
            "Lease renewals that found the directory unreachable",
            value=reg.renew_failures,
        )
        yield CounterMetricFamily(
            "sfu_cluster_lease_lapses",
            "Renewals that found the lease lapsed (the node registered again)",
            value=reg.lease_lapses,
        )
        yield CounterMetricFamily(
            "sfu_cluster_directory_reconnects",
            "Times the directory answered again after being unreachable",
            value=reg.reconnects,
        )
        bus = CounterMetricFamily(
            "sfu_cluster_bus_messages",
            "Room event messages on the cluster bus: published, received, dropped (over the "
            "publish rate, or too large or malformed on receipt)",
            labels=["event"],
        )
        bus.add_metric(["published"], directory.bus_published)
        bus.add_metric(["received"], directory.bus_received)
        bus.add_metric(["dropped"], directory.bus_dropped)
        yield bus
        yield CounterMetricFamily(
            "sfu_cluster_bus_reconnects",
            "Times the bus reader lost the directory and subscribed again",
            value=getattr(directory, "bus_reconnects", 0),
        )
        yield from self._collect_room_bus()
        links = self._links()
        if links is None:
            return
        yield GaugeMetricFamily(
            "sfu_cluster_links_up", "QUIC links to other nodes that are up", value=len(links.up)
        )
        yield CounterMetricFamily(
            "sfu_cluster_links_established", "QUIC node links that came up (either side dialled)",
            value=links.links_established,
        )  # fmt: skip
        yield CounterMetricFamily(
            "sfu_cluster_links_lost", "QUIC node links that went down after coming up",
            value=links.links_lost,
        )  # fmt: skip
        yield CounterMetricFamily(
            "sfu_cluster_links_refused",
            "QUIC node links closed at the handshake: not from a live member this node knows "
            "of the node their certificate names (dialled again at the next renewal)",
            value=links.refused_unknown_member,
        )
        rtts = links.rtts()
        rtt = GaugeMetricFamily(
            "sfu_cluster_link_rtt_seconds",
            "Smoothed round-trip time of the QUIC node links that are up (QUIC's own estimate, "
            "at least 1 ms): the shortest and the longest; a relayed packet spends about half "
            "of it between the nodes",
            labels=["stat"],
        )
        if rtts:
            rtt.add_metric(["min"], min(rtts))
            rtt.add_metric(["max"], max(rtts))
        yield rtt
        totals = links.totals()  # the relay pipes' counters are brought up to date too
        flows = CounterMetricFamily(
            "sfu_cluster_link_datagrams",
            "Flow datagrams over the node links: published (sent), received, dropped (too "
            "large for one packet, queue full, or malformed)",
            labels=["event"],
        )
        flows.add_metric(["published"], totals["flows_sent"])
        flows.add_metric(["received"], totals["flows_received"])
        flows.add_metric(["dropped"], totals["dropped"])
        yield flows
        yield GaugeMetricFamily(
            "sfu_cluster_links_sealed",
            "Node links whose sealed media lane is keyed both ways (media off QUIC)",
            value=links.lanes_up(),
        )
        lane = links.lane_totals()
        sealed = CounterMetricFamily(
            "sfu_cluster_link_sealed_datagrams",
            "Flow datagrams on the node links' sealed media lanes (AES-GCM over UDP, outside "
            "QUIC): sent, received",
            labels=["event"],
        )
        sealed.add_metric(["sent"], lane["sent"])
        sealed.add_metric(["received"], lane["received"])
        yield sealed
        yield CounterMetricFamily(
            "sfu_cluster_link_sealed_blocked",
            "Times a node link's sealed media lane was found blocked (the peer opened almost "
            "none of what was sealed) and relayed media fell back to QUIC DATAGRAMs",
            value=lane["blocked"],
        )
        yield GaugeMetricFamily(
            "sfu_cluster_links_sealed_fallback",
            "Node links whose sealed media lane is in fallback after going silent (relayed "
            "media on QUIC DATAGRAMs until the lane is retried)",
            value=links.lanes_in_fallback(),
        )
        lane_drops = CounterMetricFamily(
            "sfu_cluster_link_sealed_drops",
            "Sealed media lane datagrams dropped on receipt, by reason: from an address that "
            "is no linked node's, malformed (or a malformed lane control message), unknown key, "
            "replayed, failed authentication",
            labels=["reason"],
        )
        for reason in LANE_DROP_REASONS:
            lane_drops.add_metric([reason], lane[reason])
        yield lane_drops
        yield from self._collect_relay()

    def _collect_relay(self) -> Iterator[Metric]:
        """The relay pipes over the links, summed over the linked nodes (no node label)."""
        node_pipes = self._node_pipes()
        if node_pipes is None:
            return
        open_flows = GaugeMetricFamily(
            "sfu_cluster_relay_flows",
            "Relayed publications over the node links: out (sent to other nodes' "
            "subscribers), in (other nodes' tracks received here)",
            labels=["direction"],
        )
        packets = CounterMetricFamily(
            "sfu_cluster_relay_packets",
            "Relay pipe datagrams over the node links (media, feedback and control), by "
            "direction; filtered: packets of a layer no other node demanded, not sent",
            labels=["direction"],
        )
        drops = CounterMetricFamily(
            "sfu_cluster_relay_drops",
            "Relay pipe datagrams from other nodes dropped, by reason",
            labels=["reason"],
        )
        outbound = inbound = sent = received = filtered = 0
        dropped: dict[str, int] = {}
        for carrier in node_pipes.carriers.values():
            pipe = carrier.pipe
            outbound += len(pipe.outbound_flows())
            inbound += len(pipe.inbound_flows())
            sent += pipe.counters.relayed + pipe.counters.sent_control
            received += pipe.counters.received
            filtered += pipe.counters.filtered
            for reason, count in pipe.counters.drops.items():
                dropped[reason] = dropped.get(reason, 0) + count
        open_flows.add_metric(["out"], outbound)
        open_flows.add_metric(["in"], inbound)
        packets.add_metric(["out"], sent)
        packets.add_metric(["in"], received)
        packets.add_metric(["filtered"], filtered)
        for reason in DROP_REASONS:
            drops.add_metric([reason], dropped.get(reason, 0))
        relay = node_pipes.hub.relay
        resent = CounterMetricFamily(
            "sfu_cluster_relay_retransmissions",
            "Packets another node NACKed, resent from the cache (hit) or no longer there (miss)",
            labels=["result"],
        )
        resent.add_metric(["hit"], relay.retransmitted)
        resent.add_metric(["miss"], relay.retransmit_misses)
        yield from (open_flows, packets, drops, resent)
        yield CounterMetricFamily(
            "sfu_cluster_relay_keyframe_requests",
            "Keyframe requests other nodes' subscribers made of this node's publishers",
            value=relay.keyframe_requests,
        )

    def _collect_room_bus(self) -> Iterator[Metric]:
        room_bus = self._room_bus()
        if room_bus is None:
            return
        events = CounterMetricFamily(
            "sfu_cluster_room_events",
            "Room events between this node's rooms and the other nodes' shards: sent, "
            "received, dropped (queue full, rate limit, too large, directory away, malformed)",
            labels=["event"],
        )
        events.add_metric(["published"], room_bus.sent)
        events.add_metric(["received"], room_bus.received)
        events.add_metric(["dropped"], room_bus.dropped)
        yield events
        yield GaugeMetricFamily(
            "sfu_cluster_rooms_spanned",
            "Rooms open on this node whose events travel on the cluster bus",
            value=len(room_bus.open_rooms),
        )
        yield CounterMetricFamily(
            "sfu_cluster_room_home_failures",
            "Room home claims or releases that could not reach the directory",
            value=room_bus.home_failures,
        )
        yield CounterMetricFamily(
            "sfu_cluster_room_resyncs",
            "Times the bus came back and this node asked the others for their rooms' state",
            value=room_bus.resyncs,
        )
