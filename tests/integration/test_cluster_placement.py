"""Placement across three in-process nodes over a real redis-server (``cluster.public_url``):

- a full node sends a WebSocket join on (``moved``, close 4011) to another node (to the node
  its room is on already, once there is one), and a WHIP request too (``307``, with
  ``whip_placement = "redirect"``); a join another node placed is never sent on again;
  ``joined.nodes`` names the other nodes to reconnect to should this one be lost;
- a full node that holds no participant of a room sends its joins to the node the room is
  on (by the room's span in Redis), not to a lighter node the room is not on;
- a draining node tells each room's participants one node to move to, closes their sessions
  (4011) within the drain, and sends newcomers on at once;
- a draining node ends its WHIP and WHEP sessions within the same spread (RTCP BYE, DTLS
  close_notify), and their aiortc clients, POSTing again where they did before, are
  forwarded to the node the room went to and the viewer decodes the republished stream;
- a full node forwards WHIP and WHEP POSTs to the node it places them on
  (``whip_placement = "proxy"``, the default), so clients that neither follow redirects nor
  re-send their token get ``201`` with the session on that node, media flows, and
  ``DELETE`` there ends the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import yarl
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtp import AnyRtcpPacket, RtcpByePacket
from clients import LOOPBACK_CONFIG, TIMEOUT, frames, next_of, running_server
from multidict import CIMultiDict
from redis_server import RedisServer, redis_server

from sfu.app import Server
from sfu.config import AuthConfig, ClusterConfig, Config, HttpConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

SECRET = "cluster-placement-secret-of-enough-length-0123"
NODES = ("node-a", "node-b", "node-c")
CLOSE_MOVED = 4011


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_config(url: str, node_id: str, port: int, **cluster: object) -> Config:
    return dataclasses.replace(
        LOOPBACK_CONFIG,
        http=HttpConfig(host="127.0.0.1", port=port),
        auth=AuthConfig(jwt_secret=SECRET),
        cluster=ClusterConfig(
            redis_url=url,
            node_id=node_id,
            region="eu",
            public_url=f"http://127.0.0.1:{port}",
            **cluster,  # type: ignore[arg-type]
        ),
    )


def bearer(room: str, identity: str, grants: Grant = Grant.PUBLISH | Grant.SUBSCRIBE) -> str:
    now = int(time.time())
    claims = JoinClaims(
        room=room, identity=identity, name=identity, grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(SECRET, claims))


@contextlib.asynccontextmanager
async def three_nodes(url: str, **first: object) -> AsyncIterator[tuple[list[Server], list[str]]]:
    """Nodes A, B, C (``first``: A's extra ``[cluster]`` keys), once each sees all three."""
    async with contextlib.AsyncExitStack() as stack:
        servers, bases = [], []
        for i, node_id in enumerate(NODES):
            config = node_config(url, node_id, free_tcp_port(), **(first if i == 0 else {}))
            node, base = await stack.enter_async_context(running_server(config))
            servers.append(node)
            bases.append(base)
        deadline = time.monotonic() + TIMEOUT
        while not all(
            s.cluster is not None and len([p for p in s.cluster.peers if p.url]) == 3
            for s in servers
        ):
            assert time.monotonic() < deadline, "the nodes never saw each other"
            await asyncio.sleep(0.05)
        yield servers, bases


async def join(
    http: aiohttp.ClientSession, ws_url: str, room: str, identity: str, **extra: object
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, object]]:
    ws = await http.ws_connect(ws_url, autoping=True)
    token = bearer(room, identity)
    await ws.send_json({"type": "join", "protocol": 1, "room": room, "token": token, **extra})
    return ws, await ws.receive_json(timeout=TIMEOUT)


async def announced_full(node: Server) -> None:
    """Wait until ``node``'s lease announces it full (the next renewal after its seat is
    taken: a load of half its capacity, the nodes' ``max_load``)."""
    assert node.cluster is not None
    deadline = time.monotonic() + TIMEOUT
    while node.cluster.node.load < 0.5:
        assert time.monotonic() < deadline, "the node never announced its load"
        await asyncio.sleep(0.05)


