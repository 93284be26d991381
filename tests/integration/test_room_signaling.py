"""The room protocol over a real WebSocket (docs/protocol.md) against an in-process server.

Joining and presence; every kind of bad input gets its precise ``error`` reply, keeps the
connection open, changes no state and leaves the other participants undisturbed; join
problems close with the documented codes and create nothing; the size and rate limits.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import VideoStreamTrack
from clients import TIMEOUT, room_state, running_server

import sfu.signaling.room_ws
from sfu.app import Server
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM = "signaling-room"
BOTH = Grant.PUBLISH | Grant.SUBSCRIBE
#: How long to wait for a message that must NOT come.
QUIET = 0.2


def token(
    server: Server,
    identity: str,
    *,
    room: str = ROOM,
    grants: Grant = BOTH,
    secret: str | None = None,
    iat_offset: int = 0,
) -> str:
    now = int(time.time()) + iat_offset
    claims = JoinClaims(
        room=room, identity=identity, name=f"{identity}!", grants=grants, iat=now, exp=now + 600
    )
    return str(issue_token(secret or server.token_secret, claims))


class Client:
    """One room-protocol WebSocket with bounded receives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.joined: dict[str, Any] = {}

    @property
    def id(self) -> str:
        return str(self.joined["participant"]["id"])

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        data = json.loads(msg.data)
        assert isinstance(data, dict)
        return data

    async def expect(self, kind: str) -> dict[str, Any]:
        message = await self.recv()
        assert message["type"] == kind, message
        return message

    async def quiet(self) -> None:
        """Nothing arrives for a moment."""
        with pytest.raises(asyncio.TimeoutError):
            extra = await self.ws.receive(timeout=QUIET)
            pytest.fail(f"unexpected message {extra}")

    async def ping(self, rid: str | int = "alive") -> None:
        """The connection is open and the very next message answers our ping."""
        await self.send({"type": "ping", "id": rid})
        assert await self.recv() == {"type": "pong", "re": rid}

    async def closed(self) -> tuple[int, str]:
        """Wait for the server's close; returns (code, reason)."""
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert self.ws.close_code is not None
        return self.ws.close_code, str(msg.extra or "")

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.send(message)
        return await self.recv()


@asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
        yield s


async def connect(http: aiohttp.ClientSession, base: str) -> Client:
    return Client(await http.ws_connect(f"{base}/ws", autoping=True))


async def join(http: aiohttp.ClientSession, base: str, bearer: str, *, room: str = ROOM) -> Client:
    client = await connect(http, base)
    reply = await client.request({"type": "join", "protocol": 1, "room": room, "token": bearer})
    assert reply["type"] == "joined", reply
    client.joined = reply
    return client


def run(scenario: Callable[[], Coroutine[Any, Any, None]], limit: float = 2 * TIMEOUT) -> None:
    asyncio.run(asyncio.wait_for(scenario(), limit))


async def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- SDP from a real WebRTC stack -----------------------------------------------------------


async def aiortc_offer(*, send_video: bool = False, recv: tuple[str, ...] = ()) -> str:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if send_video:
            pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        for kind in recv:
            pc.addTransceiver(kind, direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return str(pc.localDescription.sdp)
    finally:
        await pc.close()


def without_fingerprint(sdp: str) -> str:
    return "".join(
        line for line in sdp.splitlines(keepends=True) if not line.startswith("a=fingerprint")
    )


def without_codecs(sdp: str) -> str:
    """Every codec description gone; the m= lines name payload types nothing describes."""
    kept = [
        line
        for line in sdp.splitlines(keepends=True)
        if not line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))
    ]
    return re.sub(r"^(m=video \S+ \S+) .*$", r"\1 120", "".join(kept), flags=re.M)


# -- joining and presence -------------------------------------------------------------------


