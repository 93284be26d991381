"""Clustered nodes that run several forwarding workers: two supervisors of two workers each
over a real redis-server. Every worker is a member of the cluster of its own
(``<node_id>.w<index>``, a QUIC link on ``link_port + index`` under the node's certificate),
so a room spread over two workers of one node and over two nodes is joined up by the
cluster's bus and links alike: aiortc WHEP viewers on node A's other worker and on node B
decode node A's WHIP publisher; a worker killed with SIGKILL is started again, node B's
viewer keeps decoding, and node B's room drops the killed worker's participant."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from clients import LOOPBACK_CONFIG, TIMEOUT, frames, join_room, running_supervisor
from cluster_nodes import node_configs
from media_load import _delete, media_load, watch
from redis_server import RedisServer, redis_server

from bench.cluster import free_udp_run
from sfu.config import ClusterConfig, Config, ServerConfig
from sfu.workers.supervisor import Supervisor

pytestmark = pytest.mark.integration

SECRET = "cluster-workers-test-secret-of-enough-length-0123"
ROOM = "spread-room"
WORKERS = 2


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def worker_node(config: Config) -> Config:
    """``config`` (one of node_configs') with two workers, a link port for each, and rooms
    spread over the workers from their second participant on."""
    port = free_udp_run(WORKERS)
    cluster: ClusterConfig = dataclasses.replace(
        config.cluster, link_port=port, advertise_address=f"127.0.0.1:{port}"
    )
    return dataclasses.replace(
        config,
        cluster=cluster,
        server=ServerConfig(workers=str(WORKERS), drain_timeout_s=3.0, room_spread_subscribers=1),
    )


async def kill_the_shard(
    node_a: Supervisor,
    http: aiohttp.ClientSession,
    base_b: str,
    far: dict[str, MediaStreamTrack],
) -> None:
    """SIGKILL node A's worker that holds the room's shard (its WHEP viewer), not the
    publisher's: node B's viewer keeps decoding, the supervisor starts the worker again
    (within the member's lease: same member id, a new incarnation), and node B's members
    drop the killed worker's participant at once rather than keep it for good."""
    watcher = await join_room(http, base_b, SECRET, ROOM, "watcher")
    # The shards of the room on the other members answer the watcher's with their state.
    known = [p for p in watcher.joined["participants"] if p.get("identity") == "viewer-0"]
    if not known:
        joined = await watcher.recv(
            lambda m: (
                m["type"] == "participant_joined" and m["participant"].get("identity") == "viewer-0"
            )
        )
        known = [joined["participant"]]
    viewer_id = str(known[0]["id"])
    shard = node_a.placement.worker_of(ROOM)
    (victim,) = (w for w in node_a.workers if w.index != shard)
    assert victim.proc is not None
    old_pid = victim.proc.pid
    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    left = await watcher.recv(
        lambda m: m["type"] == "participant_left" and m["participant"] == viewer_id
    )
    gone_s = time.monotonic() - killed
    await asyncio.wait_for(frames(far["video"], 20), TIMEOUT)  # decoding all along
    deadline = time.monotonic() + TIMEOUT
    while not (victim.ready and victim.proc is not None and victim.proc.pid != old_pid):
        assert time.monotonic() < deadline, "the killed worker was not started again"
        await asyncio.sleep(0.1)
    print(f"worker killed: its participant left node B's room after {gone_s:.2f} s")
    assert left["participant"] == viewer_id
    await watcher.ws.close()


async def readyz(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(base + "/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        return body


def test_workers_of_two_clustered_nodes_are_members_and_relay_to_each_other(
    server: RedisServer, tmp_path: Path
) -> None:
    configs = {
        node: worker_node(config)
        for node, config in node_configs(server.url, tmp_path, LOOPBACK_CONFIG, SECRET).items()
    }
    members = {f"{node}.w{i}" for node in configs for i in range(WORKERS)}

    async def scenario() -> None:
        async with (
            running_supervisor(configs["node-a"], WORKERS) as (node_a, base_a),
            running_supervisor(configs["node-b"], WORKERS) as (_node_b, base_b),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            # Four members, each linked to the three others (the links' certificates name
            # the nodes; which worker dialled is told by its address in the directory).
            deadline = time.monotonic() + 3 * TIMEOUT
            while True:
                views = [(await readyz(http, base))["cluster"] for base in (base_a, base_b)]
                listed = [m for view in views for m in view["members"]]
                linked = {
                    m["node_id"]: set(m.get("links_up", ()))
                    for m in listed
                    if m.get("nodes_alive") == len(members)
                }
                if linked.keys() == members and all(
                    peers == members - {me} for me, peers in linked.items()
                ):
                    break
                assert time.monotonic() < deadline, listed
                await asyncio.sleep(0.25)
            assert [view["node_id"] for view in views] == ["node-a", "node-b"]
            # The publisher is the room's first connection on node A; the viewer after it
            # goes to A's other worker (a shard), fed over the sibling link.
            async with media_load(base_a, SECRET, ROOM, viewers=1) as load:
                assert len(node_a.placement.shards_of(ROOM)) == WORKERS
                await asyncio.wait_for(frames(load.tracks[0]["video"], 10), TIMEOUT)
                # A viewer on node B: its worker there is fed over a link between nodes.
                viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                try:
                    received, location = await watch(viewer, base_b, SECRET, ROOM, "far")
                    await asyncio.wait_for(frames(received["video"], 10), TIMEOUT)
                    await asyncio.wait_for(frames(received["audio"], 10), TIMEOUT)
                    # Node A's viewer kept decoding throughout.
                    await asyncio.wait_for(frames(load.tracks[0]["audio"], 10), TIMEOUT)
                    await kill_the_shard(node_a, http, base_b, received)
                    await _delete(base_b, location)
                finally:
                    await viewer.close()

    asyncio.run(asyncio.wait_for(scenario(), 8 * TIMEOUT))
