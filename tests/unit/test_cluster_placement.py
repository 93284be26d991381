"""Placement across a cluster's nodes: stay unless full or draining, region first, the lighter
of two, bursts spread before the next renewal, drains move each room to one live node."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest

from sfu.cluster.directory import DirectoryUnavailable, LocalDirectory, NodeInfo
from sfu.cluster.placement import (
    FALLBACK_NODES,
    LOOKUP_RESULTS,
    MOVED_KINDS,
    PLACED_WEIGHT,
    LoadMeter,
    NodePlacement,
    choose_node,
    choose_node_for_room,
    signaling_url,
)
from sfu.cluster.registry import NodeRegistry
from sfu.signaling.protocol import Join, ProtocolError, parse_client_message


def node(name: str, load: float = 0.0, *, region: str = "eu", **kw: object) -> NodeInfo:
    return NodeInfo(name, region, load=load, url=f"https://{name}.example", **kw)  # type: ignore[arg-type]


@dataclass
class Cluster:
    """What a registry would show: this node and the live nodes, renewed by hand."""

    me: NodeInfo
    others: list[NodeInfo]
    renewals: int = 0
    #: The other nodes each room this node holds has participants on (as the room bus
    #: shows them); a room not named here is not held here.
    rooms: dict[str, set[str]] = field(default_factory=dict)
    placement: NodePlacement = field(init=False)

    def __post_init__(self) -> None:
        self.placement = NodePlacement(
            local=lambda: self.me,
            nodes=lambda: [self.me, *self.others],
            generation=lambda: self.renewals,
            max_load=0.8,
            room_nodes=lambda room: self.rooms.get(room),
            rng=random.Random(7),
        )

    def renew(self) -> None:
        self.renewals += 1


def test_a_node_under_its_limit_keeps_the_join() -> None:
    cluster = Cluster(node("a", 0.5), [node("b", 0.0)])
    assert cluster.placement.redirect(region=None) is None
    assert cluster.placement.redirects == {"full": 0, "draining": 0}


def test_a_full_node_sends_the_join_to_a_lighter_one() -> None:
    cluster = Cluster(node("a", 0.85), [node("b", 0.9), node("c", 0.2)])
    # b is full too: only c fits.
    assert cluster.placement.redirect(region=None) == "https://c.example"
    assert cluster.placement.redirects["full"] == 1


def test_everyone_full_keeps_the_join_here() -> None:
    cluster = Cluster(node("a", 0.95), [node("b", 0.9), node("c", 0.85)])
    assert cluster.placement.redirect(region=None) is None


def test_a_draining_node_sends_every_join_on() -> None:
    cluster = Cluster(node("a", 0.0, draining=True), [node("b", 0.5)])
    assert cluster.placement.redirect(region=None) == "https://b.example"
    assert cluster.placement.redirects["draining"] == 1


def test_nodes_without_a_public_url_or_draining_never_take_a_join() -> None:
    hidden = NodeInfo("b", "eu", load=0.0)  # no url
    cluster = Cluster(node("a", 0.9), [hidden, node("c", 0.1, draining=True)])
    assert cluster.placement.redirect(region=None) is None


def test_the_wanted_region_comes_first_then_any() -> None:
    others = [node("us1", 0.7, region="us"), node("eu1", 0.0), node("us2", 0.6, region="us")]
    cluster = Cluster(node("a", 0.9), others)
    for _ in range(20):
        cluster.renew()
        assert cluster.placement.redirect(region="us") in {
            "https://us1.example",
            "https://us2.example",
        }
    # No node of the region fits: any other region's does.
    assert choose_node(others, region="ap", rng=random.Random(1), below=0.8) is not None
    # The node's own region when the client gives none.
    cluster.renew()
    assert cluster.placement.redirect(region=None) == "https://eu1.example"


def test_two_choices_prefer_the_lighter_node() -> None:
    nodes = [node(f"n{i}", load=i / 10) for i in range(5)]
    rng = random.Random(3)
    picks = Counter(choose_node(nodes, region="eu", rng=rng) for _ in range(2000))
    counts = [picks[n] for n in nodes]
    # The heaviest node is never the lighter of two; the lightest is picked most.
    assert counts[-1] == 0
    assert counts == sorted(counts, reverse=True)


def test_a_burst_of_joins_spreads_before_the_next_renewal() -> None:
    # Both others look idle: without counting placements, all 40 would go to whichever
    # two-choice draw favours; with PLACED_WEIGHT each placement makes its node heavier.
    cluster = Cluster(node("a", 0.95), [node("b", 0.0), node("c", 0.0)])
    targets = Counter(cluster.placement.redirect(region=None) for _ in range(40))
    assert abs(targets["https://b.example"] - targets["https://c.example"]) <= 2
    # Until b and c pass the limit on placements alone:
    burst = int(0.8 / PLACED_WEIGHT)
    for _ in range(2 * burst):
        cluster.placement.redirect(region=None)
    assert cluster.placement.redirect(region=None) is None
    # A renewal brings fresh loads and forgets the placements.
    cluster.renew()
    assert cluster.placement.redirect(region=None) is not None


def test_own_placements_count_until_the_renewal() -> None:
    cluster = Cluster(node("a", 0.8 - 3.5 * PLACED_WEIGHT), [node("b", 0.0)])
    kept = [cluster.placement.redirect(region=None) for _ in range(5)]
    assert kept[:4] == [None] * 4 and kept[4] == "https://b.example"


def test_a_drain_moves_a_room_to_a_live_node_even_a_full_one() -> None:
    cluster = Cluster(node("a", 0.1, draining=True), [node("b", 0.95)])
    assert cluster.placement.move_target() == "https://b.example"
    cluster.others = [node("b", 0.2, draining=True)]
    assert cluster.placement.move_target() is None


def test_a_join_goes_where_its_room_is_already_if_that_node_fits() -> None:
    """A room on fewer nodes needs fewer relays: a full node sends a join to a node its room
    is on already, even a heavier one, as long as it fits; else as before."""
    cluster = Cluster(
        node("a", 0.9), [node("b", 0.7), node("c", 0.0), node("d", 0.1)], rooms={"r": {"b"}}
    )
    for _ in range(20):
        cluster.renew()
        assert cluster.placement.redirect(region=None, room="r") == "https://b.example"
        # Another room, or none named: the lighter of two as before (never the heaviest).
        assert cluster.placement.redirect(region=None, room="other") != "https://b.example"
    # The room's node is full: the join goes elsewhere, by load.
    cluster.others[0] = node("b", 0.85)
    cluster.renew()
    assert cluster.placement.redirect(region=None, room="r") in {
        "https://c.example",
        "https://d.example",
    }
    # The wanted region comes before the room's node.
    cluster.others = [node("b", 0.2), node("u", 0.5, region="us")]
    cluster.renew()
    assert cluster.placement.redirect(region="us", room="r") == "https://u.example"


def test_a_drain_moves_a_room_to_a_node_it_is_on_already() -> None:
    cluster = Cluster(
        node("a", 0.1, draining=True),
        [node("b", 0.9), node("c", 0.0), node("d", 0.0)],
        rooms={"r": {"b"}},
    )
    for _ in range(10):
        cluster.renew()
        assert cluster.placement.move_target(room="r") == "https://b.example"
    assert {cluster.placement.move_target(room="s") for _ in range(20)} <= {
        "https://c.example",
        "https://d.example",
    }


def test_a_draining_node_sends_a_moved_rooms_newcomers_where_the_room_went() -> None:
    """A WHIP/WHEP client whose session a drain ended re-POSTs to the draining node: its 307
    names the node the room's participants were sent to, whatever the load or region hint
    says, so the room does not split over nodes."""
    cluster = Cluster(
        node("a", 0.1, draining=True),
        [node("b", 0.0), node("c", 0.0), node("d", 0.0), node("u", 0.0, region="us")],
        rooms={"r": set()},  # held here only: any node would do for the move
    )
    placement = cluster.placement
    target = placement.move_target(room="r")
    assert target is not None
    for _ in range(30):
        cluster.renew()  # fresh loads: the others look as idle as the target
        assert placement.move_target(room="r") == target  # asked again, the same
        assert placement.redirect(region=None, room="r") == target
        assert placement.redirect(region="us", room="r") == target
        assert placement.redirect(region=None, placed=True, room="r") == target
    assert placement.redirects["draining"] == 90
    # A room the drain did not move goes by region and load, as before.
    assert placement.redirect(region="us", room="elsewhere") == "https://u.example"
    # The target drains too (or its lease lapses): a new node is chosen and kept.
    cluster.others = [replace(n, draining=True) if n.url == target else n for n in cluster.others]
    cluster.renew()
    second = placement.redirect(region=None, room="r")
    assert second not in (None, target)
    assert placement.move_target(room="r") == second
    assert {placement.redirect(region=None, room="r") for _ in range(10)} == {second}


def test_a_moved_room_needs_no_directory_read() -> None:
    cluster = Cluster(node("a", 0.1, draining=True), [node("b", 0.0), node("c", 0.0)])
    directory = Directory({"r": {"c"}})
    placement = looking_up(cluster, directory)
    target = placement.move_target(room="r")

    async def run() -> None:
        # The room's last participant here has left: this node no longer holds it.
        assert await placement.place(region=None, room="r") == target
        assert directory.reads == []

    asyncio.run(run())


def test_moves_are_counted_by_kind() -> None:
    placement = Cluster(node("a", draining=True), [node("b")]).placement
    for kind in ("websocket", "whip", "whep", "whep", "other"):
        placement.count_move(kind)
    assert placement.moved == 5
    assert placement.moved_by == {"websocket": 1, "whip": 1, "whep": 2}
    assert tuple(placement.moved_by) == MOVED_KINDS


def test_fallbacks_are_other_nodes_region_first_lightest_first() -> None:
    others = [
        node("x", 0.1, region="us"),
        node("b", 0.5),
        node("c", 0.2),
        node("d", 0.1, draining=True),
        NodeInfo("e", "eu", load=0.0),  # no public URL
        node("f", 0.9),
    ]
    cluster = Cluster(node("a"), others)
    fallbacks = cluster.placement.fallbacks()
    assert len(fallbacks) == FALLBACK_NODES
    assert fallbacks == [
        "https://c.example/ws",
        "https://b.example/ws",
        "https://f.example/ws",
    ]


def test_a_sibling_worker_or_a_node_at_the_same_url_is_never_a_target() -> None:
    """A clustered node's workers are members with the node's public URL: sending a client
    to that URL again lands it where the supervisor puts it, so a full worker sends its
    joins, its drain's rooms and its fallbacks to other nodes only."""
    me = NodeInfo("a.w0", "eu", load=0.9, url="https://a.example")
    sibling = NodeInfo("a.w1", "eu", load=0.0, url="https://a.example")
    cluster = Cluster(me, [sibling, node("b", 0.5)])
    for _ in range(20):
        assert cluster.placement.redirect(region=None) == "https://b.example"
    assert cluster.placement.move_target(room="r") == "https://b.example"
    assert cluster.placement.fallbacks() == ["https://b.example/ws"]
    alone = Cluster(me, [sibling])
    assert alone.placement.redirect(region=None) is None  # full, but nowhere else to go
    assert alone.placement.fallbacks() == []