def test_join_presence_and_leave() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            assert server.rooms is not None
            alice = await join(http, base, token(server, "alice"))
            joined = alice.joined
            assert joined["protocol"] == 1 and joined["room"] == ROOM
            me = joined["participant"]
            assert me["id"].startswith("PA_") and me["identity"] == "alice"
            assert me["name"] == "alice!" and me["tracks"] == []
            assert joined["grants"] == ["publish", "subscribe"]
            assert joined["participants"] == []

            bob = await join(http, base, token(server, "bob", grants=Grant.SUBSCRIBE))
            assert bob.joined["grants"] == ["subscribe"]
            assert [p["id"] for p in bob.joined["participants"]] == [alice.id]
            assert bob.joined["participants"][0]["identity"] == "alice"
            arrived = await alice.expect("participant_joined")
            assert arrived["participant"]["id"] == bob.id
            assert arrived["participant"]["identity"] == "bob"
            assert set(server.rooms.rooms[ROOM].participants) == {alice.id, bob.id}

            await bob.send({"type": "leave", "id": 1})
            assert (await bob.closed())[0] == 1000
            assert await alice.expect("participant_left") == {
                "type": "participant_left",
                "participant": bob.id,
            }
            await wait_until(lambda: len(server.rooms.rooms[ROOM].participants) == 1)

            # Closing the socket without a leave is a leave too.
            carol = await join(http, base, token(server, "carol"))
            assert (await alice.expect("participant_joined"))["participant"]["id"] == carol.id
            await carol.ws.close()
            assert (await alice.expect("participant_left"))["participant"] == carol.id

            # The same identity joining again replaces the old connection (4009).
            alice2 = await join(http, base, token(server, "alice"))
            code, _reason = await alice.closed()
            assert code == 4009
            assert [p["identity"] for p in alice2.joined["participants"]] == []
            await alice2.ws.close()
            await wait_until(lambda: not server.rooms.rooms)
            assert server.port.transport_count == 0

    run(scenario)


# -- bad input: an error reply, nothing else ------------------------------------------------

OFFERS = ("invalid sdp", "codec-less sdp", "no fingerprint", "unknown subscription")

BAD_INPUT: list[tuple[str, str | dict[str, Any], str, object, str]] = [
    # name, message (raw text or a JSON object), code, expected "re", text in "message"
    ("malformed json", '{"type": "ping", "id": 1', "bad_json", None, "JSON"),
    ("json array", '[{"type": "ping"}]', "bad_json", None, "object"),
    ("json string", '"ping"', "bad_json", None, "object"),
    ("unknown type", {"type": "dance", "id": "r1"}, "unknown_type", "r1", "dance"),
    ("missing type", {"id": 3}, "bad_message", 3, "'type'"),
    ("type not a string", {"type": 7, "id": "t"}, "bad_message", "t", "'type'"),
    ("bad id", {"type": "ping", "id": True}, "bad_message", None, "'id'"),
    ("long id", {"type": "ping", "id": "x" * 65}, "bad_message", None, "'id'"),
    ("missing track", {"type": "unsubscribe", "id": "u"}, "bad_message", "u", "'track'"),
    ("empty track", {"type": "prefs", "track": "", "id": 4}, "bad_message", 4, "'track'"),
    (
        "layer out of range",
        {"type": "prefs", "track": "TR_x", "max_spatial": 7, "id": 5},
        "bad_message",
        5,
        "'max_spatial'",
    ),
    (
        "paused not a bool",
        {"type": "prefs", "track": "TR_x", "paused": "yes", "id": 5},
        "bad_message",
        5,
        "'paused'",
    ),
    ("missing muted", {"type": "mute", "track": "TR_x", "id": 6}, "bad_message", 6, "'muted'"),
    ("sdp not a string", {"type": "offer", "sdp": 5, "id": 7}, "bad_message", 7, "'sdp'"),
    (
        "tracks not an object",
        {"type": "offer", "sdp": "v=0", "tracks": [], "id": 8},
        "bad_message",
        8,
        "'tracks'",
    ),
    (
        "subscription not a track id",
        {"type": "offer", "sdp": "v=0", "subscriptions": {"0": 1}, "id": 9},
        "bad_message",
        9,
        "'subscriptions.0'",
    ),
    (
        "too large",
        {"type": "ping", "id": "big", "pad": "x" * (300 * 1024)},
        "too_large",
        None,
        "limit",
    ),
    (
        "second join",
        {"type": "join", "protocol": 1, "room": ROOM, "token": "t", "id": "j"},
        "already_joined",
        "j",
        "already",
    ),
    ("invalid sdp", {"type": "offer", "sdp": "hello", "id": "o1"}, "bad_offer", "o1", "SDP"),
    ("codec-less sdp", {"type": "offer", "id": "o2"}, "bad_offer", "o2", "no supported codec"),
    ("no fingerprint", {"type": "offer", "id": "o3"}, "bad_offer", "o3", "fingerprint"),
    ("unknown subscription", {"type": "offer", "id": "o4"}, "unknown_track", "o4", "TR_nope"),
    (
        "prefs unknown track",
        {"type": "prefs", "track": "TR_nope", "id": 10},
        "unknown_track",
        10,
        "TR_nope",
    ),
    (
        "unsubscribe unknown track",
        {"type": "unsubscribe", "track": "TR_nope", "id": 11},
        "unknown_track",
        11,
        "TR_nope",
    ),
    (
        "mute unknown track",
        {"type": "mute", "track": "TR_nope", "muted": True, "id": 12},
        "unknown_track",
        12,
        "TR_nope",
    ),
]