async def closed_with(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    """Read until the server closes the socket; its close code."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        message = await ws.receive(timeout=max(0.01, deadline - time.monotonic()))
        if message.type is aiohttp.WSMsgType.CLOSE:
            return int(message.data)
        if message.type is aiohttp.WSMsgType.CLOSED:
            return ws.close_code
    raise AssertionError("the server never closed the socket")


def test_a_full_node_sends_joins_on_and_a_placed_join_stays(server: RedisServer) -> None:
    async def scenario() -> None:
        # Node A is sized for one participant, full at half of it.
        async with (
            three_nodes(
                server.url, capacity_participants=1, max_load=0.5, whip_placement="redirect"
            ) as (nodes, bases),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            node_a = nodes[0]
            others = {f"{b}/ws" for b in bases[1:]}
            alice, joined = await join(http, f"{bases[0]}/ws", "r1", "alice")
            assert joined["type"] == "joined", joined
            # Where to reconnect should node A be lost: the other two nodes.
            fallbacks = joined["nodes"]
            assert isinstance(fallbacks, list) and set(fallbacks) == others
            assert node_a.cluster is not None
            await announced_full(node_a)
            bob, reply = await join(http, f"{bases[0]}/ws", "r1", "bob")
            assert reply["type"] == "error" and reply["code"] == "moved", reply
            assert reply["url"] in others
            assert await closed_with(bob) == CLOSE_MOVED
            bob, joined = await join(http, str(reply["url"]), "r1", "bob", placed=True)
            assert joined["type"] == "joined", joined
            seen = await next_of(alice, "participant_joined")  # across nodes, one room
            assert seen["participant"]["identity"] == "bob"  # type: ignore[index]
            # The room is on Bob's node now as well: the joins of it that A sends on go there
            # (each publication then crosses to one node less), not to the third node.
            for name in ("dave", "erin", "frank"):
                other, moved = await join(http, f"{bases[0]}/ws", "r1", name)
                assert moved["type"] == "error" and moved["url"] == reply["url"], moved
                await other.close()
            # A join another node placed stays here, full or not: no client bounces.
            carol, joined = await join(http, f"{bases[0]}/ws", "r1", "carol", placed=True)
            assert joined["type"] == "joined", joined
            # WHIP, with whip_placement = "redirect": 307 to the same resource on another
            # node, marked as placed.
            headers = {
                "Authorization": f"Bearer {bearer('r2', 'cam')}",
                "Content-Type": "application/sdp",
            }
            async with http.post(
                f"{bases[0]}/whip/r2", data="v=0\r\n", headers=headers, allow_redirects=False
            ) as response:
                assert response.status == 307
                location = response.headers["Location"]
            assert any(location == f"{b}/whip/r2?placed=1" for b in bases[1:]), location
            async with http.post(
                f"{bases[0]}/whip/r2?placed=1", data="v=0\r\n", headers=headers
            ) as response:
                assert response.status == 400  # handled here: the offer itself is refused
            # Without a valid token nobody learns where the other nodes are.
            async with http.post(
                f"{bases[0]}/whip/r2", data="v=0\r\n", allow_redirects=False
            ) as response:
                assert response.status == 401
            async with http.get(f"{bases[0]}/metrics") as response:
                text = await response.text()
            assert 'sfu_cluster_redirects_total{reason="full"} 5.0' in text
            for ws in (alice, bob, carol):
                await ws.close()

    asyncio.run(scenario())


def test_a_full_node_without_the_room_sends_its_joins_where_the_room_is(
    server: RedisServer,
) -> None:
    """The room is on node B only; node A is full and holds nobody of it: every join of it
    at A goes to B, never to the idle C (the room would then cost a relay more)."""

    async def scenario() -> None:
        async with (
            three_nodes(
                server.url, capacity_participants=1, max_load=0.5, whip_placement="redirect"
            ) as (nodes, bases),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            node_a = nodes[0]
            assert node_a.cluster is not None and node_a.placement is not None
            # A's one seat is taken, in another room.
            alice, joined = await join(http, f"{bases[0]}/ws", "elsewhere", "alice")
            assert joined["type"] == "joined", joined
            await announced_full(node_a)
            bob, joined = await join(http, f"{bases[1]}/ws", "meeting", "bob")
            assert joined["type"] == "joined", joined
            assert "meeting" not in node_a.rooms.rooms  # type: ignore[union-attr]
            # B wrote its entry when the room opened there.
            deadline = time.monotonic() + TIMEOUT
            while await node_a.cluster.room_nodes("meeting") != {"node-b"}:
                assert time.monotonic() < deadline, "node B never recorded the room"
                await asyncio.sleep(0.05)
            # Each placement adds to B's load, so by load alone C would be the pick.
            for name in ("carol", "dave", "erin", "frank", "grace", "heidi"):
                other, moved = await join(http, f"{bases[0]}/ws", "meeting", name)
                assert moved["type"] == "error" and moved["code"] == "moved", moved
                assert moved["url"] == f"{bases[1]}/ws", (name, moved)
                await other.close()
            # WHIP of the room at A (whip_placement = "redirect"): 307 to B as well.
            headers = {
                "Authorization": f"Bearer {bearer('meeting', 'cam')}",
                "Content-Type": "application/sdp",
            }
            async with http.post(
                f"{bases[0]}/whip/meeting", data="v=0\r\n", headers=headers, allow_redirects=False
            ) as response:
                assert response.status == 307
                assert response.headers["Location"] == f"{bases[1]}/whip/meeting?placed=1"
            assert node_a.placement.lookups["found"] == 7
            async with http.get(f"{bases[0]}/metrics") as response:
                text = await response.text()
            assert 'sfu_cluster_room_lookups_total{result="found"} 7.0' in text
            assert "sfu_cluster_rooms_held 1.0" in text
            # The room ended on B: its entry goes, and A no longer finds it anywhere.
            await bob.close()
            deadline = time.monotonic() + TIMEOUT
            while await node_a.cluster.room_nodes("meeting"):
                assert time.monotonic() < deadline, "node B never removed its entry"
                await asyncio.sleep(0.05)
            await alice.close()

    asyncio.run(scenario())


def test_a_draining_node_moves_each_room_to_one_other_node(server: RedisServer) -> None:
    async def scenario() -> None:
        async with (
            three_nodes(server.url) as (nodes, bases),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            node_a = nodes[0]
            people = {}
            for room, identity in (("r1", "alice"), ("r1", "bob"), ("r2", "carol")):
                ws, joined = await join(http, f"{bases[0]}/ws", room, identity)
                assert joined["type"] == "joined", joined
                people[identity] = ws
            started = time.monotonic()
            drain = asyncio.create_task(node_a.drain(3.0))
            notices = {who: await next_of(ws, "server_draining") for who, ws in people.items()}
            others = {f"{b}/ws" for b in bases[1:]}
            assert all(n["url"] in others for n in notices.values()), notices
            # One room, one node: a room spread over fewer nodes needs fewer relays.
            assert notices["alice"]["url"] == notices["bob"]["url"]
            # A newcomer is sent on at once.
            _, reply = await join(http, f"{bases[0]}/ws", "r1", "dave")
            assert reply["type"] == "error" and reply["code"] == "moved", reply
            for ws in people.values():
                assert await closed_with(ws) == CLOSE_MOVED
            # Asked to move within the spread (2 s, or half the 3 s drain), not at the deadline.
            assert time.monotonic() - started < 2.5
            alice, joined = await join(http, str(notices["alice"]["url"]), "r1", "alice")
            assert joined["type"] == "joined", joined
            assert await asyncio.wait_for(drain, TIMEOUT), "the drain did not finish"
            assert node_a.placement is not None and node_a.placement.moved == 3
            assert node_a.placement.redirects["draining"] == 1
            await alice.close()

    asyncio.run(scenario())


#: How long a WHIP/WHEP client waits before it POSTs again after a refusal (404: the
#: stream it asks for is not on the node yet; 503: the node is busy).
RETRY_S = 0.2
#: The most a client may wait to notice that a drain ended its session. Without the BYE and
#: close_notify, aiortc would notice only when its consent checks fail (some 30 s, RFC 7675).
NOTICE_WITHIN_S = 3.0


@dataclasses.dataclass(eq=False)
class HttpMediaClient:
    """A WHIP publisher or WHEP viewer that does what a WHIP client such as OBS does when its
    connection ends: POST a fresh offer to the URL it was configured with, following ``307``
    itself (carrying its bearer token to the new node, which an HTTP library's own redirect
    handling drops when the origin changes), and retrying a refusal for a while."""

    url: str
    token: str
    kind: str  # "whip" or "whep"
    pc: RTCPeerConnection | None = None
    #: The session resource (absolute URL) of each connection, and the URL it was POSTed to.
    sessions: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: When each connection ended (monotonic), and when a BYE reached one of its receivers.
    ended: list[float] = dataclasses.field(default_factory=list)
    byes: list[float] = dataclasses.field(default_factory=list)
    #: The viewer's video track of the current connection.
    video: MediaStreamTrack | None = None
    _end: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def connect(self, http: aiohttp.ClientSession) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if self.kind == "whip":
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        else:
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                if track.kind == "video":
                    self.video = track

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc is self.pc and pc.connectionState in ("closed", "failed"):
                self.ended.append(time.monotonic())
                self._end.set()

        await pc.setLocalDescription(await pc.createOffer())
        answer, location, posted = await self._post(http, pc.localDescription.sdp)
        self.sessions.append((location, posted))
        self.pc = pc
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        for receiver in pc.getReceivers():
            self._watch_byes(receiver)

    async def _post(self, http: aiohttp.ClientSession, offer: str) -> tuple[str, str, str]:
        """POST ``offer`` to :attr:`url`: (answer, session URL, the URL that answered)."""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/sdp"}
        deadline = time.monotonic() + TIMEOUT
        url, hops = self.url, 0
        while True:
            async with http.post(url, data=offer, headers=headers, allow_redirects=False) as r:
                body = await r.text()
                if r.status == 307 and hops < 3:
                    url, hops = str(r.url.join(yarl.URL(r.headers["Location"]))), hops + 1
                    continue
                if r.status == 201:
                    return body, str(r.url.join(yarl.URL(r.headers["Location"]))), url
                assert r.status in (404, 503), (r.status, body)
            assert time.monotonic() < deadline, f"{self.kind}: never answered ({body})"
            url, hops = self.url, 0  # start over where the client was configured to go
            await asyncio.sleep(RETRY_S)

    def _watch_byes(self, receiver: RTCRtpReceiver) -> None:
        handle = receiver._handle_rtcp_packet

        async def watched(packet: AnyRtcpPacket) -> None:
            if isinstance(packet, RtcpByePacket):
                self.byes.append(time.monotonic())
            await handle(packet)

        receiver._handle_rtcp_packet = watched  # type: ignore[method-assign]

    async def keep_connected(self, http: aiohttp.ClientSession) -> None:
        """Reconnect whenever the connection ends (run as a task; cancel to stop)."""
        while True:
            await self._end.wait()
            self._end.clear()
            await self.connect(http)

    async def close(self) -> None:
        if self.pc is not None:
            pc, self.pc = self.pc, None
            await pc.close()


def test_a_draining_node_moves_whip_and_whep_sessions_to_the_rooms_node(
    server: RedisServer,
) -> None:
    """A WHIP publisher and a WHEP viewer of it on node A; A drains. Each session ends
    within the move spread, so that the client notices at once (the viewer's receivers get
    an RTCP BYE; both see the DTLS close_notify), its resource then answers 404, and both
    clients, POSTing again to A as configured, have their POSTs forwarded by A to the one
    node the room went to, where the viewer decodes the republished stream."""

    async def scenario() -> None:
        async with (
            three_nodes(server.url) as (nodes, bases),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            node_a = nodes[0]
            assert node_a.placement is not None
            room = "broadcast"
            caster = HttpMediaClient(
                f"{bases[0]}/whip/{room}", bearer(room, "caster", Grant.PUBLISH), "whip"
            )
            viewer = HttpMediaClient(
                f"{bases[0]}/whep/{room}/caster",
                bearer(room, "viewer", Grant.SUBSCRIBE),
                "whep",
            )
            tasks: list[asyncio.Task[None]] = []
            try:
                await caster.connect(http)
                await viewer.connect(http)
                # Both are on A: it was neither full nor draining.
                assert [posted for _, posted in caster.sessions + viewer.sessions] == [
                    caster.url,
                    viewer.url,
                ]
                assert viewer.video is not None
                await asyncio.wait_for(frames(viewer.video, 5), TIMEOUT)
                # A page in the same room, on the WebSocket: it is told where the room goes.
                alice, joined = await join(http, f"{bases[0]}/ws", room, "alice")
                assert joined["type"] == "joined", joined
                tasks = [
                    asyncio.create_task(client.keep_connected(http)) for client in (caster, viewer)
                ]
                started = time.monotonic()
                drain = asyncio.create_task(node_a.drain(3.0))
                notice = await next_of(alice, "server_draining")
                assert await closed_with(alice) == CLOSE_MOVED
                deadline = started + TIMEOUT
                while not (caster.ended and viewer.ended and viewer.byes):
                    assert time.monotonic() < deadline, "a session was never ended"
                    await asyncio.sleep(0.02)
                # Within the spread (2 s, or half of the 3 s drain), far before consent
                # freshness would have told the clients.
                assert caster.ended[0] - started < NOTICE_WITHIN_S
                assert viewer.ended[0] - started < NOTICE_WITHIN_S
                assert viewer.byes[0] - started < NOTICE_WITHIN_S
                assert viewer.byes[0] <= viewer.ended[0]  # the BYE came before the close
                # The ended sessions' resources are gone.
                for client in (caster, viewer):
                    async with http.delete(client.sessions[0][0]) as response:
                        assert response.status == 404
                # Both POSTed to A again and were sent on to the same node.
                while not (len(caster.sessions) == 2 and len(viewer.sessions) == 2):
                    assert time.monotonic() < deadline, "a client never got back in"
                    await asyncio.sleep(0.02)
                # A forwarded their POSTs (whip_placement = "proxy", the default): each was
                # answered at A's URL, with its session resource on the node the room went to.
                posted = [client.sessions[1][1] for client in (caster, viewer)]
                assert posted == [caster.url, viewer.url], posted
                landed = [yarl.URL(client.sessions[1][0]) for client in (caster, viewer)]
                nodes_landed = {str(url.origin()) for url in landed}
                assert len(nodes_landed) == 1 and bases[0] not in nodes_landed, nodes_landed
                (target,) = nodes_landed
                # Where the page was told the room goes (the room does not split).
                assert notice["url"] == f"{target}/ws", (notice, target)
                assert await asyncio.wait_for(drain, TIMEOUT), "the drain did not finish"
                # The viewer decodes the stream its publisher sends to the new node.
                assert viewer.video is not None
                assert await asyncio.wait_for(frames(viewer.video, 10), TIMEOUT) == 10
                there = nodes[bases.index(target)]
                assert there.rooms is not None
                kinds = {p.identity: p.kind for p in there.rooms.rooms[room].participants.values()}
                assert kinds == {"caster": "whip", "viewer": "whep"}
                # Counted by kind; A's placements of the room counted as draining redirects.
                assert node_a.placement.moved_by == {"websocket": 1, "whip": 1, "whep": 1}
                assert node_a.placement.redirects["draining"] >= 2
                async with http.get(f"{bases[0]}/metrics") as response:
                    text = await response.text()
                assert 'sfu_cluster_participants_moved_total{kind="whip"} 1.0' in text
                assert 'sfu_cluster_participants_moved_total{kind="whep"} 1.0' in text
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await viewer.close()
                await caster.close()

    asyncio.run(scenario())


async def post_once(
    http: aiohttp.ClientSession, url: str, token: str, offer: str
) -> tuple[int, str, CIMultiDict[str]]:
    """One POST as a strict HTTP client makes it: no redirect followed, the token sent to
    the URL it was configured with only. (status, body, headers)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"}
    async with http.post(url, data=offer, headers=headers, allow_redirects=False) as response:
        return response.status, await response.text(), CIMultiDict(response.headers)


def test_a_full_node_forwards_whip_and_whep_to_the_node_it_places_them_on(
    server: RedisServer,
) -> None:
    """Node A is full. An aiortc WHIP publisher and a WHEP viewer POST to A with a client
    that neither follows redirects nor re-sends credentials: A forwards each POST, both get
    ``201`` at once with an absolute ``Location`` on the node they were placed on (one node:
    the viewer goes where the room is), the viewer decodes the publisher's frames, and a
    ``DELETE`` of each Location, sent there directly, ends its session."""

    async def scenario() -> None:
        async with (
            three_nodes(server.url, capacity_participants=1, max_load=0.5) as (nodes, bases),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http,
        ):
            node_a = nodes[0]
            assert node_a.cluster is not None and node_a.placement is not None
            alice, joined = await join(http, f"{bases[0]}/ws", "elsewhere", "alice")
            assert joined["type"] == "joined", joined
            await announced_full(node_a)
            room = "show"
            caster = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            viewer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            try:
                caster.addTransceiver(AudioStreamTrack(), direction="sendonly")
                caster.addTransceiver(VideoStreamTrack(), direction="sendonly")
                await caster.setLocalDescription(await caster.createOffer())
                status, answer, headers = await post_once(
                    http,
                    f"{bases[0]}/whip/{room}",
                    bearer(room, "caster", Grant.PUBLISH),
                    caster.localDescription.sdp,
                )
                assert status == 201, (status, answer)
                assert headers["Content-Type"] == "application/sdp"
                caster_url = yarl.URL(headers["Location"])
                assert caster_url.is_absolute(), caster_url
                target = str(caster_url.origin())
                assert target in bases[1:], (target, bases)
                assert caster_url.path.startswith(f"/whip/{room}/")
                await caster.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                # The target recorded the room in the directory: A sends the viewer there.
                deadline = time.monotonic() + TIMEOUT
                while await node_a.cluster.room_nodes(room) != {NODES[bases.index(target)]}:
                    assert time.monotonic() < deadline, "the room was never recorded"
                    await asyncio.sleep(0.05)

                videos: list[MediaStreamTrack] = []

                @viewer.on("track")
                def on_track(track: MediaStreamTrack) -> None:
                    if track.kind == "video":
                        videos.append(track)

                viewer.addTransceiver("audio", direction="recvonly")
                viewer.addTransceiver("video", direction="recvonly")
                await viewer.setLocalDescription(await viewer.createOffer())
                status, answer, headers = await post_once(
                    http,
                    f"{bases[0]}/whep/{room}/caster",
                    bearer(room, "viewer", Grant.SUBSCRIBE),
                    viewer.localDescription.sdp,
                )
                assert status == 201, (status, answer)
                viewer_url = yarl.URL(headers["Location"])
                assert str(viewer_url.origin()) == target, (viewer_url, target)
                assert viewer_url.path.startswith(f"/whep/{room}/caster/")
                await viewer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                assert videos, "the viewer got no video track"
                assert await asyncio.wait_for(frames(videos[0], 5), TIMEOUT) == 5

                there = nodes[bases.index(target)]
                assert there.rooms is not None
                kinds = {p.identity: p.kind for p in there.rooms.rooms[room].participants.values()}
                assert kinds == {"caster": "whip", "viewer": "whep"}
                assert node_a.rooms is not None and room not in node_a.rooms.rooms
                async with http.get(f"{bases[0]}/metrics") as response:
                    text = await response.text()
                assert 'sfu_cluster_whip_forwards_total{result="forwarded"} 2.0' in text
                assert 'sfu_cluster_whip_forwards_total{result="fallback"} 0.0' in text
                assert 'sfu_cluster_redirects_total{reason="full"} 2.0' in text

                # The sessions end at their node, with no credentials but the resource itself.
                for url in (viewer_url, caster_url):
                    async with http.delete(url) as response:
                        assert response.status == 200
                    async with http.delete(url) as response:
                        assert response.status == 404
                deadline = time.monotonic() + TIMEOUT
                while there.rooms.rooms.get(room) is not None and (
                    there.rooms.rooms[room].participants
                ):
                    assert time.monotonic() < deadline, "the sessions never left the room"
                    await asyncio.sleep(0.05)
            finally:
                await viewer.close()
                await caster.close()
                await alice.close()

    asyncio.run(scenario())
