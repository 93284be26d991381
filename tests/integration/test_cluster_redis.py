"""The cluster directory and bus against a real redis-server the test starts on a free port.

Leases lapse about 3 s after the last renewal; a room's home is deleted only by its owner
(livekit#4316: a non-owner delete lost a live room); a room's span (which nodes hold it)
keeps one leased entry per node, removed only by its node, its key expiring with its last
entry; the bus crosses nodes and refuses what
is too large (its rate bound is proven with a fake clock in test_cluster_directory.py);
policies and bans written by one node are read by a restarted one; and a Redis killed and
restarted (no persistence: every key forgotten) is survived: the registry registers again,
claims its homes again, writes its rooms' spans again, and the bus subscribes again, within
5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import redis
from redis_server import RedisServer, redis_server

from sfu.cluster.directory import (
    LEASE_TTL_S,
    MAX_BUS_MESSAGE_BYTES,
    ROOM_BATCH,
    ROOM_LEASE_TTL_S,
    BusError,
    DirectoryUnavailable,
    NodeInfo,
)
from sfu.cluster.redis_directory import RedisDirectory
from sfu.cluster.registry import NodeRegistry
from sfu.cluster.room_state import RedisRoomState
from sfu.room.policy import Bans, PasswordHash, PolicyStore, RoomDefaults, RoomPolicy

pytestmark = pytest.mark.integration

#: Longest wait for anything asynchronous here (bounded loops).
WAIT_S = 8.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


async def _until(check: Any, timeout: float = WAIT_S) -> float:
    """Await ``check()`` (a coroutine function) until it is true; the seconds it took."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.05)


def test_lease_lapses_after_the_ttl(server: RedisServer) -> None:
    async def run() -> None:
        a = RedisDirectory(server.url)
        b = RedisDirectory(server.url)
        try:
            await a.register(NodeInfo("node-a", "eu", "10.0.0.1:4433"))
            await b.register(NodeInfo("node-b", "us"))
            seen = {n.node_id: n for n in await b.nodes()}
            assert set(seen) == {"node-a", "node-b"}
            assert seen["node-a"].link_address == "10.0.0.1:4433" and seen["node-a"].region == "eu"
            assert await a.renew(NodeInfo("node-a", "eu"))
            # node-a stops renewing: gone about LEASE_TTL_S later, node-b stays while renewed.
            started = time.monotonic()
            while {n.node_id for n in await b.nodes()} != {"node-b"}:
                assert time.monotonic() - started < LEASE_TTL_S + 1.0
                await b.renew(NodeInfo("node-b", "us"))
                await asyncio.sleep(0.1)
            assert time.monotonic() - started > LEASE_TTL_S - 0.5
            # A lapsed lease renewed is registered again, and the caller told.
            assert not await a.renew(NodeInfo("node-a", "eu"))
            assert {n.node_id for n in await b.nodes()} == {"node-a", "node-b"}
            await a.deregister("node-a")
            assert {n.node_id for n in await b.nodes()} == {"node-b"}
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_only_the_owner_deletes_a_room_home(server: RedisServer) -> None:
    async def run() -> None:
        a = RedisDirectory(server.url)
        b = RedisDirectory(server.url)
        try:
            await a.register(NodeInfo("node-a", "eu"))
            await b.register(NodeInfo("node-b", "eu"))
            assert await a.claim_home("big room", "node-a") == "node-a"
            assert await b.claim_home("big room", "node-b") == "node-a"
            # The non-owner's delete is refused and changes nothing (livekit#4316).
            assert not await b.release_home("big room", "node-b")
            assert await b.home("big room") == "node-a"
            assert await a.release_home("big room", "node-a")
            assert await a.home("big room") is None
            assert await b.claim_home("big room", "node-b") == "node-b"
            # A home whose node's lease lapsed may be taken over.
            await b.deregister("node-b")
            assert await a.claim_home("big room", "node-a") == "node-a"
            assert not await b.release_home("big room", "node-b")
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


