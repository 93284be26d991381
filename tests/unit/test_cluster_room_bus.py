"""A room spanning two nodes: two room services, each with its node's registry and
:class:`~sfu.cluster.room_bus.ClusterRoomBus`, on two in-process directories sharing one
:class:`~sfu.cluster.directory.LocalHub` (as two nodes share one Redis; the same over a real
redis-server is tests/integration/test_cluster_rooms.py). Socket-free, time is a number.
Alice is on node A, Bob on node B."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from room_fixtures import Harness, harness, simulcast_offer

from sfu.cluster.directory import (
    CLUSTER_CHANNEL,
    LEASE_TTL_S,
    LocalDirectory,
    LocalHub,
    NodeInfo,
)
from sfu.cluster.registry import NodeRegistry
from sfu.cluster.room_bus import MAX_NODES, NODE_ORIGIN_BASE, ClusterRoomBus, NodeTracks
from sfu.metrics.cluster import ClusterCollector
from sfu.room.identity import Grant
from sfu.room.moderation import Moderation
from sfu.room.policy import PasswordHash, RoomPolicy, policy_from_wire, policy_to_wire
from sfu.room.room import Participant, ParticipantState
from sfu.room.service import RoomError

ROOM = "standup"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Node:
    """One node: its room service, registry and room bus."""

    def __init__(self, node_id: str, hub: LocalHub, clock: FakeClock, shard: Harness) -> None:
        self.shard = shard
        self.directory = LocalDirectory(clock, hub=hub)
        self.registry = NodeRegistry(self.directory, NodeInfo(node_id, "eu"), clock=clock)
        self.bus = ClusterRoomBus(self.registry, lambda: shard.service, clock=clock)
        self.tracks = NodeTracks()
        shard.service.bus = self.bus
        shard.service.homes = self.bus
        shard.service.remote_tracks = self.tracks


class Cluster:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = FakeClock()
        self.hub = LocalHub()
        self.a = Node("node-a", self.hub, self.clock, harness(monkeypatch))
        self.b = Node("node-b", self.hub, self.clock, harness(monkeypatch))

    async def start(self) -> None:
        for node in (self.a, self.b):
            await node.registry.start()
            node.bus.start()
        await self.settle()  # both listen to the cluster-wide channel

    async def settle(self) -> None:
        """Carry every queued operation out, on both nodes, until both are quiet."""
        for _ in range(20):
            await self.a.bus.idle()
            await self.b.bus.idle()
            if self.a.bus._queue.empty() and self.b.bus._queue.empty():
                return
        raise AssertionError("the nodes never went quiet")

    async def stop(self) -> None:
        for node in (self.a, self.b):
            await node.bus.stop()
            await node.registry.stop()


def run(monkeypatch: pytest.MonkeyPatch, body: Callable[[Cluster], Awaitable[None]]) -> None:
    cluster = Cluster(monkeypatch)

    async def main() -> None:
        await cluster.start()
        try:
            await body(cluster)
        finally:
            await cluster.stop()

    asyncio.run(main())


def test_participants_and_tracks_are_seen_on_both_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        alice = a.join(ROOM, "alice")
        a.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
        await c.settle()
        bob = b.join(ROOM, "bob")  # B opens the room: A answers with its state
        await c.settle()
        assert [m["participant"]["id"] for m in b.messages("bob", "participant_joined")] == [
            alice.id
        ]
        tracks = {m["track"]["kind"]: m["track"] for m in b.messages("bob", "track_published")}
        assert set(tracks) == {"audio", "video"}
        assert tracks["video"]["participant"] == alice.id
        assert set(c.b.tracks.standins) == {t["id"] for t in tracks.values()}
        assert set(c.b.tracks.standins.values()) == {NODE_ORIGIN_BASE}
        assert [m["participant"]["id"] for m in a.messages("alice", "participant_joined")] == [
            bob.id
        ]
        # A mute on A is seen on B.
        a.service.set_muted(alice, tracks["audio"]["id"], True)
        await c.settle()
        assert b.messages("bob", "track_muted")[-1] == {
            "type": "track_muted",
            "track": tracks["audio"]["id"],
            "muted": True,
        }
        # Alice leaves: B sees her and her tracks go.
        a.service.leave(alice, now=0.0)
        await c.settle()
        assert b.messages("bob", "participant_left")[-1]["participant"] == alice.id
        assert not c.b.tracks.standins
        assert not b.service.rooms[ROOM].publications

    run(monkeypatch, body)


def test_the_home_is_claimed_by_the_first_node_and_released_only_by_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        alice = a.join(ROOM, "alice")
        await c.settle()
        assert await c.a.directory.home(ROOM) == "node-a"
        assert c.a.registry.homes == {ROOM}
        bob = b.join(ROOM, "bob")
        await c.settle()
        assert await c.b.directory.home(ROOM) == "node-a"  # B's claim found A's
        assert c.b.registry.homes == set()
        # The room ends on B: B's release is refused, A still serves it (livekit#4316).
        b.service.leave(bob, now=0.0)
        await c.settle()
        assert await c.b.directory.release_home(ROOM, "node-b") is False
        assert await c.a.directory.home(ROOM) == "node-a"
        # The room ends on A: its home is gone; the next node to open it takes it.
        a.service.leave(alice, now=0.0)
        await c.settle()
        assert await c.a.directory.home(ROOM) is None
        b.join(ROOM, "bob")
        await c.settle()
        assert await c.a.directory.home(ROOM) == "node-b"

    run(monkeypatch, body)


def test_a_host_on_one_node_moderates_a_participant_on_the_other(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        host = a.join(ROOM, "host", Grant.HOST | Grant.PUBLISH | Grant.SUBSCRIBE)
        await c.settle()
        bob = b.join(ROOM, "bob")
        b.service.offer(bob, simulcast_offer(), 0.0, names={"1": "camera"})
        await c.settle()
        moderation = Moderation(a.service)
        video = next(
            m["track"]["id"]
            for m in a.messages("host", "track_published")
            if m["track"]["kind"] == "video"
        )
        moderation.request_mute(host, video)
        await c.settle()
        assert b.messages("bob", "mute_requested")[-1]["track"] == video
        moderation.mute_chat(host, bob.id, True)
        await c.settle()
        assert bob.chat_muted
        moderation.remove(host, bob.id, 60, now=0.0)
        await c.settle()
        assert bob.state is ParticipantState.LEFT
        assert a.messages("host", "participant_left")[-1]["participant"] == bob.id
        assert b.service.bans.banned(ROOM, "bob", 0.0)

    run(monkeypatch, body)


async def alice_on_a_bob_on_b(c: Cluster) -> Participant:
    """Alice joins the room on node A, Bob on node B, and B has seen both nodes alive."""
    alice = c.a.shard.join(ROOM, "alice")
    await c.settle()
    c.b.shard.join(ROOM, "bob")
    await c.settle()
    await c.b.bus.peers_changed(await c.b.directory.nodes())
    return alice


def test_a_node_whose_lease_lapsed_leaves_the_rooms_of_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        b = c.b.shard
        alice = await alice_on_a_bob_on_b(c)
        assert alice.id in b.service.rooms[ROOM].remote
        # Node A is killed: its lease is not renewed and lapses.
        c.clock.t += LEASE_TTL_S + 0.1
        await c.b.directory.renew(c.b.registry.node)
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id not in b.service.rooms[ROOM].remote
        assert b.messages("bob", "participant_left")[-1]["participant"] == alice.id
        # The room's home was A's: B, which still has the room, takes it.
        assert await c.b.directory.home(ROOM) == "node-a"
        await c.settle()
        assert await c.b.directory.home(ROOM) == "node-b"
        assert c.b.registry.homes == {ROOM}

    run(monkeypatch, body)


def test_a_node_restarted_within_its_lease_leaves_the_rooms_of_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker the supervisor restarts registers its member id again before its lease
    lapses: the new incarnation tells the others its participants are gone."""

    async def body(c: Cluster) -> None:
        b = c.b.shard
        alice = await alice_on_a_bob_on_b(c)
        assert c.a.registry.node.incarnation  # every registry draws one
        await c.a.directory.renew(c.a.registry.node)  # renewals of one process: no change
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id in b.service.rooms[ROOM].remote
        restarted = dataclasses.replace(c.a.registry.node, incarnation="f" * 16)
        await c.a.directory.register(restarted)
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id not in b.service.rooms[ROOM].remote
        assert b.messages("bob", "participant_left")[-1]["participant"] == alice.id

    run(monkeypatch, body)


