"""End-to-end encrypted meetings in headless Chromium, and the demo page's privacy.

One in-process server and two demo pages in one room, shared by every test here (browsers
are the expensive part on a small CI machine), and two that come and go:

* Alice publishes, encrypting with the passphrase through ``RTCRtpScriptTransform``;
* Bob publishes with the same passphrase through the older ``createEncodedStreams`` API
  (``#e2ee_api=streams``), so both transform paths and their interoperation are covered;
* Eve comes to watch for a while, with a wrong passphrase: she gets every packet and can decode
  none;
* Mallory has no passphrase at all, in a room that comes to require E2EE.

The server never sees the passphrase: it travels in the URL fragment. A capture hook on the
server (the subscriber transport's class swapped, as :class:`meeting.DropEveryNth` does) records
the RTP it forwards to Bob, and the test decrypts those frames itself from the format written
in ``docs/e2ee.md`` (:mod:`sframe_reference`): the bytes the server relays are SFrame
ciphertext behind the documented clear VP8 prefix, and each (KID, CTR) pair, hence each
AES-GCM nonce, is used once.

Tests run in file order and build on each other's state; key rotation and the room policy
change come last. Layer switching comes early, while Alice's bandwidth estimate is still high:
on a two-core machine several browsers encoding simulcast can drive it down for a long while.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from browser import chromium, run_async, wait_until
from cryptography.exceptions import InvalidTag
from meeting import (
    MEETING_CONFIG,
    ServerThread,
    page_state,
    remote_by,
    server_thread,
    set_preferences,
    stats,
    track_id,
    wait_connected,
)
from selenium import webdriver
from sframe_reference import (
    VP8_KEYFRAME_START_CODE,
    Opened,
    base_key,
    entropy_bits_per_byte,
    open_frame,
)

from sfu import clock
from sfu.codecs.vp8 import parse_vp8
from sfu.config import RoomsConfig
from sfu.core.peer import Peer
from sfu.packet.rtp import RtpPacket
from sfu.transport.transport import WebRtcTransport

pytestmark = pytest.mark.integration

ROOM = "e2ee"
PASSPHRASE = "correct horse battery staple"
WRONG_PASSPHRASE = "incorrect horse battery staple"
ROTATED_PASSPHRASE = "a new passphrase after someone left"
RECEIVE_ONLY = ("--use-fake-ui-for-media-stream=deny",)
PERFORMANCE_LOG = {"goog:loggingPrefs": {"performance": "ALL"}}
#: Admission is not what this file tests: everyone goes straight in.
CONFIG = dataclasses.replace(MEETING_CONFIG, rooms=RoomsConfig(waiting_room=False))
JOIN_DEADLINE_S = 20.0
#: "Decoding goes on": this many more frames (a second of Chromium's 20 fps fake camera).
MIN_FRAMES = 20

Entry = dict[str, Any] | None


# -- the page --------------------------------------------------------------------------------


@dataclasses.dataclass
class Meeting:
    server: ServerThread
    alice: webdriver.Chrome
    bob: webdriver.Chrome
    alice_id: str
    bob_id: str


def open_e2ee(
    driver: webdriver.Chrome, base: str, name: str, passphrase: str, api: str | None = None
) -> None:
    """The demo page with the passphrase in the URL fragment (never sent to the server)."""
    # No tile-size hints: the test waits for the top layer whatever the tile's size.
    query = urllib.parse.urlencode({"room": ROOM, "name": name, "hints": "0"})
    fragment = {"e2ee": passphrase} | ({"e2ee_api": api} if api else {})
    driver.get(f"{base}/?{query}#{urllib.parse.urlencode(fragment)}")


def e2ee_stats(driver: webdriver.Chrome) -> dict[str, Any]:
    value = run_async(driver, "window.sfuE2eeStats()")
    assert isinstance(value, dict) and "error" not in value, value
    return value


def set_key(driver: webdriver.Chrome, passphrase: str, key_id: int, *, current: bool) -> None:
    args = f"{json.dumps(passphrase)}, {key_id}, {{current: {json.dumps(current)}}}"
    result = run_async(driver, f"window.sfuSetE2eeKey({args})")
    assert not (isinstance(result, dict) and "error" in result), result


def _decoding(entry: Entry) -> bool:
    return entry is not None and entry["framesDecoded"] > 0 and entry["frameWidth"] > 0


def _hearing(entry: Entry) -> bool:
    return entry is not None and entry["packetsReceived"] > 0 and entry["totalSamplesReceived"] > 0


@pytest.fixture(scope="module")
def meeting() -> Iterator[Meeting]:
    with (
        server_thread(CONFIG) as server,
        chromium(capabilities=PERFORMANCE_LOG) as alice,
        chromium() as bob,
    ):
        alice.get_log("performance")  # only the demo page's own events from here on
        open_e2ee(alice, server.base, "Alice", PASSPHRASE)
        open_e2ee(bob, server.base, "Bob", PASSPHRASE, api="streams")
        ids = [wait_connected(d, timeout=JOIN_DEADLINE_S) for d in (alice, bob)]
        yield Meeting(server, alice, bob, *ids)


# -- capturing what the server forwards ------------------------------------------------------


class CaptureRtp:
    """Records the RTP packets a transport sends (before SRTP), up to ``limit``.

    Installed by swapping the transport's class for a slot-compatible subclass, like
    :class:`meeting.DropEveryNth`; install and uninstall on the server's loop. Forwarded
    media reaches ``send_rtp`` only on the Python path, so the data plane is suspended while
    capturing (both paths produce byte-identical egress: test_forwarder_equivalence.py).
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.packets: list[bytes] = []
        capture = self

        class CapturingTransport(WebRtcTransport):
            __slots__ = ()

            def send_rtp(self, packet: bytes) -> bool:
                if len(capture.packets) < limit:
                    capture.packets.append(bytes(packet))
                return super().send_rtp(packet)

        self._cls = CapturingTransport

    def install(self, transport: WebRtcTransport) -> None:
        assert type(transport) is WebRtcTransport
        transport.__class__ = self._cls
        peer = transport.listener
        if isinstance(peer, Peer) and peer.dataplane is not None:
            peer.dataplane.suspend()

    def uninstall(self, transport: WebRtcTransport) -> None:
        if type(transport) is self._cls:
            transport.__class__ = WebRtcTransport
        peer = transport.listener
        if isinstance(peer, Peer) and peer.dataplane is not None:
            peer.dataplane.resume()


