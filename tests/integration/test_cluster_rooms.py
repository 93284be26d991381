"""A room spanning two nodes over a real redis-server the test starts on a free port.

Two room services, each with its own Redis connection, node registry (leases renewed every
second) and :class:`~sfu.cluster.room_bus.ClusterRoomBus`: they see each other's
participants and tracks, a host on node A reaches a participant on node B, the room's home
belongs to the first node and only it may release it, and a Redis killed and restarted (no
persistence: every key forgotten) does not lose the bus: events published while it was away
are recovered, the home is claimed again and new events flow, within 5 s. No media crosses
(that is the node link's, next); transports are the room fixtures' (no sockets for media).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis_server import RedisServer, redis_server
from room_fixtures import Harness, harness, simulcast_offer

from sfu.cluster.directory import NodeInfo
from sfu.cluster.redis_directory import RedisDirectory
from sfu.cluster.registry import NodeRegistry
from sfu.cluster.room_bus import ClusterRoomBus, NodeTracks
from sfu.room.identity import Grant
from sfu.room.moderation import Moderation
from sfu.room.room import ParticipantState

pytestmark = pytest.mark.integration

ROOM = "standup"
#: Longest wait for anything asynchronous (bounded loops).
WAIT_S = 8.0
#: What the issue allows for the bus to work again after Redis restarted.
RESTART_S = 5.0


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


class Node:
    """One node: a room service, its registry and room bus on the shared Redis."""

    def __init__(self, node_id: str, url: str, shard: Harness) -> None:
        self.shard = shard
        self.directory = RedisDirectory(url)
        self.registry = NodeRegistry(self.directory, NodeInfo(node_id, "eu"))
        self.bus = ClusterRoomBus(self.registry, lambda: shard.service)
        self.registry.on_peers = self.bus.peers_changed
        shard.service.bus = self.bus
        shard.service.homes = self.bus
        shard.service.remote_tracks = NodeTracks()

    async def start(self) -> None:
        await self.registry.start()
        self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop()
        await self.registry.stop()


async def until(check: Callable[[], bool], timeout: float = WAIT_S) -> float:
    """Wait until ``check()``; the seconds it took (AssertionError after ``timeout``)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def remote(node: Node) -> set[str]:
    room = node.shard.service.rooms.get(ROOM)
    return set() if room is None else set(room.remote)


def tracks_of(node: Node, identity: str, participant: str) -> list[dict[str, Any]]:
    """The tracks of ``participant`` that ``identity`` on ``node`` was told of."""
    return [
        m["track"]
        for m in node.shard.messages(identity, "track_published")
        if m["track"]["participant"] == participant
    ]


def run_two(
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    body: Callable[[Node, Node], Awaitable[None]],
) -> None:
    async def main() -> None:
        a = Node("node-a", server.url, harness(monkeypatch))
        b = Node("node-b", server.url, harness(monkeypatch))
        await a.start()
        await b.start()
        try:
            await body(a, b)
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_two_nodes_share_a_room(server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(a: Node, b: Node) -> None:
        host = a.shard.join(ROOM, "host", Grant.HOST | Grant.PUBLISH | Grant.SUBSCRIBE)
        a.shard.service.offer(host, simulcast_offer(), 0.0, names={"1": "camera"})
        await a.bus.idle()
        assert await a.directory.home(ROOM) == "node-a"
        bob = b.shard.join(ROOM, "bob")
        b.shard.service.offer(bob, simulcast_offer(), 0.0, names={"1": "camera"})
        # Each sees the other's participant and both of its tracks.
        await until(lambda: remote(b) == {host.id} and remote(a) == {bob.id})
        await until(lambda: len(tracks_of(b, "bob", host.id)) == 2)
        await until(lambda: len(tracks_of(a, "host", bob.id)) == 2)
        assert {t["kind"] for t in tracks_of(b, "bob", host.id)} == {"audio", "video"}
        await b.bus.idle()
        assert await b.directory.home(ROOM) == "node-a"  # B's claim found A's home
        # The host on A asks Bob on B to mute, then removes him with a ban.
        video = next(t["id"] for t in tracks_of(a, "host", bob.id) if t["kind"] == "video")
        moderation = Moderation(a.shard.service)
        moderation.request_mute(host, video)
        await until(lambda: bool(b.shard.messages("bob", "mute_requested")))
        assert b.shard.messages("bob", "mute_requested")[-1]["track"] == video
        moderation.remove(host, bob.id, 60, now=0.0)
        await until(lambda: bob.state is ParticipantState.LEFT)
        await until(lambda: remote(a) == set())
        assert b.shard.service.bans.banned(ROOM, "bob", 0.0)
        # The room ended on B: B released nothing of A's (livekit#4316); A still owns it.
        await b.bus.idle()
        assert await b.directory.release_home(ROOM, "node-b") is False
        assert await a.directory.home(ROOM) == "node-a"
        # The room ends on A: its home is released.
        a.shard.service.leave(host, now=0.0)
        await a.bus.idle()
        assert await a.directory.home(ROOM) is None

    run_two(server, monkeypatch, body)


def test_a_redis_restart_does_not_lose_the_bus(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(a: Node, b: Node) -> None:
        alice = a.shard.join(ROOM, "alice")
        await a.bus.idle()
        bob = b.shard.join(ROOM, "bob")
        await until(lambda: remote(b) == {alice.id} and remote(a) == {bob.id})
        await until(lambda: len(a.registry.peers) == 2 and len(b.registry.peers) == 2)
        server.kill()
        # While Redis is away Carol joins on A: the event is lost on the way.
        carol = a.shard.join(ROOM, "carol")
        await a.bus.idle()
        assert a.bus.dropped >= 1
        await asyncio.sleep(1.5)  # both registries notice the directory is gone
        assert not a.registry.connected
        server.start()
        # Within 5 s: the bus is back, what was lost is recovered, the home is A's again.
        took = await until(lambda: carol.id in remote(b), timeout=RESTART_S)
        dave = b.shard.join(ROOM, "dave")
        took += await until(lambda: dave.id in remote(a), timeout=RESTART_S - took)
        assert a.bus.resyncs >= 1 and b.bus.resyncs >= 1
        await until(lambda: a.registry.connected and b.registry.connected)
        assert await a.directory.home(ROOM) == "node-a"
        # Nobody was taken for dead while the leases were re-registered.
        await asyncio.sleep(1.5)
        assert remote(b) == {alice.id, carol.id}
        assert remote(a) == {bob.id, dave.id}

    run_two(server, monkeypatch, body)


def test_a_killed_node_leaves_the_others_rooms(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(a: Node, b: Node) -> None:
        alice = a.shard.join(ROOM, "alice")
        await a.bus.idle()
        b.shard.join(ROOM, "bob")
        await until(lambda: remote(b) == {alice.id})
        await until(lambda: len(b.registry.peers) == 2)
        # Node A stops renewing without a word (as kill -9): its lease lapses in about 3 s.
        assert a.registry._task is not None
        a.registry._task.cancel()
        await a.bus.stop()
        took = await until(lambda: remote(b) == set())
        assert took < 5.0
        assert b.shard.messages("bob", "participant_left")[-1]["participant"] == alice.id
        # A's home of the room is free now: B, which still has the room, takes it.
        await b.bus.idle()
        assert await b.directory.home(ROOM) == "node-b"

    run_two(server, monkeypatch, body)