def test_malformed_and_own_bus_messages_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(c: Cluster) -> None:
        b = c.b.shard
        b.join(ROOM, "bob")
        await c.settle()
        received = c.b.bus.received
        dropped = c.b.bus.dropped
        for message in (
            {"origin": "node-x"},  # no event
            {"origin": 5, "event": {"type": "shard_opened"}},  # origin not a node id
            {"event": {"type": "shard_opened"}},
            {"origin": "", "event": {"type": "shard_opened"}},
        ):
            await c.a.directory.publish(ROOM, message)
        assert c.b.bus.dropped == dropped + 4
        await c.a.directory.publish(ROOM, {"origin": "node-b", "event": {"type": "chat"}})
        assert c.b.bus.received == received  # its own id: skipped
        refused = b.service.bus_refused
        await c.a.directory.publish(ROOM, {"origin": "node-x", "event": {"type": "nonsense"}})
        assert b.service.bus_refused == refused + 1

    run(monkeypatch, body)


def test_the_origin_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(c: Cluster) -> None:
        c.b.shard.join(ROOM, "bob")
        await c.settle()
        for i in range(MAX_NODES + 5):
            c.b.bus._received(ROOM, {"origin": f"n{i}", "event": {"type": "nonsense"}})
        assert len(c.b.bus.origins) == MAX_NODES

    run(monkeypatch, body)


