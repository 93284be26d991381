"""The cluster directory's in-process implementation, the node registry on it, the bus
bounds, and ``[cluster]`` configuration (socket-free, fake clocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.cluster.directory import (
    BUS_BURST,
    BUS_RATE_PER_S,
    LEASE_TTL_S,
    MAX_BUS_MESSAGE_BYTES,
    ROOM_LEASE_TTL_S,
    ROOM_REFRESH_S,
    BusError,
    DirectoryUnavailable,
    LocalDirectory,
    LocalHub,
    NodeInfo,
    RateLimit,
    decode_bus_message,
    encode_bus_message,
)
from sfu.cluster.registry import (
    ORPHAN_CLAIMS_PER_RENEWAL,
    ORPHAN_GRACE_S,
    NodeRegistry,
    node_from_config,
)
from sfu.config import ClusterConfig, ConfigError, parse_config


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_leases_lapse_after_the_ttl() -> None:
    clock = FakeClock()
    directory = LocalDirectory(clock)

    async def run() -> None:
        await directory.register(NodeInfo("a", "eu"))
        await directory.register(NodeInfo("b", "us"))
        assert {n.node_id for n in await directory.nodes()} == {"a", "b"}
        clock.t += LEASE_TTL_S - 0.1
        assert await directory.renew(NodeInfo("b", "us"))
        clock.t += 0.2
        assert {n.node_id for n in await directory.nodes()} == {"b"}
        assert not await directory.renew(NodeInfo("a", "eu"))  # lapsed: registered again
        assert {n.node_id for n in await directory.nodes()} == {"a", "b"}
        await directory.deregister("a")
        assert {n.node_id for n in await directory.nodes()} == {"b"}

    asyncio.run(run())


def test_room_home_is_released_only_by_its_owner() -> None:
    clock = FakeClock()
    directory = LocalDirectory(clock)

    async def run() -> None:
        await directory.register(NodeInfo("a", "eu"))
        await directory.register(NodeInfo("b", "eu"))
        assert await directory.claim_home("r", "a") == "a"
        assert await directory.claim_home("r", "b") == "a"
        assert not await directory.release_home("r", "b")
        assert await directory.home("r") == "a"
        assert await directory.release_home("r", "a")
        assert await directory.home("r") is None
        # A home whose owner's lease lapsed is taken over by the next claim.
        assert await directory.claim_home("r", "a") == "a"
        clock.t += LEASE_TTL_S + 1
        await directory.register(NodeInfo("b", "eu"))
        assert await directory.claim_home("r", "b") == "b"
        with pytest.raises(BusError):
            await directory.claim_home("", "a")

    asyncio.run(run())


def test_bus_delivers_and_bounds() -> None:
    clock = FakeClock()
    directory = LocalDirectory(clock)
    got: list[tuple[str, Mapping[str, Any]]] = []

    async def run() -> None:
        await directory.subscribe("r", lambda room, msg: got.append((room, msg)))
        assert await directory.publish("r", {"type": "mute"})
        assert got == [("r", {"type": "mute"})]
        with pytest.raises(BusError):
            await directory.publish("r", {"x": "y" * MAX_BUS_MESSAGE_BYTES})
        with pytest.raises(BusError):
            await directory.publish("r", {"x": float("nan")})
        sent = [await directory.publish("r", {"n": i}) for i in range(BUS_BURST + 10)]
        assert sent.count(False) == 11 and directory.bus_dropped == 11
        clock.t += 1.0
        assert await directory.publish("r", {"n": "later"})
        await directory.unsubscribe("r")
        got.clear()
        assert await directory.publish("r", {"n": "unheard"})
        assert got == []

    asyncio.run(run())


def test_rate_limit_refills_at_its_rate() -> None:
    limit = RateLimit(BUS_RATE_PER_S, 2, now=0.0)
    assert limit.take(now=0.0) and limit.take(now=0.0)
    assert not limit.take(now=0.0)
    assert limit.take(now=1.0 / BUS_RATE_PER_S)


@given(st.binary(max_size=64) | st.text(max_size=64))
def test_bus_decoder_never_raises(data: bytes | str) -> None:
    message = decode_bus_message(data)
    assert message is None or isinstance(message, dict)


def test_bus_codec_round_trips_and_refuses_oversize() -> None:
    assert decode_bus_message(encode_bus_message({"a": [1, "b"]})) == {"a": [1, "b"]}
    assert decode_bus_message(b"[1]") is None
    assert decode_bus_message(b"{" + b" " * MAX_BUS_MESSAGE_BYTES + b"}") is None


def test_node_info_round_trips() -> None:
    node = NodeInfo("a", "eu", "10.0.0.1:4433", 0.25, True)
    assert NodeInfo.from_json(node.to_json()) == node
    with pytest.raises(ValueError):
        NodeInfo.from_json("[]")


def test_registry_renews_and_claims_again_after_a_lapse() -> None:
    clock = FakeClock()
    directory = LocalDirectory(clock)

    async def run() -> None:
        registry = NodeRegistry(directory, NodeInfo("a", "eu"), clock=clock, load=lambda: 2.0)
        await registry._renew_once(first=True)
        assert registry.connected and registry.healthy
        assert registry.node.load == 1.0  # clamped
        assert await registry.claim_home("r") == "a"
        # The directory forgot everything (a Redis restarted without persistence).
        directory._nodes.clear()
        directory._homes.clear()
        await registry._renew_once(first=False)
        assert registry.lease_lapses == 1
        assert await directory.home("r") == "a"
        assert [n.node_id for n in registry.peers] == ["a"]
        clock.t += LEASE_TTL_S
        assert not registry.healthy
        registry.set_draining()
        await registry._renew_once(first=False)
        assert (await directory.nodes())[0].draining
        assert registry.status() == {
            "node_id": "a",
            "region": "eu",
            "directory": "up",
            "lease": "live",
            "nodes_alive": 1,
            "draining": True,
        }
        await registry.stop()
        assert await directory.nodes() == [] and await directory.home("r") is None

    asyncio.run(run())


async def past_grace(clock: FakeClock, *registries: NodeRegistry) -> None:
    """Renew every registry each second until the grace after their (re)registration is
    over (the leases stay live), ending with one renewal past it."""
    for _ in range(int(ORPHAN_GRACE_S) + 1):
        clock.t += 1.0
        for registry in registries:
            await registry._renew_once(first=False)


def test_a_room_held_on_several_nodes_keeps_a_home_when_its_home_node_lets_it_go() -> None:
    """The race a Redis restart allowed: a join on C opened the room there and C claimed the
    emptied home before A renewed; A (still holding the room) let it go, then C's participant
    left and C released it. A claims it again within a renewal, since it holds the room."""
    clock = FakeClock()
    hub = LocalHub()

    def node(name: str) -> NodeRegistry:
        return NodeRegistry(LocalDirectory(clock, hub=hub), NodeInfo(name, "eu"), clock=clock)

    async def run() -> None:
        a, c = node("a"), node("c")
        await a._renew_once(first=True)
        await c._renew_once(first=True)
        assert await a.claim_home("r") == "a"
        hub.nodes.clear()
        hub.homes.clear()  # Redis restarted without persistence
        await c._renew_once(first=False)
        assert await c.claim_home("r") == "c"  # a join on C, before A's renewal
        await a._renew_once(first=False)
        assert a.homes == set() and a.elsewhere == {"r"}
        await c.release_home("r")  # C's last participant left
        assert hub.homes.get("r") is None
        await a._renew_once(first=False)  # within the grace after the reconnection: not yet
        assert hub.homes.get("r") is None and a.elsewhere == {"r"}
        await past_grace(clock, a, c)
        assert hub.homes.get("r") == "a" and a.homes == {"r"} and a.elsewhere == set()
        # A room held here while another live node is its home stays that node's.
        assert await c.claim_home("r") == "a"
        await past_grace(clock, a, c)
        assert hub.homes.get("r") == "a" and c.elsewhere == {"r"}
        await c.release_home("r")  # C let it go: nothing left to claim
        assert c.elsewhere == set() and hub.homes.get("r") == "a"

    asyncio.run(run())


def test_a_room_closed_while_its_claim_was_on_its_way_is_not_kept() -> None:
    """The renewal's claim and the room bus's close interleave (both await the directory):
    a home the claim took for a room that closed meanwhile is released at once."""
    clock = FakeClock()
    hub = LocalHub()

    class Racing(LocalDirectory):
        """Closes the room here (as the bus does) while a claim is on its way."""

        registry: NodeRegistry | None = None

        async def claim_home(self, room: str, node_id: str) -> str:
            owner = await super().claim_home(room, node_id)
            if self.registry is not None and room in self.registry.elsewhere:
                registry, self.registry = self.registry, None
                await registry.release_home(room)
            return owner

    racing = Racing(clock, hub=hub)
    a = NodeRegistry(racing, NodeInfo("a", "eu"), clock=clock)
    b = NodeRegistry(LocalDirectory(clock, hub=hub), NodeInfo("b", "eu"), clock=clock)

    async def run() -> None:
        await a._renew_once(first=True)
        await b._renew_once(first=True)
        assert await b.claim_home("r") == "b"
        assert await a.claim_home("r") == "b"
        await past_grace(clock, a, b)
        await b.release_home("r")  # b lets it go; a would take it on its next renewal
        racing.registry = a  # ... but the room closes on a while that claim is on its way
        clock.t += 1.0
        await a._renew_once(first=False)
        assert a.homes == set() and a.elsewhere == set()
        assert hub.homes.get("r") is None

    asyncio.run(run())


def test_after_a_redis_restart_the_home_node_gets_its_room_back_first() -> None:
    """B holds A's room and renews first after the restart: it waits out the grace, so A
    claims its home again rather than whichever holder came back first."""
    clock = FakeClock()
    hub = LocalHub()
    a = NodeRegistry(LocalDirectory(clock, hub=hub), NodeInfo("a", "eu"), clock=clock)
    b = NodeRegistry(LocalDirectory(clock, hub=hub), NodeInfo("b", "eu"), clock=clock)

    async def run() -> None:
        await a._renew_once(first=True)
        await b._renew_once(first=True)
        assert await a.claim_home("r") == "a"
        assert await b.claim_home("r") == "a"
        await past_grace(clock, a, b)
        hub.nodes.clear()
        hub.homes.clear()  # Redis restarted without persistence
        clock.t += 0.5
        await b._renew_once(first=False)
        assert hub.homes.get("r") is None  # B waits
        await a._renew_once(first=False)
        await past_grace(clock, b, a)
        assert hub.homes.get("r") == "a" and b.elsewhere == {"r"}

    asyncio.run(run())


def test_orphan_claims_are_bounded_per_renewal() -> None:
    clock = FakeClock()
    hub = LocalHub()
    a = NodeRegistry(LocalDirectory(clock, hub=hub), NodeInfo("a", "eu"), clock=clock)
    b = NodeRegistry(LocalDirectory(clock, hub=hub), NodeInfo("b", "eu"), clock=clock)
    rooms = [f"r{i}" for i in range(ORPHAN_CLAIMS_PER_RENEWAL + 5)]

    async def run() -> None:
        await a._renew_once(first=True)
        await b._renew_once(first=True)
        for room in rooms:
            assert await b.claim_home(room) == "b"
            assert await a.claim_home(room) == "b"
        await past_grace(clock, a, b)
        for room in rooms:
            await b.release_home(room)
        clock.t += 1.0
        await a._renew_once(first=False)
        assert len(a.homes) == ORPHAN_CLAIMS_PER_RENEWAL  # one turn's worth
        await a._renew_once(first=False)
        assert a.homes == set(rooms) and a.elsewhere == set()

    asyncio.run(run())


def test_cluster_config_defaults_and_node_id_from_host() -> None:
    config = parse_config({})
    assert config.cluster == ClusterConfig()
    node = node_from_config(config.cluster)
    assert node.node_id and node.region == "default"
    named = parse_config({"cluster": {"node_id": "sfu-1.eu", "region": "eu-west"}})
    assert node_from_config(named.cluster).node_id == "sfu-1.eu"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"redis_url": "http://redis:6379"}, "cluster.redis_url"),
        ({"node_id": "has space"}, "cluster.node_id"),
        ({"region": ""}, "cluster.region"),
        ({"node_id": "x" * 65}, "cluster.node_id"),
        ({"advertise_address": "nohost", "ca_file": "a", "cert_file": "b", "key_file": "c"},
         "cluster.advertise_address"),
        ({"advertise_address": "10.0.0.1:4433"}, "cluster.ca_file"),
        ({"link_port": 70000}, "cluster.link_port"),
        ({"public_url": "sfu-2.example.com"}, "cluster.public_url"),
        ({"public_url": "https://sfu-2.example.com/ws"}, "cluster.public_url"),
        ({"public_url": "https://user@sfu-2.example.com"}, "cluster.public_url"),
        ({"public_url": "http://:8080"}, "cluster.public_url"),
        ({"max_load": 0.0}, "cluster.max_load"),
        ({"max_load": 1.5}, "cluster.max_load"),
        ({"max_load": float("nan")}, "cluster.max_load"),
        ({"capacity_participants": 0}, "cluster.capacity_participants"),
        ({"whip_placement": "forward"}, "cluster.whip_placement"),
        ({"whip_placement": ""}, "cluster.whip_placement"),
    ],
)  # fmt: skip
def test_bad_cluster_values_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster": table})
    assert key in [path for path, _ in info.value.errors]


def test_public_url_reaches_the_lease() -> None:
    config = parse_config({"cluster": {"public_url": "https://sfu-2.example.com:8443/"}})
    assert node_from_config(config.cluster).url == "https://sfu-2.example.com:8443"
    assert parse_config({}).cluster.max_load == 0.8


def test_whip_placement_defaults_to_proxy_and_takes_redirect() -> None:
    assert parse_config({}).cluster.whip_placement == "proxy"
    config = parse_config({"cluster": {"whip_placement": "redirect"}})
    assert config.cluster.whip_placement == "redirect"


def test_cluster_env_override_is_checked() -> None:
    secret = {"SFU_AUTH_JWT_SECRET": "s" * 40}
    config = parse_config({}, {"SFU_CLUSTER_REDIS_URL": "redis://127.0.0.1:6379/0", **secret})
    assert config.cluster.redis_url == "redis://127.0.0.1:6379/0"
    with pytest.raises(ConfigError) as info:
        parse_config({}, {"SFU_CLUSTER_REDIS_URL": "tcp://x", **secret})
    assert info.value.errors[0][0] == "SFU_CLUSTER_REDIS_URL"


def test_a_cluster_needs_one_token_secret_even_on_loopback() -> None:
    """Joins move between nodes with their tokens: a clustered node without a configured
    secret (each would sign with its own random key) is refused, naming the key."""
    with pytest.raises(ConfigError) as info:
        parse_config({"cluster": {"redis_url": "redis://127.0.0.1:6379/0"}})
    assert [key for key, _ in info.value.errors] == ["auth.jwt_secret"]
    assert "cluster.redis_url" in info.value.errors[0][1]
    assert parse_config({}).auth.jwt_secret == ""  # one node on loopback still needs none


def test_a_room_span_holds_each_node_own_leased_entry() -> None:
    """Which nodes a room is on: each node's entry lapses ROOM_LEASE_TTL_S after its last
    write, a node removes only its own, and rooms nobody holds any more go."""
    clock = FakeClock()
    hub = LocalHub()
    a, b = LocalDirectory(clock, hub=hub), LocalDirectory(clock, hub=hub)

    async def run() -> None:
        await a.hold_rooms("a", ["r", "s"])
        await b.hold_rooms("b", ["r"])
        assert await a.room_nodes("r") == {"a", "b"} == await b.room_nodes("r")
        assert await b.room_nodes("s") == {"a"} and await b.room_nodes("t") == set()
        await b.leave_rooms("b", ["s"])  # not b's: nothing changes
        assert await a.room_nodes("s") == {"a"}
        clock.t += ROOM_LEASE_TTL_S - 1
        await a.hold_rooms("a", ["r"])  # refreshed: a's entry in r lives on, b's does not
        clock.t += 1.5
        assert await a.room_nodes("r") == {"a"} and await a.room_nodes("s") == set()
        await a.leave_rooms("a", ["r"])
        assert await a.room_nodes("r") == set()
        # A room whose holders all died is swept away, as Redis expires its key.
        clock.t += ROOM_LEASE_TTL_S
        await b.hold_rooms("b", ["u"])
        assert set(hub.spans) == {"u"}
        with pytest.raises(BusError):
            await a.hold_rooms("a", ["x" * 200])

    asyncio.run(run())


class Counting(LocalDirectory):
    """Counts span writes (one call each) and can fail them."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.writes: list[list[str]] = []
        self.fail = False

    async def hold_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
        if self.fail:
            raise DirectoryUnavailable("Redis is away")
        self.writes.append(list(rooms))
        await super().hold_rooms(node_id, rooms)