def _frames(packets: list[RtpPacket]) -> list[bytes]:
    """Whole VP8 frames (descriptors stripped) from one SSRC's packets, in sending order:
    those whose first packet starts partition 0, whose last has the marker bit, and whose
    sequence numbers have no gap."""
    by_ts: dict[int, list[RtpPacket]] = {}
    for p in packets:
        by_ts.setdefault(p.timestamp, []).append(p)
    frames = []
    for group in by_ts.values():
        seqs = [p.sequence_number for p in group]
        if any((b - a) & 0xFFFF != 1 for a, b in itertools.pairwise(seqs)):
            continue
        if not (parse_vp8(group[0].payload).is_start_of_frame and group[-1].marker):
            continue
        frames.append(b"".join(p.payload[parse_vp8(p.payload).size :] for p in group))
    return frames


def _ask_keyframes(server: ServerThread, participant: str) -> None:
    """A PLI upstream for every layer of ``participant``'s video (rate-limited per layer)."""
    assert server.server.rooms is not None
    now = clock.now()
    for publication in server.server.rooms.rooms[ROOM].publications.values():
        if publication.participant_id == participant and publication.video:
            for stream in publication.layers.values():
                publication.request_keyframe(stream, now)


# -- tests -----------------------------------------------------------------------------------


def test_same_passphrase_decodes_each_other(meeting: Meeting) -> None:
    m = meeting
    pairs = [(m.alice, m.bob_id), (m.bob, m.alice_id)]
    wait_until(
        lambda: [stats(d) for d, _ in pairs],
        lambda s: all(
            _decoding(remote_by(s[i], pid, "video")) and _hearing(remote_by(s[i], pid, "audio"))
            for i, (_, pid) in enumerate(pairs)
        ),
        timeout=JOIN_DEADLINE_S,
    )
    for driver, api in ((m.alice, "script"), (m.bob, "streams")):
        state = page_state(driver)
        assert state.get("error") is None, state
        assert state["e2ee"]["enabled"] and state["e2ee"]["api"] == api, state
        assert state["e2ee"]["keyId"] == 0, state
        counters = e2ee_stats(driver)
        assert counters["encrypted"] > 0 and counters["decrypted"] > 0, counters
        # Keys are derived before joining: not a single frame failed or left unencrypted.
        assert counters["failed"] == 0 and counters["dropped"] == 0, counters
    # Bob's camera has served its purpose: one encoder less on a two-core CI machine for the
    # layer switching below (his microphone stays, for the key rotation test).
    assert run_async(m.bob, "window.sfuRoom.unpublish('video').then(() => true)") is True