def test_a_room_span_holds_each_node_own_leased_entry(server: RedisServer) -> None:
    async def run() -> None:
        a = RedisDirectory(server.url)
        b = RedisDirectory(server.url)
        check = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            await a.hold_rooms("node-a", ["big room", "small"])
            await b.hold_rooms("node-b", ["big room"])
            assert await b.room_nodes("big room") == {"node-a", "node-b"}
            assert await b.room_nodes("small") == {"node-a"}
            assert await a.room_nodes("nobody's") == set()
            # Leased: the key expires with its last entry, a room lease from now.
            assert 0 < check.pttl("sfu:span:big room") <= ROOM_LEASE_TTL_S * 1000
            # A lapsed entry (scored in the past by Redis's clock) is not read, and the next
            # write drops it.
            now_s, now_us = check.time()
            check.zadd("sfu:span:big room", {"node-dead": now_s * 1000 + now_us // 1000 - 1})
            assert await b.room_nodes("big room") == {"node-a", "node-b"}
            await b.hold_rooms("node-b", ["big room"])
            assert set(check.zrange("sfu:span:big room", 0, -1)) == {"node-a", "node-b"}
            # Each node removes its own entry only; the last one gone, so is the key.
            await b.leave_rooms("node-b", ["small"])
            assert await a.room_nodes("small") == {"node-a"}
            await a.leave_rooms("node-a", ["small", "big room"])
            assert check.exists("sfu:span:small") == 0
            assert await a.room_nodes("big room") == {"node-b"}
            # Many rooms: written in batches of ROOM_BATCH, every one of them.
            many = [f"room-{i}" for i in range(ROOM_BATCH * 2 + 3)]
            await a.hold_rooms("node-a", many)
            for room in (many[0], many[ROOM_BATCH], many[-1]):
                assert await b.room_nodes(room) == {"node-a"}
            assert len(list(check.scan_iter("sfu:span:room-*", count=1000))) == len(many)
            await a.leave_rooms("node-a", many)
            assert list(check.scan_iter("sfu:span:room-*", count=1000)) == []
            with pytest.raises(BusError):
                await a.hold_rooms("node-a", [""])
        finally:
            check.close()
            await a.close()
            await b.close()

    asyncio.run(run())


def test_bus_crosses_nodes_and_is_bounded(server: RedisServer) -> None:
    async def run() -> None:
        a = RedisDirectory(server.url)
        b = RedisDirectory(server.url)
        got: list[tuple[str, Mapping[str, Any]]] = []
        try:
            await b.subscribe("room-1", lambda room, msg: got.append((room, msg)))

            async def delivered() -> bool:
                await a.publish("room-1", {"type": "mute", "track": "t1"})
                return bool(got)

            await _until(delivered)
            assert got[0] == ("room-1", {"type": "mute", "track": "t1"})
            with pytest.raises(BusError):
                await a.publish("room-1", {"blob": "x" * MAX_BUS_MESSAGE_BYTES})
            with pytest.raises(BusError):
                await a.publish("", {"type": "x"})
            # Oversized raw data put on the channel by anyone else is dropped and counted.
            raw = redis.Redis.from_url(server.url)
            raw.publish("sfu:bus:room-1", b"x" * (MAX_BUS_MESSAGE_BYTES + 1))
            raw.publish("sfu:bus:room-1", b"not json")
            raw.close()
            await _until(lambda: _true_after(b.bus_dropped >= 2))
        finally:
            await a.close()
            await b.close()

    asyncio.run(run())


async def _true_after(value: bool) -> bool:
    return value


def test_policies_and_bans_survive_a_node_restart(server: RedisServer) -> None:
    first = RedisRoomState(server.url)
    policy = RoomPolicy(
        waiting_room=False,
        locked=True,
        max_participants=12,
        e2ee_required=True,
        password=PasswordHash(b"salt-bytes", b"digest-bytes", 16384, 8, 1),
    )
    wall = time.time()
    first.save_policy("room-1", policy)
    first.save_policy("room-2", RoomPolicy())
    first.save_policy("room-2", None)
    first.save_ban("room-1", "mallory", wall + 600)
    first.save_ban("room-1", "mallory", wall + 60)  # a shorter ban never shortens one
    first.save_ban("room-1", "gone", wall - 1)
    first.close()
    # Another node (or this one restarted) reads them.
    second = RedisRoomState(server.url)
    policies = PolicyStore(RoomDefaults())
    bans = Bans(100)
    restored, banned = second.load(policies, bans, now=50.0, wall=wall)
    second.close()
    assert (restored, banned) == (1, 1)
    assert policies.get("room-1") == policy
    assert bans.banned("room-1", "mallory", 50.0 + 599)
    assert not bans.banned("room-1", "gone", 50.0)
    assert "redis 127.0.0.1" in second.location


def test_redis_restart_is_survived(server: RedisServer) -> None:
    """Kill -9 Redis (no persistence: every key lost) and start it again: within 5 s the
    node is registered again, its room home claimed again and the bus delivers again."""

    async def run() -> None:
        directory = RedisDirectory(server.url)
        registry = NodeRegistry(directory, NodeInfo("node-a", "eu"))
        got: list[Mapping[str, Any]] = []
        publisher = RedisDirectory(server.url)
        try:
            await registry.start()
            assert registry.connected and registry.healthy
            assert await registry.claim_home("room-1") == "node-a"
            await directory.subscribe("room-1", lambda _room, msg: got.append(msg))

            async def bus_works() -> bool:
                try:
                    await publisher.publish("room-1", {"n": len(got)})
                except DirectoryUnavailable:
                    return False
                return bool(got)

            await _until(bus_works)
            server.kill()
            await _until(lambda: _true_after(not registry.connected), timeout=3.0)
            with pytest.raises(DirectoryUnavailable):
                await publisher.publish("room-1", {"n": -1})
            server.start()
            got.clear()

            async def recovered() -> bool:
                if not registry.connected:
                    return False
                check = redis.Redis.from_url(server.url, decode_responses=True)
                try:
                    return (
                        check.exists("sfu:node:node-a") == 1
                        and check.get("sfu:home:room-1") == "node-a"
                        and check.zscore("sfu:span:room-1", "node-a") is not None
                    )
                finally:
                    check.close()

            took = await _until(recovered, timeout=5.0)
            bus_took = await _until(bus_works, timeout=5.0 - took)
            assert took + bus_took < 5.0
            assert registry.reconnects >= 1 and directory.bus_reconnects >= 1
            assert registry.status()["directory"] == "up"
        finally:
            await registry.stop()
            await publisher.close()
        check = redis.Redis.from_url(server.url)
        try:
            # A clean stop deregisters, releases the home and leaves the room's span.
            assert check.exists("sfu:node:node-a", "sfu:home:room-1", "sfu:span:room-1") == 0
        finally:
            check.close()

    asyncio.run(run())
