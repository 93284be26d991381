"""Media between two nodes: an aiortc publisher on node A, an aiortc subscriber on node B.

Two in-process servers clustered over a real redis-server, each with a QUIC node link
(certificates of one CA minted by the test, free loopback ports): the publisher's video is
relayed once over the link (RTP in QUIC DATAGRAMs, a flow per publication) and decoded on
node B. aiortc's encoder sends a keyframe only when asked, so a decoded picture on B proves
the keyframe request crossed back to A. When the publisher leaves A, B's subscriber is told
the track is gone and neither node keeps a flow, tap or relayed publication. When node A
(a ``sfu serve`` process) is killed with SIGKILL, B's subscriber is told the track is gone
once A's lease lapses, and B keeps nothing of A's once the link's idle timeout closed it.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiortc.mediastreams import MediaStreamTrack, VideoStreamTrack
from clients import LOOPBACK_CONFIG, TIMEOUT, RoomClient, frames, join_room, running_server
from cluster_nodes import node_configs
from redis_server import RedisServer, redis_server
from serve_process import HTTP_RE, ServeProcess
from test_prometheus import CLUSTER_ONLY_PANELS, panel_metrics

from sfu.app import Server
from sfu.config import Config
from sfu.core.relay import RelayTap

pytestmark = pytest.mark.integration

ROOM = "two-node-media"
SECRET = "cluster-media-test-secret-of-enough-length-0123"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


async def join(http: aiohttp.ClientSession, base: str, who: str) -> RoomClient:
    return await join_room(http, base, SECRET, ROOM, who)


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def taps(node: Server) -> list[RelayTap]:
    assert node.node_pipes is not None
    return list(node.node_pipes.hub.relay.taps.values())


def flows(node: Server) -> int:
    """Flows of every pipe over the node's links, both directions."""
    assert node.node_pipes is not None
    return sum(
        len(c.pipe.inbound_flows()) + len(c.pipe.outbound_flows())
        for c in node.node_pipes.carriers.values()
    )


def test_a_subscriber_on_node_b_decodes_a_publisher_on_node_a(
    server: RedisServer, tmp_path: Path
) -> None:
    configs = node_configs(server.url, tmp_path, LOOPBACK_CONFIG, SECRET)

    async def scenario() -> None:
        async with (
            running_server(configs["node-a"]) as (node_a, base_a),
            running_server(configs["node-b"]) as (node_b, base_b),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            assert node_a.node_pipes is not None and node_b.node_pipes is not None
            await until(
                lambda: (
                    bool(node_a.node_pipes and node_a.node_pipes.carriers)
                    and bool(node_b.node_pipes and node_b.node_pipes.carriers)
                ),
                "the node link never came up",
            )
            publisher = await join(http, base_a, "publisher")
            publisher.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
            await publisher.offer("pub", tracks={"0": {"name": "camera"}})
            published = await publisher.recv(lambda m: m["type"] == "track_published")
            track_id = published["track"]["id"]
            viewer = await join(http, base_b, "viewer")
            if track_id not in json.dumps(viewer.joined["participants"]):
                seen = await viewer.recv(
                    lambda m: m["type"] == "track_published" and m["track"]["id"] == track_id
                )
                assert seen["track"]["participant"] == published["track"]["participant"]
            received: list[MediaStreamTrack] = []
            viewer.pc.addTransceiver("video", direction="recvonly")
            viewer.pc.on("track", received.append)
            await viewer.offer("sub", subscriptions={"0": track_id})
            await until(lambda: bool(received), "no track reached the viewer")
            await asyncio.wait_for(frames(received[0], 10), TIMEOUT)
            # Relayed once over the link: one tap on A, one relayed publication on B, and
            # the keyframe aiortc's encoder sent was asked for from B.
            assert len(taps(node_a)) == 1
            assert len(node_b.node_pipes.hub.remotes) == 1
            assert node_a.node_pipes.hub.relay.keyframe_requests >= 1
            assert node_a.links is not None and node_a.links.totals()["flows_sent"] > 10
            # The publication stayed in the data plane, which sealed its packets for the
            # link's media lane and sent them itself (the tap's relay output); only what came
            # before the lane was keyed went through the tap to QUIC DATAGRAMs.
            forwarder_a = node_a.dataplane.forwarder
            await until(lambda: forwarder_a.relay_sent > 0, "the data plane relayed nothing")
            assert forwarder_a.relay_send_errors == 0
            # Every relayed packet went one way or the other: sealed by the data plane, or
            # (before the lane was keyed) handed to the tap.
            assert forwarder_a.relay_sent + node_a.dataplane.relayed >= 10
            (tap,) = taps(node_a)
            assert tap.output is not None and tap.output.packets == forwarder_a.relay_sent
            assert tap.output.sealer is node_a.links.up[node_b.cluster.node.node_id].lane.sealer
            # On B the relayed packets fanned out in the data plane too (a plaintext source),
            # not through the relayed publication's Router: once the lane was keyed, straight
            # from the link socket (B's link is a relay input of its forwarder: opened, the
            # flow decoded, ingested, no Python per packet); before, through ingest().
            forwarder_b = node_b.dataplane.forwarder
            await until(lambda: forwarder_b.relay_in_packets > 0, "no relay input on B")
            assert node_b.dataplane.ingested + forwarder_b.relay_in_packets > 10
            assert node_b.node_pipes is not None and node_b.node_pipes.inputs_opened >= 1
            async with http.get(f"{base_b}/metrics") as reply:
                text_b = await reply.text()
            relay_in = re.search(
                r'^sfu_dataplane_datagrams_total\{path="relay_in"\} (\S+)$', text_b, re.MULTILINE
            )
            assert relay_in is not None and float(relay_in.group(1)) > 0, "no relay_in"
            # ...and counted on B's link as if its Python path had received them.
            assert node_b.links is not None
            assert node_b.links.totals()["flows_received"] >= forwarder_b.relay_in_packets
            async with http.get(f"{base_a}/metrics") as reply:
                text = await reply.text()
            assert 'sfu_cluster_relay_flows{direction="out"} 1.0' in text
            # The media left QUIC: node A sealed it on the link's media lane, B opened it.
            sent = re.search(
                r'^sfu_cluster_link_sealed_datagrams_total\{event="sent"\} (\S+)$',
                text,
                re.MULTILINE,
            )
            assert sent is not None and float(sent.group(1)) > 0, "no sealed datagram sent"
            assert node_b.links is not None
            lane_b = node_b.links.lane_totals()
            assert lane_b["received"] > 10
            assert lane_b["auth_failed"] == lane_b["not_peer"] == lane_b["replayed"] == 0
            # The lane works, so its liveness reports never made A fall back to DATAGRAMs.
            assert node_a.links.lane_totals()["blocked"] == 0
            assert "sfu_cluster_link_sealed_blocked_total 0.0" in text
            assert "sfu_cluster_links_sealed_fallback 0.0" in text
            assert "sfu_cluster_relay_keyframe_requests_total" in text
            # Every metric the dashboard's cluster-only panels query is there on a linked node.
            for name in panel_metrics(CLUSTER_ONLY_PANELS):
                assert re.search(rf"^{name}[{{ ]", text, re.MULTILINE), name
            assert ROOM not in text and track_id not in text  # no names in metrics
            # The publisher leaves node A: B's viewer hears the track end, no flow is left.
            await publisher.ws.send_str(json.dumps({"type": "leave"}))
            gone = await viewer.recv(
                lambda m: m["type"] == "track_unpublished" and m["track"] == track_id
            )
            assert gone["track"] == track_id
            await until(
                lambda: not taps(node_a) and flows(node_a) == 0 and flows(node_b) == 0,
                "a flow was left behind",
            )
            assert node_b.node_pipes.hub.remotes == {}
            assert node_b.node_pipes.wanted() == 0
            assert node_b.dataplane.stream_count == 0  # the source went with its flow
            await viewer.pc.close()
            await publisher.pc.close()
            await viewer.ws.close()
            await publisher.ws.close()

    asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT))


