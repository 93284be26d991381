"""A worker's pipes to the other workers: endpoint, relay of its publications, remote ones.

Each worker binds one loopback UDP socket (``sfu.io.pipe``) and reports its port to the
supervisor with its other ports; the supervisor tells every worker where the others' pipes
are (``POST /_worker/pipes``, on the worker's loopback listener only) whenever a worker
(re)starts. Events of the sending side go to the ``PublicationRelay`` (a flow asked for
names a track of this worker's rooms); flows this worker receives feed the
``RemotePublication`` that asked for them. ``PipeMetrics`` exports the pipes' counters
labelled by the peer worker's index (bounded by ``server.workers``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from sfu.core.publication import Publication
from sfu.core.relay import PipeOut, PublicationRelay, RemotePublication
from sfu.io.pipe import PipeEndpoint
from sfu.room.service import RoomService
from sfu.transport.pipe import FlowClosed, Media, PipeEvent, StreamsReceived

__all__ = ["NACK_POLL_S", "PipeMetrics", "WorkerPipes"]

#: How often remote publications' NACK generators are polled while any exists (a gap in
#: a relayed stream is asked for again within this, on top of the generator's own wait).
NACK_POLL_S: Final = 0.02


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
        self._clock = clock
        self.endpoint = PipeEndpoint(worker=worker, handler=self._on_event, clock=clock)
        self.relay = PublicationRelay(self._find, self._out)
        #: (peer, flow) -> the remote publication a flow we receive feeds.
        self.remotes: dict[tuple[int, int], RemotePublication] = {}
        self._outs: dict[int, PipeOut] = {}
        self._poll: asyncio.TimerHandle | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind the pipe socket; its port (reported to the supervisor)."""
        self.port = await self.endpoint.start()
        return self.port

    def set_peers(self, peers: dict[int, int]) -> None:
        """The other workers' pipe ports (on loopback), by worker index: new or moved
        peers get a fresh pipe, vanished ones are forgotten (with their flows)."""
        known = {
            peer: address[1]
            for peer, address in self.endpoint.addresses().items()
            if peer in self.endpoint.pipes
        }
        for peer, port in peers.items():
            if peer != self.worker and known.get(peer) != port:
                self._forget(peer)
                self.endpoint.add_peer(peer, ("127.0.0.1", port))
        for peer in set(known) - set(peers):
            self._forget(peer)
            self.endpoint.remove_peer(peer)

    def _forget(self, peer: int) -> None:
        """Everything relayed to or from ``peer`` ends (its pipe is replaced or gone)."""
        self.relay.drop_peer(peer)
        for key in [k for k in self.remotes if k[0] == peer]:
            del self.remotes[key]

    def _out(self, peer: int) -> PipeOut:
        out = self._outs.get(peer)
        if out is None:
            endpoint = self.endpoint

            def send(datagram: bytes) -> None:
                endpoint.send(peer, datagram)

            out = self._outs[peer] = PipeOut(send)
        return out

    def _find(self, track_id: str) -> Publication | None:
        rooms = self._rooms()
        if rooms is None:
            return None
        for room in rooms.rooms.values():
            publication = room.publications.get(track_id)
            if publication is not None:
                return publication
        return None

    def add_remote(self, peer: int, remote: RemotePublication) -> None:
        """Feed ``remote`` (its flow opened on the pipe to ``peer``) from now on."""
        self.remotes[peer, remote.flow] = remote
        self.endpoint.flush(peer)
        self._arm()

    def remove_remote(self, peer: int, remote: RemotePublication) -> None:
        """Stop receiving ``remote``'s flow."""
        self.remotes.pop((peer, remote.flow), None)

    def _on_event(self, peer: int, event: PipeEvent) -> None:
        now = self._clock()
        pipe = self.endpoint.pipes.get(peer)
        if pipe is None:
            return
        if isinstance(event, Media):
            remote = self.remotes.get((peer, event.flow))
            if remote is not None:
                remote.on_media(event, now=now)
            return
        if isinstance(event, StreamsReceived):
            remote = self.remotes.get((peer, event.flow))
            if remote is not None:
                remote.on_streams(event)
            return
        if isinstance(event, FlowClosed) and event.inbound:
            self.remotes.pop((peer, event.flow), None)
            return
        self.relay.on_event(peer, pipe, event, now=now)

    def _arm(self) -> None:
        if self._poll is None and self.remotes:
            self._poll = asyncio.get_running_loop().call_later(NACK_POLL_S, self._run)

    def _run(self) -> None:
        self._poll = None
        now = self._clock()
        for (peer, _), remote in list(self.remotes.items()):
            due = remote.next_timer()
            if due is not None and due <= now:
                remote.poll(now=now)
                self.endpoint.flush(peer)
        self._arm()

    def close(self) -> None:
        """Stop the timers and close the socket."""
        if self._poll is not None:
            self._poll.cancel()
            self._poll = None
        self.endpoint.close()


class PipeMetrics(Collector):
    """The pipes' counters at scrape time (docs/observability.md, "Pipes")."""

    def __init__(self, pipes: WorkerPipes) -> None:
        self._pipes = pipes

    def collect(self) -> Iterator[Metric]:
        """One family per counter, a sample per peer worker (and reason)."""
        now = self._pipes._clock()
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
        yield from (datagrams, data_bytes, filtered, drops, flows, up, strangers)
