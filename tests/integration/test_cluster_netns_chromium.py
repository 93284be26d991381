"""Issue 15's headline test: three ``sfu serve`` nodes, each in its own network namespace on
one LAN (a bridge the test creates), a real redis-server in the root namespace, and clients
in the root namespace reaching every node by its own address.

a. Alice's Chromium page joins on node A, Bob's on node B, one room: each decodes the other's
   audio and video (relayed over the QUIC node link between two namespaces).
b. An aiortc publisher's WHIP on node A, an aiortc viewer's WHEP on node C: the viewer decodes
   (a 307 to another node is followed, RFC 9725 section 4.5).
c. A host joined over the room WebSocket on node B removes a participant joined on node C:
   that participant is closed with 4004, the host sees it leave, node B audits the removal.
d. Redis is killed (SIGKILL, no persistence: it comes back empty) and started again on the
   same port: Alice and Bob keep decoding each other (the longest pause is measured), and a
   new WebSocket join works again within 5 s of the restart.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from browser import chromium, wait_until
from clients import RoomClient, frames, join_room
from meeting import longest_stall, page_state, remote_by, sample, stats, steady, wait_connected
from netns import Lan, lan
from redis import Redis
from redis_server import RedisServer, redis_server
from serve_process import ServeProcess

from sfu.cluster.directory import RENEW_INTERVAL_S
from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.cluster.registry import ORPHAN_GRACE_S
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

NODES = ("node-a", "node-b", "node-c")
ROOM = "netns-lan"
SECRET = "cluster-netns-secret-of-enough-length-0123456"
BOTH = Grant.PUBLISH | Grant.SUBSCRIBE
#: Fixed ports inside each namespace (each has its own port space, nothing else runs there).
HTTP_PORT = 8080
LINK_PORT = 7400
HTTP_RE = re.compile(r"http listening on [\d.]+:(\d+)")
#: A node's start: Python, the compiled kernels, Redis, the links to the two others.
READY_S = 20.0
#: Chromium's first join, ICE/DTLS, a keyframe through the node link (2 shared cores).
FIRST_DECODE_S = 30.0
#: How long a WHIP/WHEP peer may take to connect and decode its first frames.
AIORTC_S = 20.0
#: How long Alice's and Bob's decoding of each other is watched from the Redis kill on: past
#: the restart, the nodes' reconnection to the empty Redis and their leases' renewal.
WATCH_S = 6.0
#: The longest pause in Alice's and Bob's decoding of each other across the Redis restart.
#: Media never goes through Redis (the node link carries it), so the restart should not
#: pause it at all: the figure printed was 0.00 s in 12 of 13 runs here and 0.27 s once
#: (samples are 0.25 s apart). Two Chromium pages, three nodes and the sampling share 2
#: cores, where a late keyframe after a layer switch alone pauses about a second; a media
#: path that depended on Redis would stop for the whole restart and the nodes' reconnection
#: (the bus reader's backoff reaches 1 s) and still fails.
MAX_STALL_S = 1.5
#: The issue's bound: joins work again this soon after Redis is back.
JOIN_AGAIN_S = 5.0
#: Longer than a lease renewal interval: by then every node has claimed its homes again.
RENEW_S = RENEW_INTERVAL_S + 0.5
#: One join attempt's bound while the cluster recovers (then it is tried again).
JOIN_TRY_S = 2.0


def token(identity: str, grants: Grant = BOTH) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM, identity=identity, name=identity, grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(SECRET, claims))


def http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def cluster_view(base: str) -> dict[str, Any]:
    """``/readyz``'s cluster part ({} while the node does not answer)."""
    try:
        return dict(http_json(f"{base}/readyz").get("cluster", {}))
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def cluster(lab: Lan, redis: RedisServer, tmp_path: Path) -> Iterator[dict[str, ServeProcess]]:
    """A node in each namespace of ``lab``, all seeing each other; stopped afterwards."""
    ca_cert, ca_key = mint_ca("netns test")
    (tmp_path / "ca.pem").write_bytes(ca_cert)
    nodes: dict[str, ServeProcess] = {}
    try:
        for node in NODES:
            address = lab[node].address
            cert, key = mint_node_cert(ca_cert, ca_key, node)
            (tmp_path / f"{node}.pem").write_bytes(cert)
            write_pem(tmp_path / f"{node}.key", key, private=True)
            config = tmp_path / f"{node}.toml"
            config.write_text(
                f'[http]\nhost = "{address}"\nport = {HTTP_PORT}\n'
                f'[media]\nudp_host = "{address}"\nudp_port = 0\n'
                "[echo]\nenabled = false\n"
                "[rooms]\nwaiting_room = false\n"
                f'[auth]\njwt_secret = "{SECRET}"\ndev_tokens = false\n'
                f'[audit]\npath = "{tmp_path / node}-audit"\n'
                f'[cluster]\nredis_url = "{redis.address_url}"\nnode_id = "{node}"\n'
                f'public_url = "http://{address}:{HTTP_PORT}"\n'
                f'advertise_address = "{address}:{LINK_PORT}"\nlink_port = {LINK_PORT}\n'
                f'ca_file = "{tmp_path / "ca.pem"}"\ncert_file = "{tmp_path / node}.pem"\n'
                f'key_file = "{tmp_path / node}.key"\n'
            )
            nodes[node] = ServeProcess(config, prefix=lab[node].argv())
        for node, proc in nodes.items():
            assert int(proc.wait_for(HTTP_RE).group(1)) == HTTP_PORT
            wait_until(
                lambda node=node: cluster_view(base_of(lab, node)),
                lambda c: c.get("nodes_alive") == len(NODES),
                timeout=READY_S,
            )
        yield nodes
    finally:
        for proc in nodes.values():
            proc.stop()
        for node, proc in nodes.items():  # shown when the test fails
            print(f"--- {node}\n" + "\n".join(proc.lines[-60:]))