def node_toml(config: Config, path: Path) -> Path:
    """``config``'s cluster and secret as a TOML file for ``sfu serve``."""
    c = config.cluster
    path.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        "[server]\ndrain_timeout_s = 1.0\n"
        '[audit]\npath = ""\n'
        "[rooms]\nwaiting_room = false\n"
        f'[auth]\njwt_secret = "{SECRET}"\n'
        f'[cluster]\nredis_url = "{c.redis_url}"\nnode_id = "{c.node_id}"\n'
        f'advertise_address = "{c.advertise_address}"\nlink_port = {c.link_port}\n'
        f'ca_file = "{c.ca_file}"\ncert_file = "{c.cert_file}"\nkey_file = "{c.key_file}"\n'
    )
    return path


def test_a_killed_publisher_node_ends_the_track_and_leaves_nothing_on_the_other(
    server: RedisServer, tmp_path: Path
) -> None:
    configs = node_configs(server.url, tmp_path, LOOPBACK_CONFIG, SECRET)
    node_a = ServeProcess(node_toml(configs["node-a"], tmp_path / "node-a.toml"))

    async def scenario() -> None:
        base_a = f"http://127.0.0.1:{node_a.wait_for(HTTP_RE).group(1)}"
        async with (
            running_server(configs["node-b"]) as (node_b, base_b),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            pipes = node_b.node_pipes
            assert pipes is not None
            await until(lambda: bool(pipes.carriers), "the node link never came up")
            publisher = await join(http, base_a, "publisher")
            publisher.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
            await publisher.offer("pub", tracks={"0": {"name": "camera"}})
            published = await publisher.recv(lambda m: m["type"] == "track_published")
            track_id = published["track"]["id"]
            viewer = await join(http, base_b, "viewer")
            if track_id not in json.dumps(viewer.joined["participants"]):
                await viewer.recv(
                    lambda m: m["type"] == "track_published" and m["track"]["id"] == track_id
                )
            received: list[MediaStreamTrack] = []
            viewer.pc.addTransceiver("video", direction="recvonly")
            viewer.pc.on("track", received.append)
            await viewer.offer("sub", subscriptions={"0": track_id})
            await until(lambda: bool(received), "no track reached the viewer")
            await asyncio.wait_for(frames(received[0], 5), TIMEOUT)
            assert len(pipes.hub.remotes) == 1
            node_a.kill()  # SIGKILL: no goodbye on the bus, no CONNECTION_CLOSE on the link
            await viewer.recv(lambda m: m["type"] == "track_unpublished" and m["track"] == track_id)
            await until(
                lambda: pipes.wanted() == 0 and not pipes.hub.remotes and not pipes.carriers,
                "node B kept a flow of the dead node",
            )
            assert node_b.links is not None and node_b.links.up == {}
            await viewer.pc.close()
            await publisher.pc.close()
            await viewer.ws.close()
            await publisher.ws.close()

    try:
        asyncio.run(asyncio.wait_for(scenario(), 6 * TIMEOUT))
    finally:
        node_a.kill()
