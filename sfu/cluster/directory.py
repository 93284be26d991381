"""The cluster's directory and bus behind one small interface, and its in-process version.

The directory holds which nodes are alive (each a leased entry: registered, renewed every
:data:`RENEW_INTERVAL_S`, gone :data:`LEASE_TTL_S` after its last renewal) and which node is
each room's home (claimed by one node, released only by that node: a compare-and-delete,
so a node that lost a race, or a stale one, cannot delete a room another node serves;
livekit#4316 lost a 435-participant room to exactly that). It also holds which nodes each
room is on (its *span*): every node records, per room it holds, a leased entry of its own
(:data:`ROOM_LEASE_TTL_S`, refreshed every :data:`ROOM_REFRESH_S` by the node registry,
removed by that node alone when the room ends there), so that a node which does not hold a
room can still place a join where the room already is (:mod:`sfu.cluster.placement`); a
dead node's entries lapse by themselves. The bus carries room events
between nodes (publish to a room's channel; every node subscribed to it gets them), bounded
in message size and in rate.

:class:`LocalDirectory` is a single node's: in-process tables and callbacks, nothing to start
(``make run``). :class:`~sfu.cluster.redis_directory.RedisDirectory` is the cluster's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sfu.clock import Clock
from sfu.clock import now as monotonic

__all__ = [
    "BUS_BURST",
    "BUS_RATE_PER_S",
    "CLUSTER_CHANNEL",
    "LEASE_TTL_S",
    "MAX_BUS_MESSAGE_BYTES",
    "MAX_SPAN_NODES",
    "RENEW_INTERVAL_S",
    "ROOM_BATCH",
    "ROOM_LEASE_TTL_S",
    "ROOM_REFRESH_S",
    "BusError",
    "BusHandler",
    "Directory",
    "DirectoryUnavailable",
    "LocalDirectory",
    "LocalHub",
    "NodeInfo",
    "RateLimit",
    "decode_bus_message",
    "encode_bus_message",
]

#: A node renews its lease this often (seconds).
RENEW_INTERVAL_S: Final = 1.0
#: A lease not renewed for this long lapses: the node is dead (three missed renewals).
LEASE_TTL_S: Final = 3.0
#: A node refreshes its entry in the span of each room it holds this often (seconds): a
#: third of :data:`ROOM_LEASE_TTL_S`, so that two refreshes lost in a row (Redis away for a
#: moment) do not drop it. Slower than the node lease: a node with many rooms refreshes a
#: third of them a second, and readers need not trust the entry alone (placement only ever
#: picks a node whose node lease is live, so a dead node's entries are ignored at once).
ROOM_REFRESH_S: Final = 3.0
#: An entry in a room's span not refreshed for this long lapses (the node stopped holding the
#: room without saying so: it died, or Redis was away when the room ended there).
ROOM_LEASE_TTL_S: Final = 3 * ROOM_REFRESH_S
#: Rooms one span write (one Redis script call) refreshes or removes at most: a node holding
#: thousands of rooms sends a few calls, none of them long enough to stall Redis.
ROOM_BATCH: Final = 256
#: Largest bus message (JSON, UTF-8 bytes): room events are small; a bigger one is refused
#: on publish and dropped (counted) on receipt.
MAX_BUS_MESSAGE_BYTES: Final = 16384
#: Bus messages one node may publish per second, sustained, and in a burst (a token bucket):
#: room events come at human speed; a loop gone wrong must not flood every node.
BUS_RATE_PER_S: Final = 500.0
BUS_BURST: Final = 1000
#: Longest room name accepted as a bus channel or home key (the room protocol's own bound).
MAX_ROOM_NAME: Final = 128
#: Nodes one read of a room's span returns at most (a bound on the read's size whatever the
#: store holds; a room spread over more nodes than this is placed among these).
MAX_SPAN_NODES: Final = 1024
#: Longest incarnation token kept from a node entry (ours are 16 characters).
MAX_INCARNATION: Final = 32


class DirectoryUnavailable(ConnectionError):
    """The directory's store (Redis) did not answer; the caller retries later."""


