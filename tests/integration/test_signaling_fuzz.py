"""Fuzzing the signaling surface of a running server: the room WebSocket, WHIP and WHEP.

One server runs for the whole test on an event loop in a background thread; hypothesis drives
it from the test thread. An ``observer`` participant publishes real aiortc media into the room
and a ``fuzzer`` participant sends random messages (JSON objects with real and fake types and
random fields, SDP-ish strings built by mutating real offers, arbitrary text). Between them,
random requests hit ``POST /whip/{room}`` and ``POST /whep/{room}/{identity}``, and the room
policy admin API (``GET``/``PUT``/``DELETE /rooms/{room}/policy``) gets random tokens and bodies.
The fuzzer holds the ``host`` grant, so its moderation messages reach the room rules; the
observer holds ``admin`` (which a host may not moderate) and an ``outsider`` sits in another
room, whose participant is a target no action may reach.

Every WebSocket message gets exactly one reply, the one the parser and the room rules allow
(an ``error`` reply leaves the server's state exactly as it was); every HTTP request gets a
status below 500 (a refused one changes nothing, an accepted one is deleted again). At the end
both participants are still connected, the observer never saw anything but room events, and
the server holds exactly the transports of the participants whose offers were accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import string
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import aioice.ice
import aiortc.codecs.vpx
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from clients import TIMEOUT, room_state, running_server
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import sfu.signaling.room_ws
from sfu.app import Server
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token
from sfu.signaling.protocol import (
    AdmitAll,
    EndMeeting,
    Join,
    Leave,
    Lock,
    ModerationMessage,
    Mute,
    Offer,
    Ping,
    Preferences,
    ProtocolError,
    Unsubscribe,
    parse_client_message,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
ROOM = "fuzz-room"
OTHER_ROOM = "fuzz-elsewhere"
BOTH = Grant.PUBLISH | Grant.SUBSCRIBE
REPLIES = {"answer", "ok", "pong", "error"}
EVENTS = {
    "participant_joined",
    "participant_left",
    "track_published",
    "track_unpublished",
    "track_muted",
    "speakers",
    "policy",
    "waiting_list",
}
MODERATION_TYPES = [
    "admit",
    "deny",
    "admit_all",
    "remove",
    "request_mute",
    "force_mute",
    "lock",
    "end_meeting",
]
#: What moderation by a host may be refused with here (every target is out of its reach).
MODERATION_ERRORS = {
    "forbidden",
    "unknown_participant",
    "unknown_track",
    "bad_message",
    "unsupported",
}
OFFER_ERRORS = {"bad_offer", "bad_message", "unknown_track", "forbidden"}
TOKEN_CHARS = string.ascii_letters + string.digits + "-_"
PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))


def token(server: Server, identity: str, room: str, grants: Grant) -> str:
    now = int(time.time())
    claims = JoinClaims(room=room, identity=identity, grants=grants, iat=now, exp=now + 600)
    return str(issue_token(server.token_secret, claims))


class Client:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.id = ""
        self.markers = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(message))

    async def recv(self) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=TIMEOUT)
        assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
        data = json.loads(msg.data)
        assert isinstance(data, dict)
        return data

    async def settle(self) -> list[dict[str, Any]]:
        """Everything that arrives before the answer to a fresh ping (which proves the
        connection is open and the server has handled all we sent)."""
        self.markers += 1
        marker = f"\x00marker-{self.markers}"
        await self.send({"type": "ping", "id": marker})
        got: list[dict[str, Any]] = []
        while True:
            message = await self.recv()
            if message == {"type": "pong", "re": marker}:
                return got
            got.append(message)


async def local_offer(pc: RTCPeerConnection) -> str:
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


class Harness:
    """A server, an observer publishing real media, a fuzzer, on a background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.stack = contextlib.AsyncExitStack()
        self.fuzzer_tracks: list[str] = []
        self.counts: dict[str, int] = {}

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 2 * TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def __enter__(self) -> Harness:
        self.thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        try:
            self.run(self.stack.aclose())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()

    async def _pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.stack.push_async_callback(pc.close)
        return pc

    async def _join(self, identity: str, grants: Grant = BOTH, room: str = ROOM) -> Client:
        ws = await self.http.ws_connect(f"{self.base}/ws")
        self.stack.push_async_callback(ws.close)
        client = Client(ws)
        bearer = token(self.server, identity, room, grants)
        await client.send({"type": "join", "protocol": 1, "room": room, "token": bearer})
        joined = await client.recv()
        assert joined["type"] == "joined", joined
        client.id = joined["participant"]["id"]
        return client

    async def _start(self) -> None:
        self.server, self.base = await self.stack.enter_async_context(running_server())
        # The fuzzer's accepted offers get transports nobody connects; with the default 30 s
        # ICE connect timeout a long run (say, while shrinking) would end it with 4010.
        self.server.port._connect_timeout = 600.0
        self.http = await self.stack.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        )
        # The observer publishes real audio and video, over a connected transport.
        self.observer_pc = await self._pc()
        self.observer_pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        self.observer_pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        self.observer = await self._join("observer", BOTH | Grant.ADMIN)
        sdp = await local_offer(self.observer_pc)
        await self.observer.send({"type": "offer", "sdp": sdp, "id": "publish"})
        answer = None
        for message in await self.observer.settle():
            if message["type"] == "answer":
                answer = message
            else:
                assert message["type"] == "track_published", message
        assert answer is not None and answer["re"] == "publish"
        await self.observer_pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        self.observer_tracks: dict[str, str] = answer["tracks"]  # mid -> track id
        deadline = time.monotonic() + TIMEOUT
        while self.observer_pc.connectionState != "connected":
            assert time.monotonic() < deadline, "observer did not connect"
            await asyncio.sleep(0.05)

        self.fuzzer = await self._join("fuzzer", BOTH | Grant.HOST)
        assert [m["type"] for m in await self.fuzzer.settle()] == []
        assert [m["type"] for m in await self.observer.settle()] == ["participant_joined"]
        self.outsider = await self._join("outsider", BOTH | Grant.HOST, OTHER_ROOM)

        # Real offers to mutate. The fuzzer's: two sendonly and two recvonly sections.
        pc = await self._pc()
        pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        self.fuzzer_offer = await local_offer(pc)
        whip = await self._pc()
        whip.addTransceiver(AudioStreamTrack(), direction="sendonly")
        whip.addTransceiver(VideoStreamTrack(), direction="sendonly")
        self.whip_offer = await local_offer(whip)
        whep = await self._pc()
        whep.addTransceiver("audio", direction="recvonly")
        whep.addTransceiver("video", direction="recvonly")
        self.whep_offer = await local_offer(whep)

    # -- one fuzz action each ------------------------------------------------------------------

    def resolve(self, value: Any) -> Any:
        """Replace "$OWN" with one of the fuzzer's own track ids and "$OBSERVER", "$FUZZER",
        "$OUTSIDER" with participant ids (known only at run time)."""
        if value == "$OWN":
            return self.fuzzer_tracks[0] if self.fuzzer_tracks else "TR_none"
        ids = {"$OBSERVER": self.observer, "$FUZZER": self.fuzzer, "$OUTSIDER": self.outsider}
        if isinstance(value, str) and value in ids:
            return ids[value].id
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value

    async def ws_action(self, message: dict[str, Any] | str) -> None:
        text = message if isinstance(message, str) else json.dumps(self.resolve(message))
        try:
            parsed = parse_client_message(text)
        except ProtocolError as exc:
            parsed, refusal = None, exc
        if isinstance(parsed, Leave | EndMeeting):
            return  # a valid leave or end_meeting ends the session: not something to fuzz
        before = self.state()
        await self.fuzzer.ws.send_str(text)
        got = await self.fuzzer.settle()
        replies = [m for m in got if m.get("type") in REPLIES]
        assert all(m.get("type") in EVENTS for m in got if m not in replies), got
        assert len(replies) == 1, got
        (reply,) = replies
        kind = reply["type"]
        self.count(f"ws {kind} {reply.get('code', '')}".strip())
        assert reply.get("code") != "internal", reply
        if parsed is None:
            assert kind == "error" and reply["code"] == refusal.code, (reply, refusal)
            assert reply.get("re") == refusal.request_id
        else:
            assert reply.get("re") == parsed.id, (reply, parsed)
            if isinstance(parsed, Join):
                assert kind == "error" and reply["code"] == "already_joined", reply
            elif isinstance(parsed, Ping):
                assert kind == "pong", reply
            elif isinstance(parsed, Offer):
                assert kind == "answer" or reply.get("code") in OFFER_ERRORS, reply
            elif isinstance(parsed, Unsubscribe | Preferences):
                assert kind == "ok" or reply.get("code") == "unknown_track", reply
            elif isinstance(parsed, AdmitAll | Lock):
                assert kind == "ok", reply  # a host may; nobody waits here
            elif isinstance(parsed, ModerationMessage):
                assert reply.get("code") in MODERATION_ERRORS, reply
            else:
                assert isinstance(parsed, Mute)
                assert kind == "ok" or reply.get("code") in ("unknown_track", "forbidden"), reply
        others = await self.observer_sees_only_events()
        if kind == "error":
            # An error reply changes nothing and nobody hears of it.
            assert self.state() == before
            assert got == [reply] and others == [], (got, others)
        if kind == "answer":
            assert reply["sdp"].startswith("v=0")
            self.fuzzer_tracks = list(reply["tracks"].values())

    async def http_action(
        self,
        endpoint: str,
        room: str,
        target: str,
        auth: str,
        content_type: str | None,
        body: str | bytes,
        extra: tuple[str, str] | None,
    ) -> None:
        path = f"/whip/{quote(room, safe='')}"
        if endpoint == "whep":
            path = f"/whep/{quote(room, safe='')}/{quote(target, safe='')}"
        identity, grant = ("whip-caster", Grant.PUBLISH)
        if endpoint == "whep":
            identity, grant = ("whep-viewer", Grant.SUBSCRIBE)
        headers: dict[str, str] = {}
        if auth == "valid":
            headers["Authorization"] = f"Bearer {token(self.server, identity, room, grant)}"
        elif auth == "wrong room":
            headers["Authorization"] = f"Bearer {token(self.server, identity, room + 'x', grant)}"
        elif auth == "wrong grant":
            other = Grant.SUBSCRIBE if grant is Grant.PUBLISH else Grant.PUBLISH
            headers["Authorization"] = f"Bearer {token(self.server, identity, room, other)}"
        elif auth != "none":
            headers["Authorization"] = auth
        if content_type is not None:
            headers["Content-Type"] = content_type
        if extra is not None:
            headers.setdefault(*extra)
        before = room_state(self.server)
        async with self.http.post(self.base + path, data=body, headers=headers) as resp:
            status, text = resp.status, await resp.text(errors="replace")
            location = resp.headers.get("Location")
            challenge = resp.headers.get("WWW-Authenticate")
        self.count(f"{endpoint} {status}")
        assert 400 <= status < 500 or status == 201, (status, text)
        assert text.strip(), status  # every refusal says why
        if status == 401:
            assert challenge is not None and challenge.startswith("Bearer")
        if status == 201:
            assert location is not None and location.startswith(path + "/")
            async with self.http.delete(self.base + location) as resp:
                assert resp.status == 200, await resp.text()
        assert room_state(self.server) == before
        seen = await self.fuzzer.settle() + await self.observer_sees_only_events()
        assert all(message.get("type") in EVENTS for message in seen), seen
        if status != 201:
            assert seen == [], seen  # a refused request is invisible to the room

    def state(self) -> Any:
        """Room state plus the room policies and bans a refused request must not change."""
        rooms = self.server.rooms
        assert rooms is not None
        policies = tuple(rooms.policies.get(r) for r in (ROOM, OTHER_ROOM))
        return room_state(self.server), policies, len(rooms.policies), len(rooms.bans)

    async def policy_action(self, method: str, room: str, auth: str, body: Any) -> None:
        """One admin API request: below 500 always; a refusal changes nothing and is
        invisible; an accepted change is undone again (DELETE)."""
        url = f"{self.base}/rooms/{quote(room, safe='')}/policy"
        headers: dict[str, str] = {}
        if auth in ("admin", "host", "admin of another room"):
            grants = Grant.ADMIN if auth != "host" else Grant.HOST | BOTH
            claim_room = room if auth != "admin of another room" else room + "x"
            headers["Authorization"] = f"Bearer {token(self.server, 'api', claim_room, grants)}"
        elif auth != "none":
            headers["Authorization"] = auth
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        before = self.state()
        async with self.http.request(method, url, data=data, headers=headers) as resp:
            status, text = resp.status, await resp.text(errors="replace")
        self.count(f"policy {method} {status}")
        assert status < 500 and text.strip(), (status, text)
        if status >= 400 or method == "GET":
            assert self.state() == before
            assert await self.fuzzer.settle() == [] and await self.observer.settle() == []
            return
        policy = json.loads(text)["policy"]
        assert "password" not in policy and set(policy) >= {"password_set", "locked"}
        async with self.http.delete(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        assert self.state()[0] == before[0]
        seen = await self.fuzzer.settle() + await self.observer_sees_only_events()
        assert all(message.get("type") == "policy" for message in seen), seen

    async def observer_sees_only_events(self) -> list[dict[str, Any]]:
        messages = await self.observer.settle()
        for message in messages:
            assert message.get("type") in EVENTS, message
            assert "re" not in message, message
        return messages

    async def final_checks(self) -> None:
        server = self.server
        assert server.rooms is not None
        assert set(server.rooms.rooms) == {ROOM, OTHER_ROOM}
        room = server.rooms.rooms[ROOM]
        assert set(room.participants) == {self.observer.id, self.fuzzer.id}
        assert room.waiting == {}
        # Nothing done in the fuzzed room ever reached the other room.
        assert await self.outsider.settle() == []
        assert set(server.rooms.rooms[OTHER_ROOM].participants) == {self.outsider.id}
        await self.outsider.ws.close()
        assert server.http_sessions.by_id == {}
        # Exactly one transport per participant whose offer was accepted: none leaked.
        with_peers = [p for p in room.participants.values() if p.peer is not None]
        assert server.port.transport_count == len(with_peers)
        assert room.participants[self.observer.id].peer is not None
        assert set(room.publications) >= set(self.observer_tracks.values())
        assert self.observer_pc.connectionState == "connected"
        await self.observer_sees_only_events()
        assert [m["type"] for m in await self.fuzzer.settle()] == []
        # Everyone leaves: nothing is left behind.
        await self.fuzzer.ws.close()
        await self.observer.ws.close()
        deadline = time.monotonic() + TIMEOUT
        while server.rooms.rooms or server.port.transport_count:
            assert time.monotonic() < deadline, (server.rooms.rooms, server.port.transport_count)
            await asyncio.sleep(0.05)


# -- strategies ---------------------------------------------------------------------------------

SDP_ATTRIBUTES = [
    "mid:",
    "rtpmap:",
    "fmtp:",
    "extmap:",
    "ssrc:",
    "ssrc-group:FID ",
    "simulcast:send ",
    "rid:",
    "fingerprint:sha-256 ",
    "setup:",
    "ice-ufrag:",
    "ice-pwd:",
    "candidate:",
    "group:BUNDLE ",
    "msid:",
    "rtcp-fb:",
    "rtcp-mux",
    "sendonly",
    "recvonly",
    "inactive",
    "sendrecv",
]


def sdp_line() -> st.SearchStrategy[str]:
    value = st.text(PRINTABLE, max_size=30) | st.integers(-1, 2**33).map(str)
    return st.one_of(
        st.builds(lambda a, v: f"a={a}{v}", st.sampled_from(SDP_ATTRIBUTES), value),
        st.builds(
            lambda k, p, f: f"m={k} {p} UDP/TLS/RTP/SAVPF {f}",
            st.sampled_from(["audio", "video", "application", "text"]),
            st.integers(0, 70000),
            st.text("0123456789 ", max_size=12),
        ),
        st.builds(lambda t, v: f"{t}={v}", st.sampled_from("vosctbmxz"), value),
        st.text(PRINTABLE, max_size=40),
    )


@st.composite
def mutated_sdp(draw: st.DrawFn, offers: dict[str, str]) -> str:
    lines = offers[draw(st.sampled_from(sorted(offers)))].split("\r\n")
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, max(0, len(lines) - 1)))
        op = draw(st.sampled_from(["drop", "dup", "replace", "insert", "truncate", "edit"]))
        if op == "drop" and lines:
            del lines[i]
        elif op == "dup" and lines:
            lines.insert(i, lines[i])
        elif op == "replace" and lines:
            lines[i] = draw(sdp_line())
        elif op == "insert":
            lines.insert(i, draw(sdp_line()))
        elif op == "truncate":
            lines = lines[:i]
        elif op == "edit" and lines:
            line = lines[i]
            cut = draw(st.integers(0, len(line)))
            lines[i] = line[:cut] + draw(st.text(PRINTABLE, max_size=8)) + line[cut:]
    return draw(st.sampled_from(["\r\n", "\n"])).join(lines)


