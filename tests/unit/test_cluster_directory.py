"""The cluster directory's in-process implementation, the node registry on it, the bus
bounds, and ``[cluster]`` configuration (socket-free, fake clocks)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.cluster.directory import (
    BUS_BURST,
    BUS_RATE_PER_S,
    LEASE_TTL_S,
    MAX_BUS_MESSAGE_BYTES,
    BusError,
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