def test_simulcast_layer_switching_with_e2ee(meeting: Meeting) -> None:
    m = meeting
    video = track_id(stats(m.bob), m.alice_id, "video")
    assert video is not None

    def alice_video() -> Entry:
        return remote_by(stats(m.bob), m.alice_id, "video")

    def decoding_at(width: int, timeout: float) -> None:
        """Frames of ``width`` arrive, and decoding goes on from there."""
        start = wait_until(
            alice_video, lambda e: e is not None and e["frameWidth"] == width, timeout
        )
        assert start is not None
        wait_until(
            alice_video,
            lambda e: e is not None and e["framesDecoded"] >= start["framesDecoded"] + MIN_FRAMES,
            timeout=10.0,
        )

    # Each switch happens at a keyframe the SFU recognizes by the VP8 P bit left in clear.
    set_preferences(m.bob, video, {"maxSpatial": 0})
    decoding_at(320, 10.0)
    set_preferences(m.bob, video, {"maxSpatial": 2})
    decoding_at(1280, 30.0)  # once Alice's bandwidth estimate allows her top layer
    counters = e2ee_stats(m.bob)
    assert counters["failed"] == 0, counters


def test_server_forwards_only_ciphertext(meeting: Meeting) -> None:
    m, server = meeting, meeting.server
    capture = CaptureRtp()
    transport = server.call(lambda: server.peer(ROOM, m.bob_id).transport)
    ssrcs = server.call(
        lambda: {
            sub.out_ssrc: sub.publication.kind
            for sub in server.peer(ROOM, m.bob_id).subscriptions.values()
            if sub.publication.participant_id == m.alice_id
        }
    )
    assert sorted(ssrcs.values()) == ["audio", "video"], ssrcs
    video_ssrc = next(ssrc for ssrc, kind in ssrcs.items() if kind == "video")
    server.call(lambda: capture.install(transport))
    try:
        # Ask Alice (as the server does for a new subscriber) for keyframes until a whole one
        # has come through, keyframes being where the clear prefix is longest, and enough
        # frames of both kinds to look at.
        deadline = time.monotonic() + 15.0
        while True:
            rtp = [RtpPacket.parse(p) for p in server.call(lambda: list(capture.packets))]
            video = _frames([p for p in rtp if p.ssrc == video_ssrc])
            audio = [p for p in rtp if p.ssrc != video_ssrc and p.payload]
            keyframe = any(f[0] & 1 == 0 for f in video)
            if keyframe and len(video) >= MIN_FRAMES and len(audio) >= MIN_FRAMES:
                break
            assert time.monotonic() < deadline, (keyframe, len(video), len(audio))
            if not keyframe:
                server.call(lambda: _ask_keyframes(server, m.alice_id))
            time.sleep(0.5)
    finally:
        server.call(lambda: capture.uninstall(transport))

    bases = {0: base_key(PASSPHRASE, ROOM)}
    wrong = {0: base_key(WRONG_PASSPHRASE, ROOM)}
    opened: dict[str, list[Opened]] = {"audio": [], "video": []}
    for ssrc, kind in ssrcs.items():
        mine = [p for p in rtp if p.ssrc == ssrc]
        # (an audio packet without payload is padding: nothing to encrypt)
        frames = _frames(mine) if kind == "video" else [p.payload for p in mine if p.payload]
        assert len(frames) >= MIN_FRAMES, (kind, len(frames))
        for frame in frames:
            opened[kind].append(open_frame(frame, kind, bases))
            with pytest.raises(InvalidTag):
                open_frame(frame, kind, wrong)

    keyframes = [o for o in opened["video"] if o.clear[0] & 1 == 0]
    assert keyframes, "no keyframe forwarded"
    for o in keyframes:
        # The clear prefix is the VP8 keyframe header: start code and size, and nothing more.
        assert len(o.clear) == 10 and o.clear[3:6] == VP8_KEYFRAME_START_CODE
        assert int.from_bytes(o.clear[6:8], "little") & 0x3FFF in (320, 640, 1280)
        # The first partition the frame tag announces lies in the ciphertext.
        first_partition = int.from_bytes(o.clear[:3], "little") >> 5
        assert 0 < first_partition < len(o.plaintext)
    for kind, frames in opened.items():
        # One sender (a random 56-bit id) per track; every (KID, CTR) once: no nonce reuse.
        assert len({o.kid >> 8 for o in frames}) == 1, kind
        assert len({(o.kid, o.ctr) for o in frames}) == len(frames), kind
        # Past the clear prefix the relayed bytes are not the frame: about 1/256 of the byte
        # positions agree by chance, and they look uniformly random.
        wire = b"".join(o.wire[-len(o.plaintext) :] for o in frames if o.plaintext)
        plain = b"".join(o.plaintext for o in frames)
        same = sum(a == b for a, b in zip(wire, plain, strict=True))
        assert same < len(plain) * 0.02, (kind, same, len(plain))
        assert entropy_bits_per_byte(wire) > 7.5, kind
    assert {o.kid for o in opened["audio"]}.isdisjoint(o.kid for o in opened["video"])