def test_the_workers_of_a_draining_node_send_a_room_to_one_node() -> None:
    """Each worker of a node that runs several chooses where its rooms go when the node
    drains; their views of the loads differ by a renewal, yet a room spread over them must
    go to one node: the choice is by the room's name, not by load or chance."""
    others = [node(n, load) for n, load in (("b.w0", 0.1), ("b.w1", 0.2), ("c.w0", 0.3))]
    rooms = [f"room-{i}" for i in range(40)]
    chosen: dict[str, set[str | None]] = {room: set() for room in rooms}
    for worker, seed in (("a.w0", 1), ("a.w1", 2), ("a.w2", 3)):
        me = NodeInfo(worker, "eu", draining=True, url="https://a.example")
        seen = [replace(n, load=n.load * seed) for n in others]  # loads a renewal apart
        cluster = Cluster(me, [*seen, NodeInfo("a.w9", "eu", url="https://a.example")])
        cluster.placement.rng = random.Random(seed)
        for room in rooms:
            chosen[room].add(cluster.placement.move_target(room=room))
    assert all(len(targets) == 1 for targets in chosen.values()), chosen
    # Spread over the other nodes (never the draining node's own URL), not all to one.
    assert {t for targets in chosen.values() for t in targets} == {
        "https://b.w0.example",
        "https://b.w1.example",
        "https://c.w0.example",
    }
    # A room already on a node goes there, as before.
    me = NodeInfo("a.w0", "eu", draining=True, url="https://a.example")
    held = Cluster(me, others, rooms={"r": {"c.w0"}})
    assert held.placement.move_target(room="r") == "https://c.w0.example"
    assert choose_node_for_room([], region="eu", room="r") is None


