"""One room spread over two shards (two room services, as two workers run them).

The room bus is an in-memory queue (JSON round-tripped, as the supervisor relays it) and
the two shards' relay hubs are joined by in-memory pipes: no sockets, time is a number.
Alice is on shard 0, Bob (and later Carol) on shard 1.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from room_fixtures import (
    OPEN_ROOMS,
    OPUS_PT,
    Harness,
    harness,
    opus_packet,
    recvonly_offer,
    simulcast_offer,
    vp8_packet,
)

from sfu.core.publication import Publication
from sfu.core.relay import RelayHub
from sfu.packet.rtcp import parse_compound
from sfu.packet.rtcp_feedback import Pli
from sfu.packet.rtp import RtpPacket
from sfu.room.identity import Grant
from sfu.room.moderation import Moderation
from sfu.room.policy import RoomDefaults, RoomPolicy, hash_password, verify_password
from sfu.room.room import Participant, ParticipantState
from sfu.room.service import RoomError
from sfu.transport.pipe import Pipe

ROOM = "standup"
SSRC_Q, SSRC_H, SSRC_F = 1111, 2222, 3333
AUDIO_SSRC = 4444


class Bus:
    """The room bus: what one shard publishes reaches the other (in order, on pump)."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, str, str]] = []
        self.shards: dict[int, Harness] = {}

    def publisher(self, index: int) -> Any:
        bus = self

        class Publisher:
            def publish(self, room: str, event: dict[str, Any]) -> None:
                bus.queue.append((index, room, json.dumps(event)))

        return Publisher()