def test_the_registry_keeps_its_rooms_spans_written_and_removes_them() -> None:
    clock = FakeClock()
    hub = LocalHub()
    directory = Counting(clock, hub=hub)
    other = LocalDirectory(clock, hub=hub)
    a = NodeRegistry(directory, NodeInfo("a", "eu"), clock=clock)
    b = NodeRegistry(other, NodeInfo("b", "eu"), clock=clock)

    async def run() -> None:
        await a._renew_once(first=True)
        await b._renew_once(first=True)
        await a.claim_home("r")
        await b.claim_home("r")
        await a.claim_home("s")
        # Written when the room opens, once (a claim again later writes nothing).
        assert directory.writes == [["r"], ["s"]]
        await a.claim_home("r")
        assert len(directory.writes) == 2
        assert a.held == {"r", "s"}
        assert await b.room_nodes("r") == {"a"}  # the others, not itself
        assert await a.room_nodes("s") == set()
        assert await a.room_nodes("x" * 200) == set()  # no room by that name anywhere
        # Refreshed every ROOM_REFRESH_S, all the rooms due in one call.
        directory.writes.clear()
        for _ in range(int(ROOM_LEASE_TTL_S)):
            clock.t += 1.0
            await a._renew_once(first=False)
            await b._renew_once(first=False)
        assert len(directory.writes) == int(ROOM_LEASE_TTL_S / ROOM_REFRESH_S)
        assert all(sorted(w) == ["r", "s"] for w in directory.writes)
        assert await b.room_nodes("s") == {"a"}  # never lapsed
        # Redis restarted, forgetting everything: every held room is written again at once.
        hub.nodes.clear()
        hub.homes.clear()
        hub.spans.clear()
        clock.t += 1.0
        await a._renew_once(first=False)
        assert await b.room_nodes("s") == {"a"} and await b.room_nodes("r") == {"a"}
        await b._renew_once(first=False)
        assert await a.room_nodes("r") == {"b"}
        # A write that fails is due again at the next renewal.
        await a.release_home("s")
        directory.fail = True
        await a.claim_home("t")
        assert a.span_failures == 1 and await b.room_nodes("t") == set()
        clock.t += 1.0
        await a._renew_once(first=False)  # the renewal's write fails too: the lease stands
        assert a.span_failures == 2 and a.connected and await b.room_nodes("t") == set()
        directory.fail = False
        clock.t += 1.0
        await a._renew_once(first=False)
        assert await b.room_nodes("t") == {"a"}
        # The room ended here: only a's entry goes.
        assert await b.room_nodes("s") == set()
        await a.release_home("r")
        assert await a.room_nodes("r") == {"b"}
        # A clean stop removes the rest.
        await a.stop()
        assert await b.room_nodes("t") == set() and a.held == set()
        # Known to be away: no read is tried.
        b.connected = False
        with pytest.raises(DirectoryUnavailable):
            await b.room_nodes("r")

    asyncio.run(run())


def test_a_room_ended_while_its_refresh_was_on_its_way_is_not_kept() -> None:
    clock = FakeClock()
    hub = LocalHub()

    class Racing(LocalDirectory):
        registry: NodeRegistry | None = None

        async def hold_rooms(self, node_id: str, rooms: Sequence[str]) -> None:
            if self.registry is not None:
                # The room ends here while the write is on its way, and the write lands
                # after the removal (two connections of a pool keep no order).
                registry, self.registry = self.registry, None
                await registry.release_home("r")
            await super().hold_rooms(node_id, rooms)

    racing = Racing(clock, hub=hub)
    a = NodeRegistry(racing, NodeInfo("a", "eu"), clock=clock)

    async def run() -> None:
        await a._renew_once(first=True)
        await a.claim_home("r")
        clock.t += ROOM_REFRESH_S
        racing.registry = a
        await a._renew_once(first=False)
        assert a.held == set() and await racing.room_nodes("r") == set()

    asyncio.run(run())
