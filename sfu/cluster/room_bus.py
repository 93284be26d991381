"""Rooms that span nodes: the room service's bus and home claims over the cluster directory.

A room with participants on several nodes has a shard on each (``sfu.room.shards``): the
shards share participants, tracks, mutes, chat and moderation as room events. Between
workers of one node the supervisor carries them; between nodes :class:`ClusterRoomBus` does,
over the directory's pub/sub bus (Redis channel ``sfu:bus:<room>``, bounded in message size
and rate by the directory). It also claims the room's home in the directory when the room
opens on this node (the first node to open it owns it) and releases it when the room ends
here (owner-only: the directory's compare-and-delete refuses anyone else).

The room service calls :meth:`ClusterRoomBus.publish`, :meth:`~ClusterRoomBus.opened` and
:meth:`~ClusterRoomBus.closed` synchronously, on the packet path's loop; they only queue. One
task carries the queue out in order (subscribe before the room's ``shard_opened`` is sent,
so the other nodes' answers are heard). Each message is ``{"origin": node_id, "event": ...}``;
a node's own messages come back from Redis and are skipped. A ``policy`` event goes on
the cluster-wide channel (:data:`~sfu.cluster.directory.CLUSTER_CHANNEL`, the room named
inside) that every node listens to: a node where the room has nobody yet obeys it too.
Other nodes appear to the room service as shard origins (integers from
:data:`NODE_ORIGIN_BASE` up, so they never collide with worker indices).

After Redis comes back (restarted, or the network), every event published meanwhile is
lost: the bus claims its rooms' homes again and sends ``shard_opened`` for each, which every
other node answers with its whole state (events are idempotent). A node whose lease lapsed
(killed) is a closed shard: its participants leave the rooms here.

Media of a track on another node crosses the QUIC node link
(:mod:`sfu.cluster.node_pipes`); on a node that offers no link, :class:`NodeTracks` lists
such tracks as stand-ins, visible and subscribable, fed by nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from sfu.clock import Clock
from sfu.clock import now as monotonic
from sfu.cluster.directory import (
    CLUSTER_CHANNEL,
    LEASE_TTL_S,
    BusError,
    DirectoryUnavailable,
    NodeInfo,
    check_room,
)
from sfu.cluster.registry import NodeRegistry

if TYPE_CHECKING:
    from sfu.core.publication import Publication
    from sfu.core.router import AudioLevelSink
    from sfu.room.service import RoomService

__all__ = ["MAX_NODES", "NODE_ORIGIN_BASE", "QUEUE_LIMIT", "ClusterRoomBus", "NodeTracks"]

log = logging.getLogger(__name__)

#: The first shard origin a node gets (worker indices are small integers below it).
NODE_ORIGIN_BASE: Final = 1 << 16
#: Other nodes this one tells apart on the bus at most (beyond, their messages are dropped
#: and counted: the origin table stays bounded whatever the bus carries).
MAX_NODES: Final = 1024
#: Operations (events, opens, closes) waiting for the directory at most; beyond, new events
#: are dropped and counted (a stalled Redis must not grow memory without bound).
QUEUE_LIMIT: Final = 10_000
#: How long :meth:`ClusterRoomBus.stop` waits for the bus task to end (s). A cancellation
#: that lands inside a Redis call can be swallowed by the client library (redis-py's
#: CancelledError handling), and the task then goes back to its queue: a node's shutdown
#: stalled 20 s that way. The task also checks the stop flag between operations.
STOP_TIMEOUT_S: Final = 1.0

_Op = tuple[str, str, Mapping[str, Any] | None]


class NodeTracks:
    """Stand-ins of tracks published on other nodes, for a node without a node link
    (``cluster.advertise_address`` empty): listed and subscribable but carrying nothing."""

    def __init__(self) -> None:
        #: Track id -> the node origin it comes from.
        self.standins: dict[str, int] = {}

    def open(
        self, origin: int, publication: Publication, on_audio_level: AudioLevelSink | None
    ) -> bool:
        del on_audio_level  # levels come with the media, over the link
        self.standins[publication.id] = origin
        return True

    def close(self, publication: Publication) -> None:
        self.standins.pop(publication.id, None)

    def ended(self, publication: Publication) -> None:
        """A local publication ended: without a link nothing relays it to another node, so
        there is no flow to close; the bus's ``track_unpublished`` removes the other nodes'
        stand-ins."""
        del publication


class ClusterRoomBus:
    """The room service's ``RoomBus`` and ``RoomHomes`` over the cluster directory."""

    def __init__(
        self,
        registry: NodeRegistry,
        rooms: Callable[[], RoomService | None],
        *,
        clock: Clock = monotonic,
    ) -> None:
        self.registry = registry
        self.directory = registry.directory
        self.node_id = registry.node.node_id
        self._rooms = rooms
        self._clock = clock
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        #: Rooms open here (subscribed, home claimed or tried).
        self.open_rooms: set[str] = set()
        #: Shard origin of each other node heard on the bus.
        self.origins: dict[str, int] = {}
        #: Nodes seen alive at the last lease renewal (other than this one), with their
        #: incarnations.
        self._alive: dict[str, str] = {}
        #: Until when an absent node is not taken for dead (after this node lost the
        #: directory: a restarted Redis has forgotten every lease until each node renews).
        self._grace_until = -math.inf
        self._registry_epoch = (registry.reconnects, registry.lease_lapses)
        self.directory.on_resubscribed = self.resync
        # Counters read at scrape time.
        self.sent = 0
        self.received = 0
        #: Events not sent (queue full, too large, rate limit, Redis away) or received
        #: malformed / from too many nodes.
        self.dropped = 0
        #: Home claims and releases that could not reach the directory.
        self.home_failures = 0
        self.resyncs = 0

    def start(self) -> None:
        """Start carrying the queue out (on the running loop)."""
        if self._task is None:
            self._stopping = False
            self._put(("listen", CLUSTER_CHANNEL, None))
            self._task = asyncio.create_task(self._run(), name="cluster-room-bus")

    async def stop(self) -> None:
        """Stop (queued operations are dropped; the homes are released by the registry)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        # Bounded: a cancellation swallowed inside a Redis call leaves the task running
        # until its operation returns (then it sees the flag and ends).
        done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if not done:
            log.warning("cluster room bus: its task did not end within %.1f s", STOP_TIMEOUT_S)
            task.cancel()
        elif not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()

    def _put(self, op: _Op) -> bool:
        try:
            self._queue.put_nowait(op)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        return True

    # -- what the room service calls (synchronous: it only queues) -----------------------------

    def publish(self, room: str, event: dict[str, Any]) -> None:
        # A policy concerns every node (the next join anywhere obeys it), the rest only the
        # nodes that have the room open.
        self._put(("policy" if event.get("type") == "policy" else "publish", room, event))

    def opened(self, room: str) -> None:
        self.open_rooms.add(room)
        self._put(("open", room, None))

    def closed(self, room: str) -> None:
        self.open_rooms.discard(room)
        self._put(("close", room, None))

    # -- the queue ------------------------------------------------------------------------------

    async def idle(self) -> None:
        """Wait until every queued operation was carried out (tests, a clean stop)."""
        await self._queue.join()

    async def _run(self) -> None:
        while not self._stopping:
            op, room, event = await self._queue.get()
            try:
                await self._carry(op, room, event)
            except DirectoryUnavailable as exc:
                if op in ("publish", "policy"):
                    self.dropped += 1
                else:
                    self.home_failures += 1
                log.debug("cluster room bus: %s not carried out (%s)", op, exc)
            except BusError:
                self.dropped += 1
            except Exception:  # one bad operation must not stop the bus
                log.exception("cluster room bus: %s failed", op)
            finally:
                self._queue.task_done()

    async def _carry(self, op: str, room: str, event: Mapping[str, Any] | None) -> None:
        if op == "publish":
            sent = await self.directory.publish(room, {"origin": self.node_id, "event": event})
            if sent:
                self.sent += 1
            else:
                self.dropped += 1
        elif op == "policy":
            message = {"origin": self.node_id, "room": room, "event": event}
            if await self.directory.publish(CLUSTER_CHANNEL, message):
                self.sent += 1
            else:
                self.dropped += 1
        elif op == "listen":
            await self.directory.subscribe(CLUSTER_CHANNEL, self._received)
        elif op in ("open", "subscribe", "claim"):
            if room not in self.open_rooms:
                return  # it ended again before its turn
            if op != "subscribe":
                # Claimed first, so the node where the room opened first owns it; a claim
                # that cannot reach Redis does not keep the room off the bus.
                try:
                    await self.registry.claim_home(room)
                except DirectoryUnavailable:
                    self.home_failures += 1
            if op != "claim":
                await self.directory.subscribe(room, self._received)
        elif op == "close":
            if room in self.open_rooms:
                return  # it opened again before its turn
            await self.directory.unsubscribe(room)
            await self.registry.release_home(room)

    # -- what the bus brings ------------------------------------------------------------------

    def origin_of(self, node_id: str) -> int | None:
        """The shard origin of node ``node_id`` (allocated on first sight; None beyond
        :data:`MAX_NODES`): the node links name their peers' stand-ins with it."""
        return self._origin(node_id)

    def _origin(self, node_id: str) -> int | None:
        origin = self.origins.get(node_id)
        if origin is None and len(self.origins) < MAX_NODES:
            origin = NODE_ORIGIN_BASE + len(self.origins)
            self.origins[node_id] = origin
        return origin

    def _received(self, channel: str, message: Mapping[str, Any]) -> None:
        node_id = message.get("origin")
        if node_id == self.node_id:
            return  # our own, back from Redis
        event = message.get("event")
        room = channel
        if channel == CLUSTER_CHANNEL:  # a cluster-wide event names its room inside
            named = message.get("room")
            room = named if isinstance(named, str) and named != CLUSTER_CHANNEL else ""
            try:
                check_room(room)
            except BusError:
                self.dropped += 1
                return
        origin = self._origin(node_id) if isinstance(node_id, str) and node_id else None
        if origin is None or not isinstance(event, dict):
            self.dropped += 1
            return
        self.received += 1
        rooms = self._rooms()
        if rooms is not None:
            rooms.on_shared(room, origin, event, now=self._clock())

    def resync(self) -> None:
        """The bus was lost and is back: subscribe again, ask every other node for its state
        in each open room and send ours (what was published meanwhile is lost)."""
        self.resyncs += 1
        self._grace_until = self._clock() + LEASE_TTL_S
        rooms = self._rooms()
        for room in sorted(self.open_rooms):
            # Homes are not claimed here: the registry claims this node's own again, and a
            # room whose owner is gone is claimed once its lease lapsed (peers_changed).
            self._put(("subscribe", room, None))
            self._put(("publish", room, {"type": "shard_opened"}))
            if rooms is not None:
                # and ours to them: a node that kept the bus took this one for dead if its
                # lease lapsed meanwhile, and asks nothing
                rooms.share_state(room)

    async def peers_changed(self, nodes: list[NodeInfo]) -> None:
        """The live nodes after a lease renewal: a node seen alive before and gone now
        (killed; its lease lapsed), or back under a new incarnation (restarted within its
        lease), is a closed shard, its participants leave here."""
        alive = {n.node_id: n.incarnation for n in nodes if n.node_id != self.node_id}
        now = self._clock()
        epoch = (self.registry.reconnects, self.registry.lease_lapses)
        if epoch != self._registry_epoch:
            # This node was cut off from the directory (or its store restarted): the others
            # may not have renewed yet; give them a lease's time to show up.
            self._registry_epoch = epoch
            self._grace_until = now + LEASE_TTL_S
        if now < self._grace_until:
            self._alive |= alive
            return
        # Gone: not renewed any more, or restarted meanwhile (a new incarnation under the
        # same id: a worker restarted within its lease has none of its old participants).
        gone = {node_id for node_id, seen in self._alive.items() if alive.get(node_id) != seen}
        self._alive = alive
        rooms = self._rooms()
        for node_id in sorted(gone):
            origin = self.origins.get(node_id)
            if origin is not None and rooms is not None:
                log.info("cluster: a node's lease lapsed; its participants leave here")
                rooms.shard_closed(origin, now=self._clock())
        if gone:
            # A dead node's homes are free: claim those of the rooms open here (the claim
            # takes a room only when its home's lease lapsed).
            for room in sorted(self.open_rooms - self.registry.homes):
                self._put(("claim", room, None))