def test_signaling_url() -> None:
    assert signaling_url("https://a.example/") == "https://a.example/ws"
    assert signaling_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/ws"


def test_load_is_cpu_share_or_seats_whichever_is_higher() -> None:
    meter = LoadMeter(capacity=100)
    assert meter.sample(now=0.0, cpu_s=0.0, sessions=10) == pytest.approx(0.10)
    assert meter.sample(now=1.0, cpu_s=0.5, sessions=10) == pytest.approx(0.5)  # 50% of a core
    assert meter.sample(now=2.0, cpu_s=0.6, sessions=30) == pytest.approx(0.3)
    assert meter.sample(now=3.0, cpu_s=3.0, sessions=0) == 1.0  # threads: capped at one core
    assert meter.sample(now=4.0, cpu_s=3.0, sessions=500) == 1.0
    assert meter.sample(now=4.0, cpu_s=3.0, sessions=0) == 0.0  # no time passed: CPU as before


def test_a_node_entry_carries_its_public_url() -> None:
    entry = replace(node("a", 0.25), draining=True)
    assert NodeInfo.from_json(entry.to_json()) == entry
    assert NodeInfo.from_json('{"node_id": "old"}').url == ""


def test_join_carries_a_region_hint_and_whether_it_was_placed() -> None:
    join = parse_client_message(
        '{"type": "join", "protocol": 1, "room": "r", "token": "t", "region": "eu-west",'
        ' "placed": true}'
    )
    assert isinstance(join, Join) and join.region == "eu-west" and join.placed
    plain = parse_client_message('{"type": "join", "protocol": 1, "room": "r", "token": "t"}')
    assert isinstance(plain, Join) and plain.region is None and not plain.placed
    for bad in ('"region": ""', '"region": "a b"', '"region": 5', '"placed": "yes"'):
        with pytest.raises(ProtocolError) as info:
            parse_client_message(
                '{"type": "join", "protocol": 1, "room": "r", "token": "t", ' + bad + "}"
            )
        assert info.value.code == "bad_message"