def base_of(lab: Lan, node: str) -> str:
    return f"http://{lab[node].address}:{HTTP_PORT}"


def page_url(base: str, name: str) -> str:
    """The demo page joining ``ROOM`` with a minted token (no development tokens off
    loopback), without tile-size hints."""
    query = urllib.parse.urlencode({"room": ROOM, "name": name, "hints": "0", "token": token(name)})
    return f"{base}/?{query}"


def decodes(driver: Any, participant: str) -> bool:
    """Whether the page decodes ``participant``'s video and plays its audio."""
    value = stats(driver)
    video = remote_by(value, participant, "video")
    audio = remote_by(value, participant, "audio")
    return bool(video and audio and video["framesDecoded"] > 5 and audio["packetsReceived"] > 0)


def frames_of(page: Any, participant: str) -> int:
    video = remote_by(stats(page), participant, "video")
    return int(video["framesDecoded"]) if video else 0


async def post_sdp(
    http: aiohttp.ClientSession, url: str, sdp: str, bearer: str
) -> tuple[int, str, str, str]:
    """POST an offer, following 307s (RFC 9725 section 4.5: same method, same offer);
    returns (status, body, session URL, the URL that answered)."""
    headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {bearer}"}
    for _ in range(3):
        async with http.post(url, data=sdp, headers=headers, allow_redirects=False) as resp:
            body = await resp.text()
            location = resp.headers.get("Location", "")
            if resp.status != 307:
                return resp.status, body, urllib.parse.urljoin(url, location), url
        url = urllib.parse.urljoin(url, location)
    raise AssertionError(f"redirected more than twice, last to {url}")


async def whip_to_whep(lab: Lan) -> float:
    """Publish with WHIP on node A, watch with WHEP on node C; returns the seconds to the
    viewer's first decoded video frame."""
    publisher = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received: dict[str, MediaStreamTrack] = {}
    viewer.on("track", lambda track: received.setdefault(track.kind, track))
    sessions: list[str] = []
    timeout = aiohttp.ClientTimeout(total=AIORTC_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            started = time.monotonic()
            publisher.addTransceiver(AudioStreamTrack(), direction="sendonly")
            publisher.addTransceiver(VideoStreamTrack(), direction="sendonly")
            await publisher.setLocalDescription(await publisher.createOffer())
            status, answer, session, _ = await post_sdp(
                http,
                f"{base_of(lab, 'node-a')}/whip/{ROOM}",
                publisher.localDescription.sdp,
                token("caster", Grant.PUBLISH),
            )
            assert status == 201, answer
            sessions.append(session)
            await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))

            viewer.addTransceiver("audio", direction="recvonly")
            viewer.addTransceiver("video", direction="recvonly")
            await viewer.setLocalDescription(await viewer.createOffer())
            status, answer, session, answered = await post_sdp(
                http,
                f"{base_of(lab, 'node-c')}/whep/{ROOM}/caster",
                viewer.localDescription.sdp,
                token("viewer", Grant.SUBSCRIBE),
            )
            assert status == 201, answer
            sessions.append(session)
            print(f"netns: the WHEP offer was answered by {answered}")
            await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            assert set(received) == {"audio", "video"}, received
            assert await asyncio.wait_for(frames(received["video"], 10), AIORTC_S) == 10
            decoded_s = time.monotonic() - started
            assert await asyncio.wait_for(frames(received["audio"], 10), AIORTC_S) == 10
            for url in reversed(sessions):
                async with http.delete(url) as resp:
                    assert resp.status == 200, await resp.text()
            return decoded_s
        finally:
            await viewer.close()
            await publisher.close()