class Spread:
    """Two shards of one room: harnesses, bus and relay hubs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1.0
        self.shards = [harness(monkeypatch), harness(monkeypatch)]
        self.bus = Bus()
        self.wire: list[tuple[int, int, bytes]] = []  # (from, to, datagram)
        self.hubs: list[RelayHub] = []
        for index, shard in enumerate(self.shards):
            peer = 1 - index
            pipes = {peer: Pipe(role=index, now=self.now)}
            service = shard.service
            hub = RelayHub(
                pipes,
                self._finder(index),
                lambda to, datagram, me=index: self.wire.append((me, to, datagram)),
                lambda to, me=index: self._flush(me, to),
                lambda: self.now,
            )
            service.bus = self.bus.publisher(index)
            service.remote_tracks = hub
            self.hubs.append(hub)
        self.pump()

    def _finder(self, index: int) -> Any:
        def find(track_id: str) -> Publication | None:
            for room in self.shards[index].service.rooms.values():
                pub = room.publications.get(track_id)
                if pub is not None and pub.participant_id in room.participants:
                    return pub
            return None

        return find

    def _flush(self, me: int, to: int) -> None:
        for datagram in self.hubs[me].pipes[to].take_datagrams():
            self.wire.append((me, to, datagram))

    def pump(self) -> None:
        """Deliver bus events and pipe datagrams until both are quiet."""
        for _ in range(100):
            if not self.bus.queue and not self.wire:
                for me in range(len(self.hubs)):
                    self._flush(me, 1 - me)
                if not self.wire:
                    return
            while self.bus.queue:
                origin, room, text = self.bus.queue.pop(0)
                self.shards[1 - origin].service.on_shared(
                    room, origin, json.loads(text), now=self.now
                )
            wire, self.wire = self.wire, []
            for me, to, datagram in wire:
                hub = self.hubs[to]
                event = hub.pipes[me].receive(datagram, now=self.now)
                if event is not None:
                    hub.on_event(me, event, now=self.now)
        raise AssertionError("the shards never went quiet")

    def tick(self, seconds: float = 0.05) -> None:
        self.now += seconds
        for hub in self.hubs:
            hub.poll(now=self.now)
        self.pump()


def test_participants_tracks_mutes_and_chat_are_seen_on_both_shards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    alice = zero.join(ROOM, "alice")
    zero.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    spread.pump()
    bob = one.join(ROOM, "bob")  # shard 1 opens: shard 0 answers with its state
    spread.pump()
    assert [m["participant"]["id"] for m in one.messages("bob", "participant_joined")] == [alice.id]
    tracks = {m["track"]["kind"]: m["track"] for m in one.messages("bob", "track_published")}
    assert set(tracks) == {"audio", "video"}
    assert tracks["video"]["layers"] == ["q", "h", "f"]
    assert tracks["video"]["participant"] == alice.id
    assert [m["participant"]["id"] for m in zero.messages("alice", "participant_joined")] == [
        bob.id
    ]
    # A later participant of shard 1 finds Alice, with her tracks, in its joined message.
    one.join(ROOM, "carol")
    spread.pump()
    joined = one.messages("carol", "joined")[0]
    listed = {p["id"]: p for p in joined["participants"]}
    assert set(listed) == {alice.id, bob.id}
    assert {t["id"] for t in listed[alice.id]["tracks"]} == {t["id"] for t in tracks.values()}
    assert len(zero.messages("alice", "participant_joined")) == 2

    # Mutes, and a host's force mute from the other shard, reach everyone.
    zero.service.set_muted(alice, tracks["audio"]["id"], True)
    spread.pump()
    assert one.messages("bob", "track_muted")[-1] == {
        "type": "track_muted",
        "track": tracks["audio"]["id"],
        "muted": True,
    }
    standin = one.service.rooms[ROOM].publications[tracks["video"]["id"]]
    assert one.service.set_force_muted(one.service.rooms[ROOM], standin, True)
    spread.pump()
    original = zero.service.rooms[ROOM].publications[tracks["video"]["id"]]
    assert original.force_muted and zero.messages("alice", "track_muted")[-1]["force_muted"]

    # Chat crosses shards.
    assert zero.service.chat.relay(alice, "hello from shard 0", now=spread.now) == "ok"
    spread.pump()
    chats = one.messages("bob", "chat")
    assert chats and chats[-1]["text"] == "hello from shard 0" and chats[-1]["from"] == alice.id

    # Alice leaves: her tracks end and she leaves on shard 1 too.
    zero.service.leave(alice, now=spread.now)
    spread.pump()
    assert {m["track"] for m in one.messages("bob", "track_unpublished")} == {
        t["id"] for t in tracks.values()
    }
    assert one.messages("bob", "participant_left")[-1]["participant"] == alice.id
    assert not one.service.rooms[ROOM].publications
    assert not one.service.rooms[ROOM].remote


def _subscribed(spread: Spread) -> tuple[Participant, Participant, dict[str, str]]:
    zero, one = spread.shards
    alice = zero.join(ROOM, "alice")
    zero.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    zero.capture("alice", alice)
    bob = one.join(ROOM, "bob")
    spread.pump()
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in one.messages("bob", "track_published")}
    one.service.offer(
        bob, recvonly_offer(), 0.0, subscriptions={"0": tracks["audio"], "1": tracks["video"]}
    )
    one.capture("bob", bob)
    spread.tick()
    return alice, bob, tracks


def test_media_crosses_the_pipe_once_and_a_keyframe_request_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    alice, bob, tracks = _subscribed(spread)
    assert alice.peer is not None and bob.peer is not None
    # Bob's subscriptions asked for the lowest layer and the audio: the taps on shard 0
    # joined the publications' fan-out (once each, however many subscribers shard 1 has).
    video = zero.service.rooms[ROOM].publications[tracks["video"]]
    assert [sub.subscriber_id for sub, _ in video.fanout] == ["pipe:1"]
    assert spread.hubs[0].pipes[1].demand(1) == (0b001, 0)

    t = alice.peer.transport
    for seq in range(3):
        for ssrc, rid in ((SSRC_Q, "q"), (SSRC_H, "h"), (SSRC_F, "f")):
            packet = vp8_packet(ssrc, 100 + seq, 9000, keyframe=seq == 0, rid=rid)
            alice.peer.on_rtp(t, packet, spread.now)
        alice.peer.on_rtp(t, opus_packet(AUDIO_SSRC, seq, 960 * seq), spread.now)
    spread.pump()
    pipe = spread.hubs[0].pipes[1]
    assert pipe.counters.filtered == 6  # layers h and f stayed on shard 0
    received = [RtpPacket.parse(p) for p in one.sent_rtp["bob"]]
    assert len([p for p in received if p.payload_type == OPUS_PT]) == 3
    assert len([p for p in received if p.payload_type != OPUS_PT]) == 3

    # Bob's player asks for a keyframe: a PLI goes up the pipe and reaches Alice.
    zero.sent_rtcp["alice"].clear()
    sub = next(s for s in bob.peer.subscriptions.values() if s.selector is not None)
    spread.now += 1.0
    assert sub.publication.request_keyframe(sub.publication.layers[0], spread.now)
    spread.pump()
    plis = [
        p.media_ssrc
        for raw in zero.sent_rtcp["alice"]
        for p in parse_compound(raw)
        if isinstance(p, Pli)
    ]
    assert plis == [SSRC_Q]


def test_the_stand_in_ends_with_the_last_participant_of_the_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    alice, bob, tracks = _subscribed(spread)
    assert spread.hubs[1].remotes and spread.hubs[0].relay.taps
    one.service.leave(bob, now=spread.now)
    spread.pump()
    assert ROOM not in one.service.rooms
    assert not spread.hubs[1].remotes
    assert not spread.hubs[0].relay.taps  # the flows were closed: nothing is relayed
    video = zero.service.rooms[ROOM].publications[tracks["video"]]
    assert video.fanout == ()
    assert alice.peer is not None


def test_a_publisher_leaving_ends_its_flows_even_if_the_bus_loses_the_news(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread = Spread(monkeypatch)
    zero = spread.shards[0]
    alice, _bob, _tracks = _subscribed(spread)
    assert spread.hubs[0].relay.taps and spread.hubs[1].remotes
    zero.service.leave(alice, now=spread.now)
    spread.bus.queue.clear()  # the bus dropped alice's leave and unpublish events
    spread.pump()
    # The pipe told shard 1 by itself: no tap keeps the ended publication alive on shard 0.
    assert not spread.hubs[0].relay.taps
    assert not spread.hubs[1].remotes


def test_a_policy_set_on_one_shard_holds_on_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    zero.join(ROOM, "alice")
    one.join(ROOM, "bob")
    spread.pump()
    password = hash_password("hunter2")
    old, new = one.service.policies.update(ROOM, {"locked": True, "password": password})
    one.service.policy_changed(ROOM, old, new)
    spread.pump()
    mirrored = zero.service.policies.get(ROOM)
    assert mirrored.locked and mirrored.password is not None
    assert verify_password(mirrored.password, "hunter2")
    # A newcomer placed on the other shard meets the lock there too.
    with pytest.raises(RoomError) as refused:
        zero.join(ROOM, "eve")
    assert refused.value.code == "room_locked"
    # Unlocking anywhere unlocks everywhere.
    old, new = zero.service.policies.update(ROOM, {"locked": False})
    zero.service.policy_changed(ROOM, old, new)
    spread.pump()
    assert not one.service.policies.get(ROOM).locked


#: A well-formed open policy on the bus (the malformed cases change one field of it).
_OPEN: dict[str, Any] = {
    "waiting_room": False,
    "locked": False,
    "max_participants": 10,
    "e2ee_required": False,
    "password": None,
}


def test_malformed_bus_events_are_counted_and_change_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread = Spread(monkeypatch)
    _, one = spread.shards
    one.join(ROOM, "bob")
    spread.pump()
    service = one.service
    for event in (
        "not an object",
        {"type": "no_such_event"},
        {"type": "participant_joined"},
        {"type": "participant_joined", "participant": {"id": 7, "identity": "x"}},
        {"type": "track_published", "relay": {"kind": "video"}},
        {"type": "track_muted", "track": ["x"]},
        {"type": "policy", "policy": {"locked": "yes"}},
        {"type": "policy", "policy": {**_OPEN, "max_participants": 0}},
        {"type": "policy", "policy": {**_OPEN, "password": {"salt": "zz"}}},
        {"type": "bans", "bans": "eve"},
        {"type": "bans", "bans": [["eve", 60], ["eve", 0]]},
        {"type": "bans", "bans": [["eve", 60], ["", 60]]},
        {"type": "bans", "bans": [["eve", 60]] * 17},
    ):
        service.on_shared(ROOM, 0, event, now=spread.now)
    assert service.bus_refused == 12
    assert not service.rooms[ROOM].remote and not service.rooms[ROOM].publications
    assert not service.policies.has_own(ROOM)
    assert not service.bans.banned(ROOM, "eve", spread.now)
    # An event of a room with no participant here is not an error: there is nothing to do.
    service.on_shared("elsewhere", 0, {"type": "shard_opened"}, now=spread.now)
    assert service.bus_refused == 12


def test_a_dead_shard_s_participants_leave_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    spread = Spread(monkeypatch)
    _, one = spread.shards
    alice, bob, tracks = _subscribed(spread)
    assert spread.hubs[1].remotes
    # Worker 0 died: the supervisor tells the others (SHARD_CLOSED).
    one.service.shard_closed(0, now=spread.now)
    assert one.messages("bob", "participant_left")[-1]["participant"] == alice.id
    assert {m["track"] for m in one.messages("bob", "track_unpublished")} == set(tracks.values())
    room = one.service.rooms[ROOM]
    assert not room.remote and not room.publications and not spread.hubs[1].remotes
    assert bob.peer is not None and not bob.peer.subscriptions


def test_a_host_moderates_a_participant_of_the_other_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    host = zero.join(ROOM, "host", Grant.HOST | Grant.PUBLISH | Grant.SUBSCRIBE)
    zero.join(ROOM, "boss", Grant.ADMIN | Grant.PUBLISH | Grant.SUBSCRIBE)
    spread.pump()
    bob = one.join(ROOM, "bob")
    one.service.offer(bob, simulcast_offer(), 0.0, names={"1": "camera"})
    spread.pump()
    moderation = Moderation(zero.service)
    video = next(
        m["track"]["id"]
        for m in zero.messages("host", "track_published")
        if m["track"]["kind"] == "video"
    )
    # Force mute: the real publication on Bob's shard is held, and he is told.
    moderation.force_mute(host, video, True)
    spread.pump()
    assert one.service.rooms[ROOM].publications[video].force_muted
    assert one.messages("bob", "track_muted")[-1]["force_muted"] is True
    # Asking Bob to mute reaches Bob.
    moderation.request_mute(host, video)
    spread.pump()
    assert one.messages("bob", "mute_requested")[-1] == {
        "type": "mute_requested",
        "track": video,
        "by": host.id,
    }
    # Muting his chat: his shard refuses his messages, and everyone is told.
    moderation.mute_chat(host, bob.id, True)
    spread.pump()
    assert bob.chat_muted
    assert zero.messages("boss", "chat_muted")[-1]["participant"] == bob.id
    assert one.messages("bob", "chat_muted")[-1]["muted"] is True
    # A host cannot remove an admin of another shard any more than a local one.
    one_admin = one.join(ROOM, "root", Grant.ADMIN)
    spread.pump()
    with pytest.raises(RoomError) as refused:
        moderation.remove(host, one_admin.id, None, now=spread.now)
    assert refused.value.code == "forbidden"
    # Removing Bob with a ban ends him on his shard; both shards keep the ban.
    moderation.remove(host, bob.id, 60, now=spread.now)
    spread.pump()
    assert bob.state is ParticipantState.LEFT
    assert zero.messages("host", "participant_left")[-1]["participant"] == bob.id
    for shard in (zero, one):
        assert shard.service.bans.banned(ROOM, "bob", spread.now)


def test_one_identity_one_seat_across_shards(monkeypatch: pytest.MonkeyPatch) -> None:
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    closed: list[tuple[int, str]] = []
    first = zero.join(ROOM, "dana")
    first.on_close = lambda code, reason: closed.append((code, reason))
    spread.pump()
    second = one.join(ROOM, "dana")  # the same person, placed on the other shard
    spread.pump()
    assert first.state is ParticipantState.LEFT and closed == [(4009, "joined from elsewhere")]
    assert second.state is ParticipantState.JOINED
    assert ROOM not in zero.service.rooms or not zero.service.rooms[ROOM].participants


def test_an_opened_shard_gets_the_room_state_and_an_unused_one_is_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A WHEP viewer placed on a shard opens it before joining (the other shards answer
    with their state) and it is forgotten again when nobody joined after all."""
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    alice = zero.join(ROOM, "alice")
    zero.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    spread.pump()
    assert ROOM not in one.service.rooms
    room = one.service.open_shard(ROOM)
    assert room is not None and one.service.open_shard(ROOM) is room
    spread.pump()
    assert [d["identity"] for d in room.remote.values()] == ["alice"]
    kinds = sorted(p.kind for p in room.publications.values() if p.participant_id == alice.id)
    assert kinds == ["audio", "video"]
    assert spread.hubs[1].remotes  # the stand-ins are open, fed by the pipe once subscribed
    one.service.close_empty_shard(room)
    assert ROOM not in one.service.rooms
    assert not spread.hubs[1].remotes
    # A shard with a participant is not forgotten.
    room = one.service.open_shard(ROOM)
    assert room is not None
    spread.pump()
    one.join(ROOM, "bob")
    one.service.close_empty_shard(room)
    assert one.service.rooms[ROOM] is room


