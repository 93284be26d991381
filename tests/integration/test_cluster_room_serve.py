"""Two in-process servers clustered over a real redis-server (``[cluster] redis_url``, one
process per node): a room locked by an admin on node B refuses a join on node A (and takes
one once unlocked); a participant joined over the room WebSocket on node A and one on node B
see each other join and leave, the room has one home, released when the room ends, and the
cluster room metrics count the events. (Media across nodes:
test_cluster_media_aiortc.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import aiohttp
import pytest
import redis
from clients import LOOPBACK_CONFIG, TIMEOUT, next_of, running_server
from redis_server import RedisServer, redis_server

from sfu.config import AuthConfig, ClusterConfig, Config
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM = "across-nodes"
SECRET = "cluster-test-secret-of-enough-length-0123456789"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def node_config(url: str, node_id: str) -> Config:
    return dataclasses.replace(
        LOOPBACK_CONFIG,
        auth=AuthConfig(jwt_secret=SECRET),
        cluster=ClusterConfig(redis_url=url, node_id=node_id, region="eu"),
    )


def bearer(identity: str, grants: Grant = Grant.PUBLISH | Grant.SUBSCRIBE) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM,
        identity=identity,
        name=identity,
        grants=grants,
        iat=now,
        exp=now + 600,
    )
    return str(issue_token(SECRET, claims))


async def join(
    http: aiohttp.ClientSession, base: str, identity: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{base}/ws", autoping=True)
    await ws.send_json({"type": "join", "protocol": 1, "room": ROOM, "token": bearer(identity)})
    reply = await ws.receive_json(timeout=TIMEOUT)
    assert reply["type"] == "joined", reply
    return ws


def test_participants_on_two_nodes_share_a_room(server: RedisServer) -> None:
    check = redis.Redis.from_url(server.url, decode_responses=True)

    async def scenario() -> None:
        async with (
            running_server(node_config(server.url, "node-a")) as (node_a, base_a),
            running_server(node_config(server.url, "node-b")) as (node_b, base_b),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            # An admin locks the room on node B before anyone is in it: node A obeys.
            admin = {"Authorization": f"Bearer {bearer('root', Grant.ADMIN)}"}
            async with http.put(
                f"{base_b}/rooms/{ROOM}/policy", json={"locked": True}, headers=admin
            ) as reply:
                assert reply.status == 200, await reply.text()
            deadline = time.monotonic() + TIMEOUT
            while not node_a.rooms.policies.get(ROOM).locked:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "node A never heard of the lock"
                await asyncio.sleep(0.02)
            ws = await http.ws_connect(f"{base_a}/ws", autoping=True)
            await ws.send_json(
                {"type": "join", "protocol": 1, "room": ROOM, "token": bearer("alice")}
            )
            refusal = await ws.receive_json(timeout=TIMEOUT)
            assert refusal["type"] == "error" and refusal["code"] == "room_locked", refusal
            await ws.close()
            async with http.delete(f"{base_b}/rooms/{ROOM}/policy", headers=admin) as reply:
                assert reply.status == 200, await reply.text()
            while node_a.rooms.policies.get(ROOM).locked:  # type: ignore[union-attr]
                assert time.monotonic() < deadline, "node A never heard of the unlock"
                await asyncio.sleep(0.02)
            alice = await join(http, base_a, "alice")
            bob = await join(http, base_b, "bob")
            seen_by_alice = await next_of(alice, "participant_joined")
            seen_by_bob = await next_of(bob, "participant_joined")
            assert seen_by_alice["participant"]["identity"] == "bob"  # type: ignore[index]
            assert seen_by_bob["participant"]["identity"] == "alice"  # type: ignore[index]
            assert check.get(f"sfu:home:{ROOM}") in ("node-a", "node-b")  # one owner
            assert node_b.room_bus is not None and node_b.room_bus.received >= 1
            async with http.get(f"{base_b}/metrics") as reply:
                text = await reply.text()
            assert "sfu_cluster_rooms_spanned 1.0" in text
            assert ROOM not in text  # no room names in metrics
            # Alice leaves node A: Bob is told; once Bob leaves too the home is released.
            await alice.send_json({"type": "leave"})
            left = await next_of(bob, "participant_left")
            assert left["participant"] == seen_by_bob["participant"]["id"]  # type: ignore[index]
            await bob.send_json({"type": "leave"})
            deadline = time.monotonic() + TIMEOUT
            while check.get(f"sfu:home:{ROOM}") is not None:
                assert time.monotonic() < deadline, "the owner kept the home"
                await asyncio.sleep(0.05)
            assert node_a.room_bus is not None and not node_a.room_bus.open_rooms
            await alice.close()
            await bob.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
    finally:
        check.close()