class BusError(ValueError):
    """A bus message that cannot be sent (too large, not JSON) or a bad room name."""


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What the directory says about one node (no personal data: ids and addresses of nodes)."""

    node_id: str
    region: str
    #: ``host:port`` of its QUIC node link; empty when it offers none.
    link_address: str = ""
    #: Its load, 0.0 (idle) to 1.0 (full), for placement; draining nodes take no one.
    load: float = 0.0
    draining: bool = False
    #: Base URL clients reach its HTTP at (``cluster.public_url``); empty: joins are never
    #: placed there, nor its participants' fallbacks offered.
    url: str = ""
    #: A token drawn when the process started (``NodeRegistry``): the same id under another
    #: incarnation is a restarted process (a worker the supervisor restarted within its
    #: lease), whose participants are gone although its lease never lapsed.
    incarnation: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "node_id": self.node_id,
                "region": self.region,
                "link_address": self.link_address,
                "load": self.load,
                "draining": self.draining,
                "url": self.url,
                "incarnation": self.incarnation,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> NodeInfo:
        """Parse a stored entry; ValueError when it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a node entry is a JSON object")
        load = float(data.get("load", 0.0))
        return cls(
            node_id=str(data["node_id"]),
            region=str(data.get("region", "")),
            link_address=str(data.get("link_address", "")),
            load=load if math.isfinite(load) else 1.0,
            draining=bool(data.get("draining", False)),
            url=str(data.get("url", "")),
            incarnation=str(data.get("incarnation", ""))[:MAX_INCARNATION],
        )


BusHandler = Callable[[str, Mapping[str, Any]], None]