def test_no_shard_is_opened_where_rooms_are_not_spread(monkeypatch: pytest.MonkeyPatch) -> None:
    single = harness(monkeypatch)
    assert single.service.bus is None
    assert single.service.open_shard(ROOM) is None
    assert ROOM not in single.service.rooms


def test_relayed_packets_are_sampled_in_the_shard_s_forwarding_latency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The far worker's histogram covers relayed publications too (pipe receive to the
    last local copy), so a spread room's shard reports its forwarding latency."""
    spread = Spread(monkeypatch)
    one = spread.shards[1]
    stats = one.service.stats
    stats.clock, stats.sample_mask = (lambda: spread.now), 0
    spread.hubs[1].stats = stats
    alice, _bob, _tracks = _subscribed(spread)
    assert alice.peer is not None
    before = stats.forward_latency.count
    for seq in range(3):
        alice.peer.on_rtp(alice.peer.transport, opus_packet(AUDIO_SSRC, seq, 960 * seq), spread.now)
    spread.pump()
    assert len(one.sent_rtp["bob"]) == 3
    assert stats.forward_latency.count - before == 3


class Shards:
    """``count`` shards of one room on a bus that hands each event to every other shard,
    as the supervisor does (no pipes: these tests move no media). Events wait in
    ``queue`` as (origin, receiver, room, event) until delivered, in any order."""

    def __init__(
        self, monkeypatch: pytest.MonkeyPatch, count: int, defaults: RoomDefaults = OPEN_ROOMS
    ) -> None:
        self.now = 1.0
        self.shards = [harness(monkeypatch, defaults=defaults) for _ in range(count)]
        self.queue: list[tuple[int, int, str, dict[str, Any]]] = []
        for index, shard in enumerate(self.shards):
            shard.service.bus = self._publisher(index)

    def _publisher(self, index: int) -> Any:
        shards = self

        class Publisher:
            def publish(self, room: str, event: dict[str, Any]) -> None:
                for to in range(len(shards.shards)):
                    if to != index:
                        shards.queue.append((index, to, room, json.loads(json.dumps(event))))

        return Publisher()

    def deliver(self, which: Any = None) -> None:
        """Deliver the queued events ``which`` picks (all when None), and what they cause."""
        for _ in range(100):
            chosen = [m for m in self.queue if which is None or which(m)]
            if not chosen:
                return
            for message in chosen:
                self.queue.remove(message)
                origin, to, room, event = message
                self.shards[to].service.on_shared(room, origin, event, now=self.now)
        raise AssertionError("the shards never went quiet")


