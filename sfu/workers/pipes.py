"""A worker's pipes to the other workers: the endpoint, its relays, its bus with the others.

Each worker binds one loopback UDP socket (``sfu.io.pipe``) and reports its port to the
supervisor with its other ports; the supervisor tells every worker where the others' pipes
are (``POST /_worker/pipes``, on the worker's loopback listener only, with the deployment's
secret) whenever a worker (re)starts. The pipes' events go to a ``RelayHub``: flows the
peers ask for name tracks of this worker's rooms; flows this worker asked for feed the
stand-ins of other shards' tracks (the room service's ``RemoteTracks``). ``PipeMetrics``
exports the pipes' counters labelled by the peer worker's index (bounded by
``server.workers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sfu.core.publication import Publication
from sfu.core.relay import DEMAND_POLL_S, RelayHub, RelayTarget
from sfu.io.pipe import PIPE_MAX_DATAGRAM, PipeEndpoint
from sfu.room.service import RoomService
from sfu.transport.pipe import PipeEvent

__all__ = ["PipeMetrics", "WorkerPipes"]


class WorkerPipes:
    """This worker's end of the pipes to every other worker."""

    def __init__(
        self,
        worker: int,
        rooms: Callable[[], RoomService | None],
        clock: Callable[[], float],
    ) -> None:
        self.worker = worker
        self._rooms = rooms
        self.clock = clock
        self.endpoint = PipeEndpoint(worker=worker, handler=self._on_event, clock=clock)
        self.hub = RelayHub(
            self.endpoint.pipes,
            self._find,
            self.endpoint.send,
            self._flush_and_arm,
            clock,
            self._target,
        )
        self._poll: asyncio.TimerHandle | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind the pipe socket; its port (reported to the supervisor)."""
        self.port = await self.endpoint.start()
        return self.port

    def set_peers(self, peers: dict[int, int]) -> None:
        """The other workers' pipe ports (on loopback), by worker index: new or moved
        peers get a fresh pipe, vanished ones are forgotten (with their flows)."""
        known = {peer: address[1] for peer, address in self.endpoint.addresses().items()}
        for peer, port in peers.items():
            if peer != self.worker and known.get(peer) != port:
                self.hub.drop_peer(peer)
                self.endpoint.add_peer(peer, ("127.0.0.1", port))
        for peer in set(known) - set(peers):
            self.hub.drop_peer(peer)
            self.endpoint.remove_peer(peer)

    def _target(self, peer: int) -> RelayTarget | None:
        """Where the data plane may send a tap's packets to worker ``peer`` itself: from
        this worker's pipe socket (the peer accepts only its address), plain (loopback)."""
        sock = self.endpoint.socket
        address = self.endpoint.addresses().get(peer)
        if sock is None or address is None:
            return None
        return RelayTarget(None, sock, address, PIPE_MAX_DATAGRAM)

    def _find(self, track_id: str) -> Publication | None:
        """A publication of this worker's own publishers (never another shard's stand-in)."""
        rooms = self._rooms()
        return None if rooms is None else rooms.own_publication(track_id)

    def _flush_and_arm(self, peer: int) -> None:
        self.endpoint.flush(peer)
        self._arm()

    def _on_event(self, peer: int, event: PipeEvent) -> None:
        self.hub.on_event(peer, event, now=self.clock())

    def _arm(self) -> None:
        if self._poll is None and self.hub.remotes:
            self._poll = asyncio.get_running_loop().call_later(DEMAND_POLL_S, self._run)

    def _run(self) -> None:
        self._poll = None
        try:
            self.hub.relay.fold()
            self.hub.poll(now=self.clock())
        finally:
            self._arm()  # demand refreshes go on even if one poll failed

    def close(self) -> None:
        """Stop the timers and close the socket."""
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        for peer in list(self.endpoint.pipes):
            self.hub.drop_peer(peer)  # no relay output may outlive the socket it sends on
        self.endpoint.close()


class PipeMetrics(Collector):
    """The pipes' counters at scrape time (docs/observability.md, "Pipes")."""

    def __init__(self, pipes: WorkerPipes) -> None:
        self._pipes = pipes

    def collect(self) -> Iterator[Metric]:
        """One family per counter, a sample per peer worker (and reason)."""
        self._pipes.hub.relay.fold()  # what the data plane's relay outputs sent
        now = self._pipes.clock()
        datagrams = CounterMetricFamily(
            "sfu_pipe_datagrams",
            "Datagrams on the pipes to other workers, by peer worker and direction.",
            labels=["peer", "direction"],
        )
        data_bytes = CounterMetricFamily(
            "sfu_pipe_bytes",
            "Bytes of those datagrams, by peer worker and direction.",
            labels=["peer", "direction"],
        )
        filtered = CounterMetricFamily(
            "sfu_pipe_filtered_packets",
            "Packets not relayed because the peer worker's subscribers do not need their layer.",
            labels=["peer"],
        )
        drops = CounterMetricFamily(
            "sfu_pipe_drops",
            "Datagrams from a pipe dropped, by peer worker and reason.",
            labels=["peer", "reason"],
        )
        flows = GaugeMetricFamily(
            "sfu_pipe_flows",
            "Open flows (relayed publications), by peer worker and direction.",
            labels=["peer", "direction"],
        )
        up = GaugeMetricFamily(
            "sfu_pipe_peer_up",
            "Whether the peer worker's pipe was heard from recently.",
            labels=["peer"],
        )
        for peer, pipe in sorted(self._pipes.endpoint.pipes.items()):
            label = str(peer)
            c = pipe.counters
            datagrams.add_metric([label, "out"], c.relayed + c.sent_control)
            datagrams.add_metric([label, "in"], c.received)
            data_bytes.add_metric([label, "out"], c.relayed_bytes)
            data_bytes.add_metric([label, "in"], c.received_bytes)
            filtered.add_metric([label], c.filtered)
            for reason, count in sorted(c.drops.items()):
                drops.add_metric([label, reason], count)
            flows.add_metric([label, "out"], len(pipe.outbound_flows()))
            flows.add_metric([label, "in"], len(pipe.inbound_flows()))
            up.add_metric([label], 1.0 if pipe.peer_up(now=now) else 0.0)
        strangers = CounterMetricFamily(
            "sfu_pipe_strangers",
            "Datagrams on the pipe socket from an address that is no peer worker's.",
        )
        strangers.add_metric([], self._pipes.endpoint.not_peer)
        relay = self._pipes.hub.relay
        resent = CounterMetricFamily(
            "sfu_pipe_retransmissions",
            "Packets a peer worker NACKed, resent from the cache (hit) or no longer there (miss).",
            labels=["result"],
        )
        resent.add_metric(["hit"], relay.retransmitted)
        resent.add_metric(["miss"], relay.retransmit_misses)
        keyframes = CounterMetricFamily(
            "sfu_pipe_keyframe_requests",
            "Keyframe requests peer workers' subscribers made of this worker's publishers "
            "(PLI/FIR up a flow, or a layer newly demanded).",
        )
        keyframes.add_metric([], relay.keyframe_requests)
        yield from (
            datagrams,
            data_bytes,
            filtered,
            drops,
            flows,
            up,
            strangers,
            resent,
            keyframes,
        )