def encode_bus_message(message: Mapping[str, Any]) -> bytes:
    """A bus message as compact JSON; BusError when it is not JSON or is too large."""
    try:
        data = json.dumps(message, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise BusError(f"a bus message must be JSON: {exc}") from None
    if len(data) > MAX_BUS_MESSAGE_BYTES:
        raise BusError(f"a bus message holds at most {MAX_BUS_MESSAGE_BYTES} bytes")
    return data


def decode_bus_message(data: bytes | str) -> dict[str, Any] | None:
    """A received bus message, or None when it is too large or not a JSON object."""
    if len(data) > MAX_BUS_MESSAGE_BYTES:
        return None
    try:
        message = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return message if isinstance(message, dict) else None


#: The bus channel every node of a cluster listens to, for events of rooms a node may not
#: have open (a room's policy). It starts with a control character, which no room name may
#: hold, so it never collides with a room's channel.
CLUSTER_CHANNEL: Final = "\x00cluster"


def check_room(room: str) -> None:
    """BusError unless ``room`` is a usable room name (non-empty, bounded, printable) or
    :data:`CLUSTER_CHANNEL`."""
    if room == CLUSTER_CHANNEL:
        return
    if not room or len(room) > MAX_ROOM_NAME or not room.isprintable():
        raise BusError(f"a room name is 1 to {MAX_ROOM_NAME} printable characters")


class RateLimit:
    """A token bucket: ``rate`` per second sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, *, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, *, now: float) -> bool:
        """Whether one more may pass now (and count it)."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Directory(Protocol):
    """The cluster directory and bus (every method may raise :class:`DirectoryUnavailable`
    when the store is unreachable; the node registry retries)."""

    #: Bus messages dropped: over the publish rate, or too large / malformed on receipt.
    bus_dropped: int
    #: Bus messages published and delivered to a handler here.
    bus_published: int
    bus_received: int
    #: Called after the bus was lost and every room's subscription is live again (events
    #: published meanwhile were lost: the caller asks the other nodes for their state).
    on_resubscribed: Callable[[], None] | None

    async def register(self, node: NodeInfo) -> None:
        """Create or refresh ``node``'s lease (it lapses after :data:`LEASE_TTL_S`)."""
        ...

    async def renew(self, node: NodeInfo) -> bool:
        """Extend ``node``'s lease; False when it had lapsed (then it is registered again)."""
        ...

    async def deregister(self, node_id: str) -> None:
        """Remove the node's lease now (a clean shutdown)."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """Every node whose lease is live."""
        ...

    async def claim_home(self, room: str, node_id: str) -> str:
        """Make ``node_id`` the room's home unless a live node already is; returns the home."""
        ...

    async def home(self, room: str) -> str | None:
        """The node that is the room's home (None: nobody's)."""
        ...

    async def release_home(self, room: str, node_id: str) -> bool:
        """Delete the room's home entry if ``node_id`` owns it; False (nothing changed) when
        another node does."""
        ...

    async def hold_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        """Record (or refresh) that ``node_id`` holds each of ``rooms``: its entry in each
        room's span, live for :data:`ROOM_LEASE_TTL_S` from now."""
        ...

    async def leave_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        """Remove ``node_id``'s own entry from each room's span (nobody else's)."""
        ...

    async def room_nodes(self, room: str) -> set[str]:
        """The nodes whose entry in the room's span is live (at most
        :data:`MAX_SPAN_NODES`)."""
        ...

    async def publish(self, room: str, message: Mapping[str, Any]) -> bool:
        """Send a room event to every node subscribed to the room; False when dropped by the
        rate limit. BusError when the message is too large or not JSON."""
        ...

    async def subscribe(self, room: str, handler: BusHandler) -> None:
        """Deliver the room's events to ``handler(room, message)`` (own messages included)."""
        ...

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering the room's events."""
        ...

    async def close(self) -> None:
        """Release connections (leases are left to lapse unless deregistered)."""
        ...


class LocalHub:
    """What several in-process directories share: the leases, the homes and the bus (one
    process standing in for a cluster: tests, and nodes run side by side in one process)."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[NodeInfo, float]] = {}
        self.homes: dict[str, str] = {}
        #: Room -> node id -> until when (clock time) its entry in the room's span is live.
        self.spans: dict[str, dict[str, float]] = {}
        #: When the spans were last swept of lapsed entries.
        self.swept = -math.inf
        self.members: list[LocalDirectory] = []


class LocalDirectory:
    """The directory of a node on its own: in-process tables, leases against ``clock``.

    Directories given one :class:`LocalHub` see each other's leases, homes and bus messages,
    as nodes on one Redis do (each has its own handlers, rate limit and counters)."""

    def __init__(self, clock: Clock = monotonic, *, hub: LocalHub | None = None) -> None:
        self._clock = clock
        self._hub = hub if hub is not None else LocalHub()
        self._hub.members.append(self)
        self._nodes = self._hub.nodes
        self._homes = self._hub.homes
        self._handlers: dict[str, BusHandler] = {}
        self._rate = RateLimit(BUS_RATE_PER_S, BUS_BURST, now=clock())
        self.on_resubscribed: Callable[[], None] | None = None
        self.bus_dropped = 0
        self.bus_published = 0
        self.bus_received = 0

    def _alive(self, node_id: str) -> bool:
        entry = self._nodes.get(node_id)
        return entry is not None and entry[1] > self._clock()

    async def register(self, node: NodeInfo) -> None:
        self._nodes[node.node_id] = (node, self._clock() + LEASE_TTL_S)

    async def renew(self, node: NodeInfo) -> bool:
        lapsed = not self._alive(node.node_id)
        await self.register(node)
        return not lapsed

    async def deregister(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def nodes(self) -> list[NodeInfo]:
        now = self._clock()
        return [info for info, until in self._nodes.values() if until > now]

    async def claim_home(self, room: str, node_id: str) -> str:
        check_room(room)
        owner = self._homes.get(room)
        if owner is None or (owner != node_id and not self._alive(owner)):
            self._homes[room] = node_id
            return node_id
        return owner

    async def home(self, room: str) -> str | None:
        return self._homes.get(room)

    async def release_home(self, room: str, node_id: str) -> bool:
        if self._homes.get(room) != node_id:
            return False
        del self._homes[room]
        return True

    async def hold_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        for room in rooms:
            check_room(room)
        now = self._clock()
        spans = self._hub.spans
        for room in rooms:
            spans.setdefault(room, {})[node_id] = now + ROOM_LEASE_TTL_S
        if now - self._hub.swept >= ROOM_LEASE_TTL_S:
            # What Redis's key expiry does: rooms whose every entry lapsed go (a dead node's
            # rooms; only ever in tests, where one process stands in for several nodes).
            self._hub.swept = now
            for room in list(spans):
                live = {n: until for n, until in spans[room].items() if until > now}
                if live:
                    spans[room] = live
                else:
                    del spans[room]

    async def leave_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        spans = self._hub.spans
        for room in rooms:
            span = spans.get(room)
            if span is not None:
                span.pop(node_id, None)
                if not span:
                    del spans[room]

    async def room_nodes(self, room: str) -> set[str]:
        check_room(room)
        now = self._clock()
        span = self._hub.spans.get(room, {})
        return set(sorted(n for n, until in span.items() if until > now)[:MAX_SPAN_NODES])

    async def publish(self, room: str, message: Mapping[str, Any]) -> bool:
        check_room(room)
        data = encode_bus_message(message)
        if not self._rate.take(now=self._clock()):
            self.bus_dropped += 1
            return False
        self.bus_published += 1
        for member in list(self._hub.members):
            handler = member._handlers.get(room)
            decoded = decode_bus_message(data)  # each receiver gets its own copy
            if handler is not None and decoded is not None:
                member.bus_received += 1
                handler(room, decoded)
        return True

    async def subscribe(self, room: str, handler: BusHandler) -> None:
        check_room(room)
        self._handlers[room] = handler

    async def unsubscribe(self, room: str) -> None:
        self._handlers.pop(room, None)

    async def close(self) -> None:
        self._handlers.clear()
        if self in self._hub.members:
            self._hub.members.remove(self)
