"""The cluster directory and bus in Redis (redis-py's asyncio client).

Keys (all under :data:`KEY_PREFIX`; no personal data: node ids, addresses of nodes, room
names and the node that serves each):

- ``sfu:node:<node_id>``: the node's :class:`~sfu.cluster.directory.NodeInfo` as JSON, set
  with a ``PX`` expiry of :data:`~sfu.cluster.directory.LEASE_TTL_S`: the lease. Renewing is
  ``SET ... XX PX`` (only while it still exists: a lapsed lease is registered anew, and the
  caller learns it lapsed).
- ``sfu:home:<room>``: the node id of the room's home. Claimed and released by Lua scripts,
  each atomic in Redis: a claim takes the room only when it has no home or its home's lease
  lapsed; a release deletes the entry only when the caller owns it (compare-and-delete).
- ``sfu:span:<room>``: which nodes hold the room, a sorted set of node ids, each scored
  with when its entry lapses (Redis server time, ms: the nodes' clocks never compare). A
  node writes only its own entry: added when the room opens there, refreshed every
  :data:`~sfu.cluster.directory.ROOM_REFRESH_S` to lapse
  :data:`~sfu.cluster.directory.ROOM_LEASE_TTL_S` later, removed (``ZREM`` of its own id)
  when the room ends there. Each write also drops the lapsed entries and sets the key to
  expire with its last live one, so the key of a room nobody holds any more (every node
  that held it died) is gone within a room lease; a read returns the live entries only.
  At most one entry per node: the set stays as small as the cluster.
- channel ``sfu:bus:<room>``: the room's events (JSON, bounded).

A connection lost (Redis restarted, network) turns every call into
:class:`~sfu.cluster.directory.DirectoryUnavailable` until Redis answers again (redis-py
reconnects on the next command); the bus's reader reconnects with backoff and subscribes to
every room again. The scripts read the owner's lease key from inside the script (and a span
refresh writes many rooms' keys in one script), so this is for one Redis (or a primary with
replicas), not Redis Cluster's sharding.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from sfu.clock import Clock
from sfu.clock import now as monotonic
from sfu.cluster.directory import (
    BUS_BURST,
    BUS_RATE_PER_S,
    LEASE_TTL_S,
    MAX_SPAN_NODES,
    ROOM_BATCH,
    ROOM_LEASE_TTL_S,
    BusHandler,
    DirectoryUnavailable,
    NodeInfo,
    RateLimit,
    check_room,
    decode_bus_message,
    encode_bus_message,
)

__all__ = ["KEY_PREFIX", "RedisDirectory"]

log = logging.getLogger(__name__)

#: Every key and channel of the cluster starts with this.
KEY_PREFIX: Final = "sfu:"
_NODE: Final = KEY_PREFIX + "node:"
_HOME: Final = KEY_PREFIX + "home:"
_BUS: Final = KEY_PREFIX + "bus:"
_SPAN: Final = KEY_PREFIX + "span:"
#: Seconds a Redis command may take before the store counts as unreachable: well under the
#: lease renewal interval, so a stalled Redis is noticed within one renewal.
COMMAND_TIMEOUT_S: Final = 0.5
#: The bus reader's backoff between reconnection attempts (doubling, up to the maximum).
RECONNECT_MIN_S: Final = 0.1
RECONNECT_MAX_S: Final = 1.0
#: How long one wait for a bus message lasts before the reader loops (to notice new rooms).
LISTEN_POLL_S: Final = 0.2
#: How long :meth:`RedisDirectory.subscribe` waits for Redis to confirm the subscription (a
#: room's first event, its ``shard_opened``, is answered only to subscribers); while Redis is
#: away it returns after this, and the reader subscribes once Redis is back.
SUBSCRIBE_WAIT_S: Final = 1.0
#: How often that wait looks (the reader confirms within one LISTEN_POLL_S).
_SUBSCRIBE_CHECK_S: Final = 0.01

#: Take the room unless a live node other than the caller already has it. KEYS[1]: the
#: home key; ARGV[1]: the caller's node id; ARGV[2]: the node key prefix.
_CLAIM: Final = """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return owner
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
#: Delete the home only when the caller owns it. KEYS[1]: the home key; ARGV[1]: node id.
_RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