class Offers(dict[str, str]):
    """The real offers to mutate; a short repr keeps hypothesis' reports readable."""

    def __repr__(self) -> str:
        return f"Offers({', '.join(self)})"


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices`` with the given weights (``|`` flattens nested one_of strategies
    into equal shares, which would drown the interesting branches)."""
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(lambda s: s)


def strategies(h: Harness) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    offers = Offers(fuzzer=h.fuzzer_offer, whip=h.whip_offer, whep=h.whep_offer)
    sdp = weighted(
        (5, mutated_sdp(offers)),
        (2, st.sampled_from(sorted(offers)).map(offers.__getitem__)),
        (1, st.lists(sdp_line(), max_size=12).map("\r\n".join)),
    )
    observer_ids = list(h.observer_tracks.values())
    track = weighted(
        (4, st.sampled_from([*observer_ids, "$OWN", "TR_nope", ""])), (1, st.text(max_size=70))
    )
    scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    json_value = st.recursive(
        scalar,
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=10,
    )
    mids = weighted((4, st.sampled_from(["0", "1", "2", "3", "4", ""])), (1, st.text(max_size=34)))
    valid_id = st.none() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=64)
    bad_id = st.booleans() | st.text(min_size=65, max_size=70) | st.floats() | st.integers(2**53)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "protocol": weighted((4, st.just(1)), (1, st.sampled_from([2, "1", None]))),
        "room": st.sampled_from([ROOM, "other"]),
        "token": st.text(max_size=20),
        "sdp": weighted((6, sdp), (1, json_value)),
        "tracks": weighted(
            (4, st.dictionaries(mids, st.fixed_dictionaries({"name": st.text(max_size=66)}))),
            (1, json_value),
        ),
        "subscriptions": weighted((4, st.dictionaries(mids, track, max_size=4)), (1, json_value)),
        "track": weighted((6, track), (1, json_value)),
        "max_spatial": weighted((4, st.none() | st.integers(-1, 3)), (1, json_value)),
        "max_temporal": st.none() | st.integers(-1, 3),
        "paused": weighted((4, st.booleans()), (1, json_value)),
        "muted": weighted((4, st.booleans()), (1, json_value)),
        "participant": weighted(
            (4, st.sampled_from(["$OBSERVER", "$FUZZER", "$OUTSIDER", "PA_nobody", ""])),
            (1, json_value),
        ),
        "ban_s": weighted((4, st.none() | st.integers(-1, 700000)), (1, json_value)),
        "locked": weighted((4, st.booleans()), (1, json_value)),
        "password": st.none() | st.text(max_size=130),
    }
    shape = {  # the fields each type reads: (required, optional)
        "join": (["protocol", "room", "token"], []),
        "offer": (["sdp"], ["tracks", "subscriptions"]),
        "unsubscribe": (["track"], []),
        "prefs": (["track"], ["max_spatial", "max_temporal", "paused"]),
        "mute": (["track", "muted"], []),
        "ping": ([], []),
        "admit": (["participant"], []),
        "deny": (["participant"], []),
        "admit_all": ([], []),
        "remove": (["participant"], ["ban_s"]),
        "request_mute": (["track"], []),
        "force_mute": (["track"], ["muted"]),
        "lock": ([], ["locked"]),
        "end_meeting": ([], []),
    }

    @st.composite
    def ws_object(draw: st.DrawFn) -> dict[str, Any]:
        """Mostly the right fields for a real type (so the room rules run, not only the
        parser), sometimes one missing or a bad id, plus random extras; sometimes a fake type."""
        kind = draw(
            weighted(
                (4, st.sampled_from(["offer", "offer", "prefs", "mute", "unsubscribe"])),
                (
                    3,
                    st.sampled_from(MODERATION_TYPES),
                ),
                (1, st.sampled_from(["join", "ping", "dance", "JOIN", ""])),
                (1, scalar),
            )
        )
        required, optional = (
            shape.get(kind, ([], list(fields)))
            if isinstance(kind, str)
            else (
                [],
                list(fields),
            )
        )
        names = set(required)
        if required and draw(st.integers(0, 9)) == 0:
            names.discard(draw(st.sampled_from(required)))
        if optional:
            names |= draw(st.sets(st.sampled_from(optional)))
        if draw(st.integers(0, 3)) == 0:
            names |= draw(st.sets(st.sampled_from(list(fields)), max_size=2))
        obj = {name: draw(fields[name]) for name in sorted(names)}
        obj["id"] = draw(weighted((9, valid_id), (1, bad_id)))
        if draw(st.integers(0, 3)) == 0:
            obj.update(draw(st.dictionaries(st.text(max_size=8), json_value, max_size=2)))
        obj["type"] = kind
        return obj

    ws = st.tuples(
        st.just("ws"),
        weighted(
            (6, ws_object()),
            (1, st.text(max_size=200)),
            (1, sdp),
            (1, json_value.map(json.dumps)),
        ),
    )
    too_large = st.integers(1, 3).map(lambda n: "v=0\r\n" * 20000 * n)  # > http.max_body_bytes
    body = weighted((6, sdp), (1, st.binary(max_size=300)), (1, st.just("")), (1, too_large))
    auth = weighted(
        (6, st.just("valid")),
        (1, st.sampled_from(["none", "wrong room", "wrong grant"])),
        (1, st.text(PRINTABLE, max_size=40).map(lambda t: "Bearer " + t.strip())),
    )
    content_type = weighted(
        (6, st.just("application/sdp")),
        (1, st.sampled_from(["application/sdp; charset=utf-8", "text/plain"]) | st.none()),
        (1, st.text(PRINTABLE, max_size=30).map(str.strip)),
    )
    room = weighted(
        (6, st.just(ROOM)),
        (1, st.just("elsewhere")),
        (1, st.text(TOKEN_CHARS, min_size=1, max_size=20)),
    )
    target = weighted(
        (6, st.just("observer")),
        (2, st.sampled_from(["fuzzer", "nobody", "whep-viewer"])),
        (1, st.text(TOKEN_CHARS, min_size=1, max_size=20)),
    )
    extra = weighted(
        (4, st.none()),
        (
            1,
            st.tuples(
                st.text(TOKEN_CHARS, min_size=1, max_size=12),
                st.text(PRINTABLE, max_size=30).map(str.strip),
            ),
        ),
    )
    http = st.tuples(
        st.sampled_from(["whip", "whep"]), room, target, auth, content_type, body, extra
    )
    policy_fields = st.fixed_dictionaries(
        {},
        optional={
            "password": st.none() | st.text(max_size=130) | scalar,
            "waiting_room": st.booleans() | scalar,
            "locked": st.booleans() | scalar,
            "max_participants": st.integers(-1, 1001) | scalar,
            "e2ee_required": st.booleans() | scalar,
        },
    )
    policy_body = weighted(
        (5, policy_fields),
        (1, st.dictionaries(st.text(max_size=8), json_value, max_size=3)),
        (1, json_value),
        (1, st.text(max_size=50) | st.binary(max_size=50)),
    )
    policy = st.tuples(
        st.just("policy"),
        weighted((4, st.just("PUT")), (1, st.sampled_from(["GET", "DELETE", "POST", "PATCH"]))),
        room,
        weighted(
            (4, st.just("admin")),
            (1, st.sampled_from(["host", "none", "admin of another room"])),
            (1, st.text(PRINTABLE, max_size=40).map(lambda t: "Bearer " + t.strip())),
        ),
        policy_body,
    )
    return st.lists(weighted((2, ws), (1, http), (1, policy)), min_size=1, max_size=6)


def test_fuzz_room_websocket_whip_and_whep(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rate limit has its own test; here it would only hide the fuzzed messages.
    monkeypatch.setattr(sfu.signaling.room_ws, "RATE", 10_000.0)
    monkeypatch.setattr(sfu.signaling.room_ws, "BURST", 10_000.0)
    # aiortc's and aioice's timers draw from the global `random` on the background loop while
    # hypothesis generates data (and reseeds that global): give them a generator of their own.
    for module in (aiortc.rtcrtpsender, aiortc.rtcrtpreceiver, aiortc.codecs.vpx, aioice.ice):
        monkeypatch.setattr(module, "random", random.Random())
    started = time.monotonic()
    with Harness() as h:
        valid_publish = {
            "type": "offer",
            "id": 1,
            "sdp": h.fuzzer_offer,
            "tracks": {"0": {"name": "mic"}},
            "subscriptions": {"3": h.observer_tracks["1"]},
        }

        def act(actions: list[tuple[Any, ...]]) -> None:
            for action in actions:
                if action[0] == "ws":
                    h.run(h.ws_action(action[1]))
                elif action[0] == "policy":
                    h.run(h.policy_action(*action[1:]))
                else:
                    h.run(h.http_action(*action))

        auth, sdp_type = "valid", "application/sdp"
        mute = {"type": "mute", "track": "$OWN", "muted": True}
        prefs = {"type": "prefs", "track": h.observer_tracks["1"], "max_spatial": 0}
        # A subscribe-only WHEP viewer offering send sections: refused (403) invisibly.
        whep_sending = ("whep", ROOM, "observer", auth, sdp_type, h.fuzzer_offer, None)
        # A host's reach: the admin observer and the other room are out of it; lock is not.
        moderate = [
            ("ws", {"type": "remove", "participant": "$OBSERVER", "ban_s": 60, "id": "r"}),
            ("ws", {"type": "remove", "participant": "$OUTSIDER", "id": "o"}),
            ("ws", {"type": "force_mute", "track": h.observer_tracks["1"], "id": "f"}),
            ("ws", {"type": "lock", "locked": True}),
            ("whip", ROOM, "", auth, sdp_type, h.whip_offer, None),  # 403: locked
            ("ws", {"type": "lock", "locked": False}),
        ]
        policy = [
            ("policy", "PUT", ROOM, "admin", {"e2ee_required": True, "password": "pw"}),
            ("policy", "PUT", ROOM, "host", {"locked": True}),
            ("policy", "GET", ROOM, "admin", None),
        ]
        fuzz = example([("ws", valid_publish), ("ws", mute), ("ws", prefs), whep_sending])(
            example([("whip", ROOM, "", auth, sdp_type, h.whip_offer, None)])(
                example([("whep", ROOM, "observer", auth, sdp_type, h.whep_offer, None)])(
                    example(moderate)(
                        example(policy)(
                            settings(
                                max_examples=60,
                                deadline=None,
                                suppress_health_check=list(HealthCheck),
                            )(given(strategies(h))(act))
                        )
                    )
                )
            )
        )
        fuzz()
        h.run(h.final_checks())
        # The explicit examples make sure the accepting paths ran, not only refusals.
        assert h.counts.get("ws answer", 0) >= 1, h.counts
        assert h.counts.get("whip 201", 0) >= 1 and h.counts.get("whep 201", 0) >= 1, h.counts
        assert sum(n for k, n in h.counts.items() if k.startswith("ws error")) >= 10, h.counts
        assert h.counts.get("ws error forbidden", 0) >= 2, h.counts
        assert h.counts.get("ws error unknown_participant", 0) >= 1, h.counts
        assert h.counts.get("whip 403", 0) >= 1, h.counts
        assert h.counts.get("policy PUT 200", 0) >= 1, h.counts
        assert h.counts.get("policy PUT 403", 0) >= 1, h.counts
    assert time.monotonic() - started < 90
