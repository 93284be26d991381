"""One room spread over two forwarding workers, with aiortc clients over the room protocol.

``server.room_spread_subscribers = 1``: the publisher is alone on the room's home worker,
so the subscribers are placed on the other one; the publication is relayed once over the
pipe between the workers and every subscriber decodes it. aiortc's encoder sends a
keyframe only when asked, so a decoded picture on the far worker proves the keyframe
request went up the pipe (counted in ``sfu_pipe_keyframe_requests``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import aiohttp
import pytest
from aiortc.mediastreams import MediaStreamTrack, VideoStreamTrack
from clients import LOOPBACK_CONFIG, TIMEOUT, RoomClient, frames, join_room, running_supervisor
from prometheus_client.parser import text_string_to_metric_families

from sfu.core.publication import KEYFRAME_REQUEST_INTERVAL

pytestmark = pytest.mark.integration

ROOM = "spread-room"
SUBSCRIBERS = 2
CONFIG = dataclasses.replace(
    LOOPBACK_CONFIG,
    server=dataclasses.replace(LOOPBACK_CONFIG.server, room_spread_subscribers=1),
)


async def join(http: aiohttp.ClientSession, base: str, secret: str, who: str) -> RoomClient:
    return await join_room(http, base, secret, ROOM, who)


async def metric(
    http: aiohttp.ClientSession, base: str, name: str, **where: str
) -> dict[str, float]:
    """Samples of ``name`` (with the labels ``where``) by worker, from the supervisor's
    merged /metrics."""
    async with http.get(base + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in where.items()):
                out[sample.labels["worker"]] = out.get(sample.labels["worker"], 0) + sample.value
    return out


def test_subscribers_on_another_worker_decode_the_relayed_publication() -> None:
    async def scenario() -> None:
        async with (
            running_supervisor(CONFIG, workers=2) as (supervisor, base),
            aiohttp.ClientSession() as http,
        ):
            secret = supervisor.token_secret
            publisher = await join(http, base, secret, "publisher")
            publisher.pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
            await publisher.offer("pub", tracks={"0": {"name": "camera"}})
            track = await publisher.recv(lambda m: m["type"] == "track_published")
            # Keyframe requests for a stream are at most one per KEYFRAME_REQUEST_INTERVAL,
            # whoever asks: let one the publication's start may have made expire, so that the
            # one the pipe's flow makes is sent (and counted) rather than folded into it.
            await asyncio.sleep(KEYFRAME_REQUEST_INTERVAL + 0.1)
            home = supervisor.placement.worker_of(ROOM)
            viewers = []
            received: list[MediaStreamTrack] = []
            for i in range(SUBSCRIBERS):
                viewer = await join(http, base, secret, f"viewer-{i}")
                # The viewer is on the other worker, and sees the publisher and its track:
                # in its joined message, or (the first one, whose join opened the shard)
                # right after it.
                track_id = track["track"]["id"]
                if track_id not in json.dumps(viewer.joined["participants"]):
                    seen = await viewer.recv(lambda m: m["type"] == "track_published")
                    assert seen["track"]["id"] == track_id
                viewer.pc.addTransceiver("video", direction="recvonly")
                viewer.pc.on("track", received.append)
                await viewer.offer(f"sub{i}", subscriptions={"0": track["track"]["id"]})
                viewers.append(viewer)
            assert supervisor.placement.shards_of(ROOM) == {0, 1}
            # Every viewer decodes: a keyframe came through the pipe on request.
            deadline = time.monotonic() + TIMEOUT
            while len(received) < SUBSCRIBERS:
                assert time.monotonic() < deadline, "no track reached the viewers"
                await asyncio.sleep(0.05)
            for remote in received:
                await asyncio.wait_for(frames(remote, 5), TIMEOUT)
            requests = await metric(http, base, "sfu_pipe_keyframe_requests_total")
            assert requests.get(str(home), 0) >= 1, requests
            flows = await metric(http, base, "sfu_pipe_flows")
            # One relayed flow for the two viewers: each publication crosses once.
            assert flows == {str(home): 1.0, str(1 - home): 1.0}, flows
            # The home worker's data plane sent the relayed packets to the pipe itself (its
            # tap's relay output), and the pipe's counters include them.
            relay_out = await metric(http, base, "sfu_dataplane_datagrams_total", path="relay_out")
            # (plain outputs between workers: every packet that decoded the 5 frames)
            assert relay_out.get(str(home), 0) >= 5, relay_out
            sent = await metric(http, base, "sfu_pipe_datagrams_total", direction="out")
            assert sent.get(str(home), 0) >= relay_out[str(home)], (sent, relay_out)
            for client in (publisher, *viewers):
                await client.pc.close()
                await client.ws.close()

    asyncio.run(asyncio.wait_for(scenario(), 4 * TIMEOUT))