#: Add or refresh the caller's entry in each room's span, to lapse ARGV[2] ms from Redis's
#: own clock; drop lapsed entries; let the key expire with its last live entry. KEYS: the
#: span keys; ARGV[1]: the node id; ARGV[2]: the room lease in ms.
_HOLD: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, string.format('%d', expiry), ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%d', now))
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', key, last[2])
end
return #KEYS
"""
#: The live entries of a room's span (by Redis's clock). KEYS[1]: the span key; ARGV[1]:
#: how many at most.
_SPAN_READ: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], string.format('(%d', now), '+inf',
                  'LIMIT', 0, tonumber(ARGV[1]))
"""


class RedisDirectory:
    """The cluster's directory and bus in one Redis."""

    def __init__(self, url: str, clock: Clock = monotonic) -> None:
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            decode_responses=True,
        )
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)
        self._hold = self._client.register_script(_HOLD)
        self._span_read = self._client.register_script(_SPAN_READ)
        self._clock = clock
        self._rate = RateLimit(BUS_RATE_PER_S, BUS_BURST, now=clock())
        self._handlers: dict[str, BusHandler] = {}
        self._subscribed: set[str] = set()
        self._pubsub: PubSub | None = None
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.bus_dropped = 0
        self.bus_published = 0
        self.bus_received = 0
        #: Times the bus reader lost Redis and subscribed again.
        self.bus_reconnects = 0
        self.on_resubscribed: Callable[[], None] | None = None

    # -- leases -------------------------------------------------------------------------------

    async def register(self, node: NodeInfo) -> None:
        try:
            await self._client.set(_NODE + node.node_id, node.to_json(), px=_lease_ms())
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None

    async def renew(self, node: NodeInfo) -> bool:
        try:
            kept = await self._client.set(
                _NODE + node.node_id, node.to_json(), px=_lease_ms(), xx=True
            )
            if kept:
                return True
            await self._client.set(_NODE + node.node_id, node.to_json(), px=_lease_ms())
            return False
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None

    async def deregister(self, node_id: str) -> None:
        try:
            await self._client.delete(_NODE + node_id)
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None

    async def nodes(self) -> list[NodeInfo]:
        try:
            keys = [key async for key in self._client.scan_iter(match=_NODE + "*", count=100)]
            values = await self._client.mget(keys) if keys else []
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None
        out: list[NodeInfo] = []
        for value in values:
            if value is None:
                continue  # lapsed between the scan and the read
            try:
                out.append(NodeInfo.from_json(value))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring a malformed node entry in the directory")
        return out

    # -- room homes ---------------------------------------------------------------------------

    async def claim_home(self, room: str, node_id: str) -> str:
        check_room(room)
        try:
            owner = await self._claim(keys=[_HOME + room], args=[node_id, _NODE])
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None
        return str(owner)

    async def home(self, room: str) -> str | None:
        check_room(room)
        try:
            owner = await self._client.get(_HOME + room)
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None
        return None if owner is None else str(owner)

    async def release_home(self, room: str, node_id: str) -> bool:
        check_room(room)
        try:
            deleted = await self._release(keys=[_HOME + room], args=[node_id])
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None
        return bool(deleted)

    # -- room spans ---------------------------------------------------------------------------

    async def hold_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        for room in rooms:
            check_room(room)
        lease_ms = int(ROOM_LEASE_TTL_S * 1000)
        try:
            for start in range(0, len(rooms), ROOM_BATCH):
                keys = [_SPAN + room for room in rooms[start : start + ROOM_BATCH]]
                await self._hold(keys=keys, args=[node_id, lease_ms])
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None

    async def leave_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        # Only ever this node's own member; Redis deletes a sorted set left empty.
        try:
            for start in range(0, len(rooms), ROOM_BATCH):
                async with self._client.pipeline(transaction=False) as pipe:
                    for room in rooms[start : start + ROOM_BATCH]:
                        pipe.zrem(_SPAN + room, node_id)
                    await pipe.execute()
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None

    async def room_nodes(self, room: str) -> set[str]:
        check_room(room)
        try:
            nodes = await self._span_read(keys=[_SPAN + room], args=[MAX_SPAN_NODES])
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None
        return {str(node) for node in nodes}

    # -- bus ----------------------------------------------------------------------------------

    async def publish(self, room: str, message: Mapping[str, Any]) -> bool:
        check_room(room)
        data = encode_bus_message(message)
        if not self._rate.take(now=self._clock()):
            self.bus_dropped += 1
            return False
        try:
            await self._client.publish(_BUS + room, data)
        except RedisError as exc:
            raise DirectoryUnavailable(str(exc)) from None
        self.bus_published += 1
        return True

    async def subscribe(self, room: str, handler: BusHandler) -> None:
        """Deliver the room's events to ``handler``; returns once Redis confirmed the
        subscription, or after :data:`SUBSCRIBE_WAIT_S` while Redis is away."""
        check_room(room)
        self._handlers[room] = handler
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen(), name="cluster-bus")
        deadline = asyncio.get_running_loop().time() + SUBSCRIBE_WAIT_S
        while room not in self._subscribed and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_SUBSCRIBE_CHECK_S)

    async def unsubscribe(self, room: str) -> None:
        self._handlers.pop(room, None)

    @property
    def bus_connected(self) -> bool:
        """Whether the bus reader holds a live subscription."""
        return self._pubsub is not None and bool(self._subscribed)

    async def _sync_subscriptions(self, pubsub: PubSub) -> None:
        wanted = set(self._handlers)
        added = wanted - self._subscribed
        removed = self._subscribed - wanted
        if added:
            await pubsub.subscribe(*(_BUS + room for room in added))
        if removed:
            await pubsub.unsubscribe(*(_BUS + room for room in removed))
        self._subscribed = wanted

    async def _listen(self) -> None:
        """Read the bus; on a lost connection wait, reconnect and subscribe to every room."""
        backoff = RECONNECT_MIN_S
        lost = False
        while not self._closed and self._handlers:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            self._pubsub = pubsub
            self._subscribed = set()
            try:
                while not self._closed and self._handlers:
                    await self._sync_subscriptions(pubsub)
                    if lost:
                        lost = False
                        self._resubscribed()
                    message = await pubsub.get_message(timeout=LISTEN_POLL_S)
                    backoff = RECONNECT_MIN_S
                    if message is not None:
                        self._dispatch(message)
            except (RedisError, OSError) as exc:
                log.warning("cluster bus: lost Redis (%s), reconnecting", type(exc).__name__)
                self.bus_reconnects += 1
                lost = True
            finally:
                self._pubsub = None
                self._subscribed = set()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            if not self._closed:
                await asyncio.sleep(backoff)
                backoff = min(RECONNECT_MAX_S, backoff * 2)

    def _resubscribed(self) -> None:
        if self.on_resubscribed is None:
            return
        try:
            self.on_resubscribed()
        except Exception:  # the caller's trouble must not stop the bus
            log.exception("cluster bus: the resubscription callback failed")

    def _dispatch(self, message: Mapping[str, Any]) -> None:
        channel = message.get("channel")
        data = message.get("data")
        if not isinstance(channel, str) or not isinstance(data, str):
            return
        room = channel.removeprefix(_BUS)
        handler = self._handlers.get(room)
        decoded = decode_bus_message(data)
        if decoded is None:
            self.bus_dropped += 1
            return
        if handler is None:
            return
        self.bus_received += 1
        try:
            handler(room, decoded)
        except Exception:  # one handler's bug must not stop the bus
            log.exception("cluster bus handler failed")

    async def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return bool(await self._client.ping())
        except RedisError:
            return False

    async def close(self) -> None:
        self._closed = True
        self._handlers.clear()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._listener
        await self._client.aclose()


def _lease_ms() -> int:
    return int(LEASE_TTL_S * 1000)