def test_after_the_directory_came_back_absent_nodes_get_a_lease_s_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        b = c.b.shard
        alice = await alice_on_a_bob_on_b(c)
        # The store restarted and forgot every lease; B registered again first.
        c.hub.nodes.clear()
        c.b.registry.reconnects += 1
        await c.b.directory.register(c.b.registry.node)
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id in b.service.rooms[ROOM].remote  # A is not taken for dead yet
        c.clock.t += LEASE_TTL_S / 2
        await c.a.directory.register(c.a.registry.node)  # A renews within the grace
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        c.clock.t += LEASE_TTL_S
        await c.a.directory.register(c.a.registry.node)
        await c.b.directory.register(c.b.registry.node)
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id in b.service.rooms[ROOM].remote
        # A node that never comes back is taken for dead once the grace is over.
        c.clock.t += LEASE_TTL_S + 0.1
        await c.b.directory.register(c.b.registry.node)
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id not in b.service.rooms[ROOM].remote

    run(monkeypatch, body)


def test_a_resync_recovers_joins_and_leaves_lost_while_the_bus_was_away(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        alice = a.join(ROOM, "alice")
        a.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
        await c.settle()
        b.join(ROOM, "bob")
        await c.settle()
        assert alice.id in b.service.rooms[ROOM].remote
        assert len(c.b.tracks.standins) == 2
        # B's bus is away: Alice leaves and Carol joins on A, and B hears neither.
        await c.b.directory.unsubscribe(ROOM)
        a.service.leave(alice, now=0.0)
        carol = a.join(ROOM, "carol")
        await c.settle()
        assert alice.id in b.service.rooms[ROOM].remote
        assert carol.id not in b.service.rooms[ROOM].remote
        # The bus is back: B asks again, A answers with its state and roster.
        c.b.bus.resync()
        await c.settle()
        assert set(b.service.rooms[ROOM].remote) == {carol.id}
        assert not c.b.tracks.standins and not b.service.rooms[ROOM].publications
        assert b.messages("bob", "participant_left")[-1]["participant"] == alice.id
        assert await c.a.directory.home(ROOM) == "node-a"

    run(monkeypatch, body)


def test_the_room_bus_metrics_count_without_naming_rooms_or_nodes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        c.a.shard.join(ROOM, "alice")
        await c.settle()
        c.b.shard.join(ROOM, "bob")
        await c.settle()
        registry = CollectorRegistry()
        registry.register(ClusterCollector(c.b.registry, room_bus=lambda: c.b.bus))
        text = generate_latest(registry).decode()
        assert registry.get_sample_value("sfu_cluster_rooms_spanned") == 1.0
        sent = registry.get_sample_value("sfu_cluster_room_events_total", {"event": "published"})
        received = registry.get_sample_value("sfu_cluster_room_events_total", {"event": "received"})
        assert sent == c.b.bus.sent >= 2 and received == c.b.bus.received >= 2
        assert registry.get_sample_value("sfu_cluster_room_home_failures_total") == 0.0
        assert ROOM not in text and "node-" not in text and "alice" not in text

    run(monkeypatch, body)


def test_a_policy_changed_on_one_node_holds_on_every_node(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        # An admin on A locks a room nobody is in yet, anywhere: B takes it all the same.
        old, new = a.service.policies.update(ROOM, {"locked": True, "max_participants": 7})
        a.service.policy_changed(ROOM, old, new)
        await c.settle()
        assert b.service.policies.get(ROOM) == new
        with pytest.raises(RoomError) as refused:
            b.join(ROOM, "bob")
        assert refused.value.code == "room_locked"
        # Unlocked on A (back to the defaults) while Bob waits to join on B: he may, and the
        # meeting on B hears of the change.
        old, new = a.service.policies.reset(ROOM)
        a.service.policy_changed(ROOM, old, new)
        await c.settle()
        assert not b.service.policies.has_own(ROOM)
        bob = b.join(ROOM, "bob")
        old, new = a.service.policies.update(ROOM, {"max_participants": 9})
        a.service.policy_changed(ROOM, old, new)
        await c.settle()
        assert b.messages("bob", "policy")[-1]["policy"]["max_participants"] == 9
        assert bob.state is ParticipantState.JOINED
        # A forged policy with a ruinous scrypt cost is refused and counted.
        refused_before = b.service.bus_refused
        forged = policy_to_wire(RoomPolicy(password=PasswordHash(b"s" * 16, b"d" * 32)))
        forged["password"]["n"] = 2**30
        await c.a.directory.publish(
            CLUSTER_CHANNEL,
            {"origin": "node-x", "room": ROOM, "event": {"type": "policy", "policy": forged}},
        )
        assert b.service.bus_refused == refused_before + 1
        assert b.service.policies.get(ROOM).password is None

    run(monkeypatch, body)


def test_policies_round_trip_through_the_wire() -> None:
    policy = RoomPolicy(
        waiting_room=False,
        locked=True,
        max_participants=3,
        e2ee_required=True,
        password=PasswordHash(b"s" * 16, b"d" * 32),
    )
    assert policy_from_wire(json.loads(json.dumps(policy_to_wire(policy)))) == policy
    for bad in ({}, {"waiting_room": 1}, [], {**policy_to_wire(policy), "max_participants": 0}):
        with pytest.raises(ValueError):
            policy_from_wire(bad)


def test_a_node_cut_off_and_back_is_seen_again_by_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        alice = a.join(ROOM, "alice")
        a.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
        await c.settle()
        bob = b.join(ROOM, "bob")
        await c.settle()
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        # A is cut off from the directory longer than its lease: B takes it for dead.
        c.clock.t += LEASE_TTL_S + 0.1
        await c.b.directory.renew(c.b.registry.node)
        await c.b.bus.peers_changed(await c.b.directory.nodes())
        assert alice.id not in b.service.rooms[ROOM].remote
        # A is back (its bus subscribed again): B sees Alice and her tracks again, unasked.
        await c.a.directory.register(c.a.registry.node)
        c.a.bus.resync()
        await c.settle()
        assert alice.id in b.service.rooms[ROOM].remote
        assert len(c.b.tracks.standins) == 2
        assert bob.id in a.service.rooms[ROOM].remote

    run(monkeypatch, body)


def test_a_shard_opened_for_a_viewer_hears_the_room_from_the_other_node(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WHEP viewer reaching node B, where the room is not open yet, opens a shard there
    (``open_shard``): B listens to the room's channel, so node A's participants and tracks
    arrive; forgotten again, B stops listening."""

    async def body(c: Cluster) -> None:
        a, b = c.a.shard, c.b.shard
        alice = a.join(ROOM, "alice")
        a.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
        await c.settle()
        room = b.service.open_shard(ROOM)
        assert room is not None
        await c.settle()
        assert [d["identity"] for d in room.remote.values()] == ["alice"]
        assert sorted(p.kind for p in room.publications.values()) == ["audio", "video"]
        b.service.close_empty_shard(room)
        await c.settle()
        assert ROOM not in b.service.rooms
        bob = a.join(ROOM, "bob")  # later events of the room no longer reach B
        await c.settle()
        assert ROOM not in b.service.rooms and bob.id not in room.remote

    run(monkeypatch, body)


def test_stop_is_bounded_when_a_redis_call_swallows_the_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Redis client that swallows the CancelledError of an operation in flight (redis-py
    does in some paths) must not hold a node's shutdown: stop returns within its bound, and
    the task ends once that operation returns instead of going back to its queue."""
    monkeypatch.setattr("sfu.cluster.room_bus.STOP_TIMEOUT_S", 0.05)

    async def body(c: Cluster) -> None:
        release = asyncio.Event()
        calls = 0

        async def stubborn_publish(channel: str, message: object) -> bool:
            nonlocal calls
            calls += 1
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    continue  # swallowed, as the library does
            return True

        monkeypatch.setattr(c.a.directory, "publish", stubborn_publish)
        task = c.a.bus._task
        assert task is not None
        c.a.bus.publish(ROOM, {"type": "chat"})
        c.a.bus.publish(ROOM, {"type": "chat"})
        for _ in range(10):
            await asyncio.sleep(0)
        assert calls == 1  # the first operation is in flight
        await asyncio.wait_for(c.a.bus.stop(), 1.0)
        assert not task.done()  # the cancellation was swallowed
        release.set()
        await asyncio.wait_for(task, 1.0)  # it ends after that operation, not the next
        assert calls == 1

    run(monkeypatch, body)