def test_a_placed_join_stays_unless_this_node_drains() -> None:
    cluster = Cluster(node("a", 0.95), [node("b", 0.1)])
    assert cluster.placement.redirect(region=None, placed=True) is None  # full, but placed
    cluster.me = replace(cluster.me, draining=True)
    # The other node sent it before it heard of the drain: on it goes, to a live node.
    assert cluster.placement.redirect(region=None, placed=True) == "https://b.example"


def test_a_drain_is_announced_at_once_not_at_the_next_renewal() -> None:
    directory = LocalDirectory(lambda: 0.0)

    async def run() -> None:
        registry = NodeRegistry(directory, NodeInfo("a", "eu", url="https://a.example"))
        await registry.start()
        assert not (await directory.nodes())[0].draining
        registry.set_draining()
        await asyncio.sleep(0)  # the announcement runs, well before RENEW_INTERVAL_S
        await asyncio.sleep(0)
        assert (await directory.nodes())[0].draining
        await registry.stop()

    asyncio.run(run())


class Directory:
    """What the cluster directory says about rooms' spans (node ids), and how it answers."""

    def __init__(self, spans: dict[str, set[str]]) -> None:
        self.spans = spans
        self.reads: list[str] = []
        self.fail: BaseException | None = None
        self.stall = False

    async def room_nodes(self, room: str) -> set[str]:
        self.reads.append(room)
        if self.stall:
            await asyncio.Event().wait()  # never answers
        if self.fail is not None:
            raise self.fail
        return set(self.spans.get(room, set()))