def test_page_talks_only_to_its_own_origin(meeting: Meeting) -> None:
    """Every request of a page that joined with media goes to the server's origin; no STUN or
    TURN server is configured; only host candidates are used; the passphrase is never sent."""
    m = meeting
    origin = urllib.parse.urlsplit(m.server.base)
    urls: list[str] = []
    bodies: list[str] = []
    for record in m.alice.get_log("performance"):
        message = json.loads(record["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            if params.get("documentURL", "").startswith("chrome://"):
                continue  # the browser's own start page before ours loaded, not the page
            urls.append(params["request"]["url"])
            bodies.append(str(params["request"].get("postData", "")))
        elif message["method"] == "Network.webSocketCreated":
            urls.append(params["url"])
    urls += m.alice.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name);"
    )
    paths = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme in ("data", "blob"):
            continue
        assert parts.scheme in ("http", "ws"), url
        assert parts.netloc == origin.netloc, url
        paths.add(parts.path)
    assert {"/", "/sfu-client.js", "/e2ee.js", "/e2ee-worker.js", "/dev-token", "/ws"} <= paths
    secret = urllib.parse.quote_plus(PASSPHRASE)
    assert not any(PASSPHRASE in s or secret in s for s in (*urls, *bodies))

    ice = run_async(
        m.alice,
        """(async () => {
            const pc = window.sfuRoom.pc;
            const out = {servers: pc.getConfiguration().iceServers, local: [], remote: []};
            (await pc.getStats()).forEach((s) => {
                if (s.type === "local-candidate") out.local.push(s.candidateType);
                if (s.type === "remote-candidate") out.remote.push(s.address);
            });
            return out;
        })()""",
    )
    assert ice["servers"] == [], ice
    # Host candidates, and at most a peer-reflexive one learnt from this server's own STUN
    # answers (Chromium may send to 127.0.0.1 from another local address): no STUN or TURN
    # server anywhere else was asked.
    assert ice["local"] and "host" in ice["local"], ice
    assert set(ice["local"]) <= {"host", "prflx"}, ice
    assert ice["remote"] and set(ice["remote"]) == {"127.0.0.1"}, ice


def test_wrong_passphrase_receives_but_cannot_decode(meeting: Meeting) -> None:
    """Eve joins with a wrong passphrase: every packet of Alice's video reaches her browser,
    and not one frame gets to her decoder."""
    m = meeting
    with chromium(RECEIVE_ONLY) as eve:
        open_e2ee(eve, m.server.base, "Eve", WRONG_PASSPHRASE)
        wait_connected(eve, timeout=JOIN_DEADLINE_S)

        def eve_video() -> Entry:
            return remote_by(stats(eve), m.alice_id, "video")

        first = wait_until(eve_video, lambda e: e is not None and e["packetsReceived"] > 0, 10.0)
        assert first is not None
        last = wait_until(
            eve_video,
            lambda e: e is not None and e["packetsReceived"] >= first["packetsReceived"] + 50,
            timeout=10.0,
        )
        counters = e2ee_stats(eve)
        assert last is not None and last["framesDecoded"] == 0, last
        assert counters["decrypted"] == 0, counters
        assert counters["failed"] > 0, counters
        # She holds key id 0, just not the right one: the frames fail to authenticate.
        assert counters["failedNoKey"] == 0 and counters["failedMalformed"] == 0, counters
        assert {f["reason"] for f in counters["recentFailures"]} == {"auth"}, counters
        assert page_state(eve)["e2ee"]["enabled"]
    # Eve has left (closing her browser ends her session); the others rotate their key below.