def test_a_ban_reaches_every_shard_of_the_room(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three shards: a host's ban holds on each, whether the target was on the host's shard
    or on another, and even on a shard that saw the target leave before the ban arrived."""
    shards = Shards(monkeypatch, 3)
    zero, one, two = shards.shards
    host = zero.join(ROOM, "host", Grant.HOST | Grant.PUBLISH | Grant.SUBSCRIBE)
    dave = zero.join(ROOM, "dave")
    bob = one.join(ROOM, "bob")
    two.join(ROOM, "carol")
    shards.deliver()
    assert set(two.service.rooms[ROOM].remote) == {host.id, dave.id, bob.id}
    moderation = Moderation(zero.service)
    # Bob (shard 1) removed with a ban; shard 2 hears of his leave from shard 1 before it
    # hears the ban from shard 0 (two senders, no order between them).
    moderation.remove(host, bob.id, 60, now=shards.now)
    shards.deliver(lambda m: m[0] == 0 and m[1] == 1)  # the ban reaches Bob's shard
    assert bob.state is ParticipantState.LEFT
    shards.deliver(lambda m: m[0] == 1)  # his leave reaches the others
    assert bob.id not in two.service.rooms[ROOM].remote
    shards.deliver()  # and now the ban reaches shard 2
    # Dave (on the host's own shard) removed with a ban.
    moderation.remove(host, dave.id, 60, now=shards.now)
    shards.deliver()
    assert dave.state is ParticipantState.LEFT
    for shard in shards.shards:
        for identity in ("bob", "dave"):
            assert shard.service.bans.banned(ROOM, identity, shards.now), identity
    with pytest.raises(RoomError) as refused:
        two.join(ROOM, "bob", now=shards.now)
    assert refused.value.code == "banned"
    # A shard that opens later gets the bans with the rest of the room's state.
    later = harness(monkeypatch)
    shards.shards.append(later)
    for index, shard in enumerate(shards.shards):
        shard.service.bus = shards._publisher(index)
    shards.now += 10
    erin = later.join(ROOM, "erin", now=shards.now)
    shards.deliver()
    assert {r["identity"] for r in later.service.rooms[ROOM].remote.values()} == {
        "host",
        "carol",
    }
    for identity in ("bob", "dave"):
        assert later.service.bans.banned(ROOM, identity, shards.now + 49)
        assert not later.service.bans.banned(ROOM, identity, shards.now + 51)  # 60 s in all
    assert erin.state is ParticipantState.JOINED
    shards.now -= 10
    shards.shards.pop()
    # A worker with no participant of the room yet keeps the ban for its next joiners.
    idle = harness(monkeypatch)
    event = {"type": "moderate", "action": "remove", "target": "x", "ban_s": 60}
    idle.service.on_shared(ROOM, 0, {**event, "identity": "erin"}, now=shards.now)
    assert idle.service.bans.banned(ROOM, "erin", shards.now)
    # A removal without a ban bars nobody anywhere.
    carol_id = next(p for p in zero.service.rooms[ROOM].remote if p not in (bob.id, dave.id))
    moderation.remove(host, carol_id, None, now=shards.now)
    shards.deliver()
    assert not any(s.service.bans.banned(ROOM, "carol", shards.now) for s in shards.shards)


def test_max_participants_holds_for_the_whole_room_across_shards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A room of at most three spread over three shards: the fourth joiner is refused on
    any shard, a participant of another shard rejoining takes back its own seat, and a
    seat freed on one shard is free on all."""
    small = RoomDefaults(RoomPolicy(waiting_room=False, max_participants=3))
    shards = Shards(monkeypatch, 3, small)
    zero, one, two = shards.shards
    zero.join(ROOM, "alice")
    bob = one.join(ROOM, "bob")
    two.join(ROOM, "carol")
    shards.deliver()
    for shard in shards.shards:
        with pytest.raises(RoomError) as refused:
            shard.join(ROOM, "dave", now=shards.now)
        assert refused.value.code == "room_full"
    # Bob reconnects through shard 0: his seat on shard 1 is his to take.
    moved = zero.join(ROOM, "bob", now=shards.now)
    shards.deliver()
    assert moved.state is ParticipantState.JOINED and bob.state is ParticipantState.LEFT
    with pytest.raises(RoomError):
        two.join(ROOM, "dave", now=shards.now)
    # Carol leaves shard 2: Dave now gets in, on shard 0.
    carol = two.service.rooms[ROOM].by_identity("carol")
    assert carol is not None
    two.service.leave(carol, now=shards.now)
    shards.deliver()
    assert zero.join(ROOM, "dave", now=shards.now).state is ParticipantState.JOINED


def test_a_room_s_many_bans_reach_an_opened_shard_in_small_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shards = Shards(monkeypatch, 2)
    zero, one = shards.shards
    zero.join(ROOM, "host", Grant.HOST)
    for i in range(40):
        zero.service.bans.ban(ROOM, f"guest-{i}", shards.now + 100 + i, shards.now)
    shards.deliver()
    one.join(ROOM, "bob", now=shards.now)
    shards.deliver(lambda m: m[0] == 1)  # shard 1's shard_opened reaches shard 0
    answers = [m[3] for m in shards.queue if m[3]["type"] == "bans"]
    assert [len(a["bans"]) for a in answers] == [16, 16, 8]
    assert all(len(json.dumps(a)) < 16 * 1024 for a in answers)
    writes: list[object] = []
    one.service.bans.on_ban = lambda *ban: writes.append(ban)  # the state store's hook
    shards.deliver()
    assert len(writes) == 40
    # Another shard's answer with the same bans writes nothing through again.
    for answer in answers:
        one.service.on_shared(ROOM, 0, answer, now=shards.now)
    assert len(writes) == 40
    for i in range(40):
        assert one.service.bans.banned(ROOM, f"guest-{i}", shards.now + 99 + i)
        assert not one.service.bans.banned(ROOM, f"guest-{i}", shards.now + 101 + i)


def test_a_seat_taken_again_drops_the_stale_entry_of_a_dead_shard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dana's shard dies (a lost node) and she reconnects to the other one before its lease
    lapses: she does not appear twice there, and Bob is told her old session left."""
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    old = zero.join(ROOM, "dana")
    zero.service.offer(old, simulcast_offer(), 0.0, names={"1": "camera"})
    bob = one.join(ROOM, "bob")
    spread.pump()
    room = one.service.rooms[ROOM]
    assert [d["identity"] for d in room.remote.values()] == ["dana"]
    assert any(p.participant_id == old.id for p in room.publications.values())
    spread.bus.queue.clear()  # shard zero is gone: nothing more from or to it
    new = one.join(ROOM, "dana")
    assert old.id not in room.remote
    assert not any(p.participant_id == old.id for p in room.publications.values())
    left = [m["participant"] for m in one.messages("bob", "participant_left")]
    assert left == [old.id]
    joined = one.messages("dana", "joined")[-1]
    assert old.id not in [p["id"] for p in joined["participants"]]
    assert new.state is ParticipantState.JOINED and bob.state is ParticipantState.JOINED


def test_a_seat_taken_on_another_shard_drops_a_third_shards_stale_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Shard one hears (``seat_taken``) that Dana took a seat on shard zero while a third,
    dead shard still lists her: that entry leaves shard one's room too."""
    spread = Spread(monkeypatch)
    zero, one = spread.shards
    bob = one.join(ROOM, "bob")
    spread.pump()
    room = one.service.rooms[ROOM]
    ghost = {"id": "PA_ghost", "identity": "dana", "name": "dana", "kind": "websocket"}
    room.remote["PA_ghost"] = {**ghost, "tracks": []}
    room.remote_shard["PA_ghost"] = 7
    zero.join(ROOM, "dana")
    spread.pump()
    assert "PA_ghost" not in room.remote
    assert [d["identity"] for d in room.remote.values()] == ["dana"]
    assert "PA_ghost" in [m["participant"] for m in one.messages("bob", "participant_left")]
    assert bob.state is ParticipantState.JOINED