def looking_up(cluster: Cluster, directory: Directory) -> NodePlacement:
    cluster.placement.lookup = directory.room_nodes
    cluster.placement.lookup_timeout_s = 0.05
    return cluster.placement


def test_a_full_node_without_the_room_sends_its_joins_where_the_directory_says_it_is() -> None:
    """The room is on b only, a full node a holds nobody of it: every join of it goes to b,
    though c is lighter (each placement makes b heavier still), one read each."""
    cluster = Cluster(node("a", 0.9), [node("b", 0.5), node("c", 0.0)])
    directory = Directory({"r": {"b"}})
    placement = looking_up(cluster, directory)

    async def run() -> None:
        for _ in range(20):
            assert await placement.place(region=None, room="r") == "https://b.example"
        # A room on no node: by load (c, the lighter, mostly; b never once it is heavier).
        assert await placement.place(region=None, room="new") == "https://c.example"

    asyncio.run(run())
    assert directory.reads == ["r"] * 20 + ["new"]
    assert placement.lookups == {"found": 20, "absent": 1, "error": 0, "timeout": 0}
    assert placement.redirects["full"] == 21


def test_the_directory_is_read_only_for_joins_sent_on_of_rooms_not_held_here() -> None:
    cluster = Cluster(node("a", 0.1), [node("b", 0.5), node("c", 0.0)], rooms={"held": {"b"}})
    directory = Directory({"r": {"c"}, "held": {"c"}})
    placement = looking_up(cluster, directory)

    async def run() -> None:
        # Kept here (not full): nothing to read.
        assert await placement.place(region=None, room="r") is None
        cluster.me = node("a", 0.9)
        cluster.renew()
        # Placed here by another node: stays, nothing read.
        assert await placement.place(region=None, placed=True, room="r") is None
        # A room held here: this node's own view (b), not the directory's (c).
        assert await placement.place(region=None, room="held") == "https://b.example"
        assert directory.reads == []
        # Draining: even a placed join goes on, to where the room is.
        cluster.me = replace(cluster.me, draining=True)
        assert await placement.place(region=None, placed=True, room="r") == "https://c.example"
        assert directory.reads == ["r"]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("trouble", "result"),
    [("error", "error"), ("timeout", "timeout"), ("unreachable", "error")],
)
def test_a_failed_or_slow_read_places_by_region_and_load_and_is_counted(
    trouble: str, result: str
) -> None:
    cluster = Cluster(node("a", 0.9), [node("b", 0.7), node("c", 0.0)])
    directory = Directory({"r": {"b"}})
    placement = looking_up(cluster, directory)
    if trouble == "timeout":
        directory.stall = True
    elif trouble == "error":
        directory.fail = DirectoryUnavailable("connection reset")
    else:
        directory.fail = DirectoryUnavailable("the last renewal found Redis away")

    async def run() -> list[str | None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        targets = [await placement.place(region=None, room="r") for _ in range(3)]
        # Each read waited at most the lookup timeout (and a failure not at all).
        assert loop.time() - started < 3 * placement.lookup_timeout_s + 0.5
        return targets

    targets = asyncio.run(run())
    # By load alone: the lighter of b and c, c (b, at 0.7, is never the lighter of two).
    assert targets == ["https://c.example"] * 3
    assert placement.lookups == {r: (3 if r == result else 0) for r in LOOKUP_RESULTS}