async def host_removes_remote_participant(lab: Lan) -> None:
    """A host on node B removes Dave, joined on node C; Erin on node A watches."""
    timeout = aiohttp.ClientTimeout(total=AIORTC_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        dave = await join_room(http, base_of(lab, "node-c"), SECRET, ROOM, "dave")
        erin = await join_room(http, base_of(lab, "node-a"), SECRET, ROOM, "erin")
        host = RoomClient(await http.ws_connect(f"{base_of(lab, 'node-b')}/ws"))
        try:
            join = {"type": "join", "protocol": 1, "room": ROOM}
            await host.ws.send_json({**join, "token": token("host", BOTH | Grant.HOST)})
            joined = await host.recv(lambda m: m["type"] == "joined")
            dave_id = str(dave.joined["participant"]["id"])
            # The host's node knows Dave (from node C, through the cluster) before acting.
            others = {str(p["id"]) for p in joined["participants"]}
            if dave_id not in others:
                await host.recv(
                    lambda m: (
                        m["type"] == "participant_joined" and m["participant"]["id"] == dave_id
                    )
                )
            await host.ws.send_json({"type": "remove", "id": "r1", "participant": dave_id})
            reply = await host.recv(lambda m: m.get("re") == "r1")
            assert reply["type"] == "ok", reply
            # Dave is told (the close code and reason) and disconnected.
            deadline = time.monotonic() + AIORTC_S
            while True:
                msg = await dave.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
            assert msg.type is aiohttp.WSMsgType.CLOSE, msg
            assert (msg.data, msg.extra) == (4004, "a host removed you from the meeting"), msg
            # The others, on nodes B and A, see Dave leave.
            for other in (host, erin):
                await other.recv(
                    lambda m: m["type"] == "participant_left" and m["participant"] == dave_id
                )
        finally:
            for client in (dave, erin, host):
                await client.ws.close()
                await client.pc.close()


async def join_once(lab: Lan, node: str, who: str, expected: set[str]) -> bool:
    """One WebSocket join attempt on ``node`` (bounded): whether it was ``joined`` and saw
    everyone in ``expected`` (participants on other nodes: the cluster works, not only the
    node)."""

    async def attempt(http: aiohttp.ClientSession) -> bool:
        client = await join_room(http, base_of(lab, node), SECRET, ROOM, who)
        try:
            seen = {str(p["id"]) for p in client.joined["participants"]}
            while not expected <= seen:
                message = await client.recv(lambda m: m["type"] == "participant_joined")
                seen.add(str(message["participant"]["id"]))
            await client.ws.send_json({"type": "leave"})
            return True
        finally:
            await client.ws.close()
            await client.pc.close()

    timeout = aiohttp.ClientTimeout(total=JOIN_TRY_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            return await asyncio.wait_for(attempt(http), JOIN_TRY_S)
        except (AssertionError, TimeoutError, aiohttp.ClientError, KeyError):
            return False


def audit_records(folder: Path) -> list[dict[str, Any]]:
    path = folder / f"audit-{datetime.now(UTC):%Y-%m-%d}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_three_nodes_in_namespaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with lan(NODES) as lab, redis_server(lab.address) as redis:
        # aiortc in the root namespace reaches the nodes from its address on the LAN.
        monkeypatch.setattr(
            aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: [lab.address]
        )
        origins = ",".join(base_of(lab, node) for node in NODES)
        flags = (f"--unsafely-treat-insecure-origin-as-secure={origins}",)
        with (
            cluster(lab, redis, tmp_path) as nodes,
            chromium(flags) as alice,
            chromium(flags) as bob,
        ):
            # a. Alice on node A, Bob on node B.
            started = time.monotonic()
            alice.get(page_url(base_of(lab, "node-a"), "Alice"))
            bob.get(page_url(base_of(lab, "node-b"), "Bob"))
            alice_id = wait_connected(alice, FIRST_DECODE_S)
            bob_id = wait_connected(bob, FIRST_DECODE_S)
            assert page_state(alice)["node"] == f"ws://{lab['node-a'].address}:{HTTP_PORT}/ws"
            assert page_state(bob)["node"] == f"ws://{lab['node-b'].address}:{HTTP_PORT}/ws"
            wait_until(
                lambda: decodes(alice, bob_id) and decodes(bob, alice_id), bool, FIRST_DECODE_S
            )
            decode_s = time.monotonic() - started
            print(f"netns: Alice (A) and Bob (B) decode each other after {decode_s:.2f} s")

            # b. WHIP on A, WHEP on C.
            whep_s = asyncio.run(whip_to_whep(lab))
            print(f"netns: WHEP viewer on C decodes the WHIP publisher on A after {whep_s:.2f} s")

            # c. A host on B removes Dave, joined on C; B audits it.
            asyncio.run(host_removes_remote_participant(lab))
            wait_until(
                lambda: [
                    r
                    for r in audit_records(tmp_path / "node-b-audit")
                    if r.get("action") == "remove" and r.get("outcome") == "ok"
                ],
                lambda records: len(records) == 1 and records[0].get("target") == "dave",
                timeout=5,
            )

            # d. Redis restarted during the meeting.
            def pair() -> list[int]:
                return [frames_of(alice, bob_id), frames_of(bob, alice_id)]

            steady(pair, FIRST_DECODE_S, window_s=2.0, stall_s=0.5)
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                watched = pool.submit(sample, lambda: (time.monotonic(), *pair()), WATCH_S)
                time.sleep(0.5)
                redis.kill()
                redis.start()
                restarted = time.monotonic()
                attempt = 0
                while not asyncio.run(
                    join_once(lab, "node-c", f"late-{attempt}", {alice_id, bob_id})
                ):
                    attempt += 1
                    assert time.monotonic() - restarted < JOIN_AGAIN_S + JOIN_TRY_S
                join_s = time.monotonic() - restarted
                # The restarted Redis came back empty: every node registers its lease again,
                # and the room, still held on A and B, has a home again. (When the join above
                # opened the room on C before A's renewal, C took the home and released it
                # when the room closed there; A, still holding the room, claims it then.)
                leases = {f"sfu:node:{node}" for node in NODES}
                with contextlib.closing(Redis.from_url(redis.url)) as client:
                    wait_until(
                        lambda: {key.decode() for key in client.keys("sfu:node:*")},
                        lambda keys: keys == leases,
                        timeout=READY_S,
                    )
                    leases_s = time.monotonic() - restarted
                    home = wait_until(
                        lambda: client.get(f"sfu:home:{ROOM}"),
                        lambda owner: owner is not None,
                        timeout=ORPHAN_GRACE_S + 3 * RENEW_S,
                    )
                    home_s = time.monotonic() - restarted
                print(
                    f"netns: Redis restart: the three leases back after {leases_s:.2f} s, "
                    f"the room's home ({home.decode()}) after {home_s:.2f} s"
                )
                samples = watched.result(timeout=WATCH_S + 30)
            stalls = [longest_stall([(t, counts[i]) for t, *counts in samples]) for i in (0, 1)]
            print(
                f"netns: Redis restart: longest pauses Alice<-Bob, Bob<-Alice "
                f"{stalls[0]:.2f}, {stalls[1]:.2f} s; a join works again after {join_s:.2f} s"
            )
            assert max(stalls) <= MAX_STALL_S, (stalls, samples)
            assert join_s <= JOIN_AGAIN_S
            # Every node sees the other two again.
            for node in NODES:
                wait_until(
                    lambda node=node: cluster_view(base_of(lab, node)),
                    lambda c: c.get("nodes_alive") == len(NODES),
                    timeout=READY_S,
                )
            assert all(proc.proc.poll() is None for proc in nodes.values())
            for page in (alice, bob):
                assert page_state(page).get("reconnects", 0) == 0, page_state(page)
                assert page_state(page).get("error") is None