@pytest.mark.parametrize(
    ("name", "message", "code", "rid", "text"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_gets_a_precise_error_and_changes_nothing(
    name: str, message: str | dict[str, Any], code: str, rid: object, text: str
) -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            alice = await join(http, base, token(server, "alice"))
            bob = await join(http, base, token(server, "bob"))
            await alice.expect("participant_joined")
            if isinstance(message, dict) and message.get("type") == "offer" and name in OFFERS:
                if name == "codec-less sdp":
                    message["sdp"] = without_codecs(await aiortc_offer(send_video=True))
                elif name == "no fingerprint":
                    message["sdp"] = without_fingerprint(await aiortc_offer(send_video=True))
                elif name == "unknown subscription":
                    message["sdp"] = await aiortc_offer(recv=("video",))
                    message["subscriptions"] = {"0": "TR_nope"}
            before = room_state(server)

            raw = message if isinstance(message, str) else json.dumps(message)
            await alice.ws.send_str(raw)
            reply = await alice.recv()
            assert reply["type"] == "error", reply
            assert reply["code"] == code, reply
            assert reply.get("re") == rid, reply
            assert text in reply["message"], reply
            assert len(reply["message"]) < 200  # clipped, never the whole input echoed

            # Still connected, nothing else queued, nothing changed, bob saw nothing.
            await alice.ping()
            assert room_state(server) == before
            await bob.ping()
            await bob.quiet()
            await alice.quiet()

    run(scenario)


def test_binary_frames_and_no_publish_grant() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            viewer = await join(http, base, token(server, "viewer", grants=Grant.SUBSCRIBE))
            before = room_state(server)
            await viewer.ws.send_bytes(b'{"type": "ping"}')
            reply = await viewer.recv()
            assert reply["type"] == "error" and reply["code"] == "bad_json", reply
            offer = await aiortc_offer(send_video=True)
            reply = await viewer.request({"type": "offer", "sdp": offer, "id": "p"})
            assert reply["type"] == "error" and reply["code"] == "forbidden", reply
            assert reply["re"] == "p" and "publish" in reply["message"]
            await viewer.ping()
            assert room_state(server) == before

    run(scenario)


# -- valid offers ---------------------------------------------------------------------------


def test_publish_subscribe_mute_and_unpublish() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            assert server.rooms is not None
            alice = await join(http, base, token(server, "alice"))
            bob = await join(http, base, token(server, "bob"))
            await alice.expect("participant_joined")

            offer = await aiortc_offer(send_video=True)
            answer = await alice.request(
                {"type": "offer", "sdp": offer, "tracks": {"0": {"name": "cam"}}, "id": "pub"}
            )
            # Alice hears about her own track too (it is broadcast to the whole room); the
            # protocol does not order the event and the reply.
            own = await alice.recv()
            if answer["type"] != "answer":
                answer, own = own, answer
            assert answer["type"] == "answer" and answer["re"] == "pub", answer
            assert own["type"] == "track_published", own
            assert own["track"]["id"] == answer["tracks"]["0"]
            assert answer["sdp"].startswith("v=0") and "a=recvonly" in answer["sdp"]
            assert set(answer["tracks"]) == {"0"}
            track_id = answer["tracks"]["0"]
            assert track_id.startswith("TR_")
            published = await bob.expect("track_published")
            assert published["track"]["id"] == track_id
            assert published["track"]["participant"] == alice.id
            assert published["track"]["kind"] == "video"
            assert published["track"]["name"] == "cam"
            assert published["track"]["muted"] is False
            assert server.port.transport_count == 1

            # Bob subscribes with a recvonly section bound to the track.
            sub_offer = await aiortc_offer(recv=("video",))
            answer = await bob.request(
                {"type": "offer", "sdp": sub_offer, "subscriptions": {"0": track_id}, "id": 2}
            )
            assert answer["type"] == "answer" and answer["re"] == 2, answer
            assert answer["tracks"] == {}
            assert "a=sendonly" in answer["sdp"] and "a=ssrc:" in answer["sdp"]
            bob_peer = server.rooms.rooms[ROOM].participants[bob.id].peer
            assert bob_peer is not None and len(bob_peer.subscriptions) == 1
            assert server.port.transport_count == 2

            assert await bob.request(
                {"type": "prefs", "track": track_id, "max_spatial": 0, "paused": True, "id": 3}
            ) == {"type": "ok", "re": 3}
            # Only the publisher may mute its track.
            reply = await bob.request({"type": "mute", "track": track_id, "muted": True, "id": 4})
            assert reply["code"] == "forbidden" and reply["re"] == 4
            await alice.send({"type": "mute", "track": track_id, "muted": True})
            muted = {"type": "track_muted", "track": track_id, "muted": True}
            got = [await alice.recv(), await alice.recv()]
            assert sorted(got, key=lambda m: m["type"]) == [{"type": "ok"}, muted]
            assert await bob.recv() == muted
            # Muting again changes nothing, so nobody is told.
            reply = await alice.request({"type": "mute", "track": track_id, "muted": True})
            assert reply == {"type": "ok"}
            assert await bob.request({"type": "unsubscribe", "track": track_id, "id": 5}) == {
                "type": "ok",
                "re": 5,
            }
            assert bob_peer.subscriptions == {}
            reply = await bob.request({"type": "unsubscribe", "track": track_id, "id": 6})
            assert reply["code"] == "unknown_track"

            # Alice goes: bob hears her track end, then her leave; her transport is freed.
            await alice.ws.close()
            assert await bob.recv() == {"type": "track_unpublished", "track": track_id}
            assert await bob.recv() == {"type": "participant_left", "participant": alice.id}
            await wait_until(lambda: server.port.transport_count == 1)
            await bob.ping()
            await bob.ws.close()
            await wait_until(lambda: not server.rooms.rooms and not server.port.transport_count)

    run(scenario)


# -- join problems: closed, nothing created -------------------------------------------------

JOIN_PROBLEMS: list[tuple[str, int, str]] = [
    ("first message not a join", 4000, "must be a join"),
    ("first message not json", 4000, "bad join"),
    ("binary first message", 4000, "must be a join"),
    ("join without room", 4000, "'room'"),
    ("unsupported protocol", 4000, "unsupported protocol"),
    ("token missing", 4001, "token missing"),
    ("token malformed", 4001, "token malformed"),
    ("token expired", 4001, "token expired"),
    ("token not yet valid", 4001, "token not yet valid"),
    ("token for another room", 4001, "token wrong room"),
    ("token bad signature", 4001, "token bad signature"),
]


@pytest.mark.parametrize(
    ("case", "code", "reason"), JOIN_PROBLEMS, ids=[c[0] for c in JOIN_PROBLEMS]
)
def test_join_problems_close_and_create_nothing(case: str, code: int, reason: str) -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            assert server.rooms is not None
            client = await connect(http, base)
            join_msg: dict[str, Any] = {
                "type": "join",
                "protocol": 1,
                "room": ROOM,
                "token": token(server, "mallory"),
            }
            if case == "first message not a join":
                await client.send({"type": "ping", "id": 1})
            elif case == "first message not json":
                await client.ws.send_str("hello")
            elif case == "binary first message":
                await client.ws.send_bytes(json.dumps(join_msg).encode())
            elif case == "join without room":
                del join_msg["room"]
                await client.send(join_msg)
            else:
                if case == "unsupported protocol":
                    join_msg["protocol"] = 2
                elif case == "token missing":
                    join_msg["token"] = ""
                elif case == "token malformed":
                    join_msg["token"] = "not.a-jwt"
                elif case == "token expired":
                    join_msg["token"] = token(server, "mallory", iat_offset=-3600)
                elif case == "token not yet valid":
                    join_msg["token"] = token(server, "mallory", iat_offset=3600)
                elif case == "token for another room":
                    join_msg["token"] = token(server, "mallory", room="elsewhere")
                elif case == "token bad signature":
                    join_msg["token"] = token(server, "mallory", secret="s" * 40)
                await client.send(join_msg)
            got_code, got_reason = await client.closed()
            assert got_code == code
            assert reason in got_reason
            assert server.rooms.rooms == {}
            assert server.port.transport_count == 0
            await wait_until(lambda: not server.sockets.open)

    run(scenario)


def test_no_join_in_time_closes_4008(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sfu.signaling.room_ws, "JOIN_TIMEOUT", 0.5)

    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            client = await connect(http, base)
            started = time.monotonic()
            code, reason = await client.closed()
            assert code == 4008 and "join" in reason
            assert 0.4 < time.monotonic() - started < 5.0
            assert server.rooms is not None and server.rooms.rooms == {}

    run(scenario)


# -- limits ---------------------------------------------------------------------------------


def test_frame_over_a_mebibyte_closes_1009() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            assert server.rooms is not None
            bob = await join(http, base, token(server, "bob"))
            alice = await join(http, base, token(server, "alice"))
            await bob.expect("participant_joined")
            await alice.ws.send_str(json.dumps({"type": "ping", "pad": "x" * (1024 * 1024)}))
            code, _reason = await alice.closed()
            assert code == 1009
            assert await bob.recv() == {"type": "participant_left", "participant": alice.id}
            await bob.ping()
            await bob.quiet()
            assert set(server.rooms.rooms[ROOM].participants) == {bob.id}

    run(scenario)


def test_rate_limit_answers_errors_and_keeps_the_connection() -> None:
    async def scenario() -> None:
        async with running_server() as (server, base), session() as http:
            bob = await join(http, base, token(server, "bob"))
            alice = await join(http, base, token(server, "alice"))
            await bob.expect("participant_joined")
            count = 150
            for i in range(count):
                await alice.send({"type": "ping", "id": i})
            pongs, limited = [], 0
            for _ in range(count):
                reply = await alice.recv()
                if reply["type"] == "pong":
                    pongs.append(reply["re"])
                else:
                    assert reply["type"] == "error" and reply["code"] == "rate_limited", reply
                    limited += 1
            assert limited > 0 and len(pongs) >= 100
            assert pongs == sorted(pongs)
            await asyncio.sleep(0.2)  # the bucket refills
            await alice.ping()
            await alice.quiet()
            await bob.ping()
            await bob.quiet()

    run(scenario)