def test_key_rotation_keeps_decoding(meeting: Meeting) -> None:
    """Eve left: the others install a new key under key id 1. Bob only accepts it so far;
    Alice sends with it. Both keys stay accepted, so nobody misses a frame."""
    m = meeting
    set_key(m.bob, ROTATED_PASSPHRASE, 1, current=False)
    bob_before = e2ee_stats(m.bob)
    assert bob_before["keyIds"] == [0, 1] and bob_before["sendKeyId"] == 0, bob_before
    frames_before = remote_by(stats(m.bob), m.alice_id, "video")
    alice_before = e2ee_stats(m.alice)
    set_key(m.alice, ROTATED_PASSPHRASE, 1, current=True)
    assert page_state(m.alice)["e2ee"]["keyId"] == 1

    # Bob decrypts Alice's frames under key id 1 and keeps decoding her video ...
    wait_until(
        lambda: e2ee_stats(m.bob),
        lambda s: s["byKey"].get("1", 0) >= 50,
        timeout=10.0,
    )
    assert frames_before is not None
    after = wait_until(
        lambda: remote_by(stats(m.bob), m.alice_id, "video"),
        lambda e: e is not None and e["framesDecoded"] >= frames_before["framesDecoded"] + 40,
        timeout=10.0,
    )
    assert after is not None and after["frameWidth"] > 0
    # ... while Alice, holding both keys, still reads Bob's frames under key id 0.
    alice_after = e2ee_stats(m.alice)
    assert alice_after["sentByKey"].get("1", 0) > 0, alice_after
    assert alice_after["byKey"]["0"] > alice_before["byKey"]["0"], (alice_before, alice_after)
    bob_after = e2ee_stats(m.bob)
    assert bob_after["failed"] == 0, json.dumps(bob_after)
    assert alice_after["failed"] == 0, json.dumps(alice_after)


def _publications(server: ServerThread, participant: str) -> int:
    def count() -> int:
        assert server.server.rooms is not None
        room = server.server.rooms.rooms[ROOM]
        return sum(p.participant_id == participant for p in room.publications.values())

    return server.call(count)


def test_room_requiring_e2ee_stops_clients_without_a_key(meeting: Meeting) -> None:
    """An admin makes the room require E2EE mid-meeting: a client without a key stops sending
    at once, and joining again it is told at join and does not publish. (Last: Mallory's
    unencrypted frames count as failures at everyone else.)"""
    m, server = meeting, meeting.server
    with chromium() as mallory:
        mallory.get(f"{server.base}/?{urllib.parse.urlencode({'room': ROOM, 'name': 'Mallory'})}")
        mallory_id = wait_connected(mallory, timeout=JOIN_DEADLINE_S)
        wait_until(lambda: _publications(server, mallory_id), lambda n: n == 2, timeout=10.0)
        assert page_state(mallory)["e2ee"] == {
            "enabled": False,
            "required": False,
            "blocked": False,
            "keyId": None,
            "api": None,
        }

        def require_e2ee() -> None:
            assert server.server.rooms is not None
            rooms = server.server.rooms
            old, new = rooms.policies.update(ROOM, {"e2ee_required": True})
            rooms.policy_changed(ROOM, old, new)

        server.call(require_e2ee)
        wait_until(lambda: _publications(server, mallory_id), lambda n: n == 0, timeout=10.0)
        state = wait_until(
            lambda: page_state(mallory), lambda s: s["e2ee"]["blocked"] is True, timeout=5.0
        )
        assert state["e2ee"]["required"] is True
        badge = mallory.find_element("id", "e2ee-badge")
        assert badge.get_attribute("data-e2ee") == "blocked" and "required" in badge.text

        # Joining again: the join reply says so, and the page does not publish at all.
        mallory.get("about:blank")
        mallory.get(f"{server.base}/?{urllib.parse.urlencode({'room': ROOM, 'name': 'Mallory'})}")
        mallory_id = wait_connected(mallory, timeout=JOIN_DEADLINE_S)
        state = wait_until(
            lambda: page_state(mallory), lambda s: bool((s.get("e2ee") or {}).get("blocked")), 5.0
        )
        assert state["error"] is None, state
        assert "end-to-end encryption" in mallory.find_element("id", "notice").text
        time.sleep(1.0)  # what publish() would have sent has had time to arrive
        assert _publications(server, mallory_id) == 0

        # Alice holds a key: she goes on sending, and her badge shows the requirement.
        assert _publications(server, m.alice_id) == 2
        alice = page_state(m.alice)["e2ee"]
        assert alice["required"] is True and alice["blocked"] is False, alice
