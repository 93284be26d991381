"""The room chat relay with a fake clock: who gets what, the server-attached sender id, size and
rate limits, moderation, data channel delivery before the WebSocket fallback."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sfu.room.chat import CHAT_LABEL, LOSSY_CHAT_LABEL, ChatLimits, ChatRelay
from sfu.room.identity import Grant
from sfu.room.room import Participant, ParticipantState, Room
from sfu.transport.datachannel import ChannelMessage, ChannelOpened, DataChannel


def _room(*ids: str) -> tuple[Room, dict[str, list[dict[str, Any]]]]:
    room = Room("r")
    inboxes: dict[str, list[dict[str, Any]]] = {}
    for pid in ids:
        inbox: list[dict[str, Any]] = []
        inboxes[pid] = inbox
        room.participants[pid] = Participant(
            id=pid,
            identity=f"user-{pid}",
            name=pid,
            grants=Grant.PUBLISH | Grant.SUBSCRIBE,
            room=room,
            state=ParticipantState.JOINED,
            sink=inbox.append,
        )
    return room, inboxes


def test_relays_to_everyone_else_with_the_server_attached_sender() -> None:
    room, inboxes = _room("a", "b", "c")
    relay = ChatRelay()
    # A forged "from" inside the text stays text: the envelope's sender is the server's.
    assert relay.relay(room.participants["a"], '{"from": "c"} hi', now=0.0) == "ok"
    assert inboxes["a"] == []
    for pid in ("b", "c"):
        assert inboxes[pid] == [
            {"type": "chat", "from": "a", "text": '{"from": "c"} hi', "reliable": True}
        ]
    assert (relay.relayed, relay.delivered) == (1, 2)


def test_size_limit_in_utf8_bytes() -> None:
    room, inboxes = _room("a", "b")
    relay = ChatRelay(ChatLimits(max_message_bytes=4))
    assert relay.relay(room.participants["a"], "éé", now=0.0) == "ok"  # 4 bytes
    assert relay.relay(room.participants["a"], "ééé", now=0.0) == "too_large"
    assert len(inboxes["b"]) == 1 and relay.refused["too_large"] == 1


def test_rate_limit_refills_with_the_clock() -> None:
    room, inboxes = _room("a", "b")
    relay = ChatRelay(ChatLimits(rate_per_s=2.0, burst=3))
    a = room.participants["a"]
    outcomes = [relay.relay(a, str(i), now=10.0) for i in range(5)]
    assert outcomes == ["ok", "ok", "ok", "rate", "rate"]
    assert relay.relay(a, "x", now=10.4) == "rate"  # 0.8 token
    assert relay.relay(a, "y", now=10.5) == "ok"  # 1 token
    assert [m["text"] for m in inboxes["b"]] == ["0", "1", "2", "y"]
    assert relay.refused["rate"] == 3
    # Another participant has its own bucket.
    assert relay.relay(room.participants["b"], "z", now=10.5) == "ok"


def test_muted_and_removed_participants_cannot_send() -> None:
    room, inboxes = _room("a", "b")
    relay = ChatRelay()
    a = room.participants["a"]
    a.chat_muted = True
    assert relay.relay(a, "hi", now=0.0) == "muted"
    a.chat_muted = False
    del room.participants["a"]
    a.state = ParticipantState.LEFT
    assert relay.relay(a, "hi", now=0.0) == "not_joined"
    assert inboxes["b"] == []
    assert relay.refused == {"muted": 1, "not_joined": 1}


def test_waiting_participants_neither_send_nor_receive() -> None:
    room, inboxes = _room("a", "b", "w")
    relay = ChatRelay()
    room.participants["w"].state = ParticipantState.WAITING
    assert relay.relay(room.participants["w"], "hi", now=0.0) == "not_joined"
    assert relay.relay(room.participants["a"], "hi", now=0.0) == "ok"
    assert inboxes["w"] == [] and len(inboxes["b"]) == 1


def test_data_channel_delivery_first_then_websocket() -> None:
    room, inboxes = _room("a", "b", "c")
    relay = ChatRelay()
    sent: list[tuple[str, str, dict[str, Any]]] = []

    def channel_sender(receiver: Participant, label: str, envelope: str, now: float) -> bool:
        if receiver.id != "b":
            return False  # c opened no data channel
        sent.append((receiver.id, label, json.loads(envelope)))
        return True

    relay.channel_sender = channel_sender
    channel = DataChannel(1, LOSSY_CHAT_LABEL, "", False, 0)
    relay.on_channel_event(room.participants["a"], ChannelOpened(channel), 0.0)
    relay.on_channel_event(room.participants["a"], ChannelMessage(channel, b"yo", False), 0.0)
    assert sent == [
        ("b", LOSSY_CHAT_LABEL, {"type": "chat", "from": "a", "text": "yo", "reliable": False})
    ]
    assert inboxes["b"] == [] and [m["text"] for m in inboxes["c"]] == ["yo"]


@pytest.mark.parametrize(
    ("label", "data", "binary", "reason"),
    [
        ("other", b"hi", False, "unknown_channel"),
        (CHAT_LABEL, b"hi", True, "binary"),
        (CHAT_LABEL, b"\xff\xfe", False, "not_utf8"),
    ],
)
def test_channel_messages_the_relay_refuses(
    label: str, data: bytes, binary: bool, reason: str
) -> None:
    room, inboxes = _room("a", "b")
    relay = ChatRelay()
    channel = DataChannel(1, label, "", True, None)
    relay.on_channel_event(room.participants["a"], ChannelMessage(channel, data, binary), 0.0)
    assert inboxes["b"] == [] and relay.refused == {reason: 1}


def test_tap_sees_exactly_what_is_relayed() -> None:
    room, _ = _room("a", "b")
    relay = ChatRelay(ChatLimits(max_message_bytes=8))
    seen: list[tuple[str, str]] = []
    relay.tap = lambda sender, text: seen.append((sender, text))
    relay.relay(room.participants["a"], "short", now=0.0)
    relay.relay(room.participants["a"], "far too long", now=0.0)
    assert seen == [("a", "short")]


def test_forget_drops_the_bucket() -> None:
    room, _ = _room("a", "b")
    relay = ChatRelay(ChatLimits(burst=1, rate_per_s=0.001))
    a = room.participants["a"]
    assert relay.relay(a, "1", now=0.0) == "ok"
    assert relay.relay(a, "2", now=0.0) == "rate"
    relay.forget(a)
    assert relay.relay(a, "3", now=0.0) == "ok"


def test_limits_validated() -> None:
    with pytest.raises(ValueError, match="positive"):
        ChatLimits(burst=0)


def test_room_requiring_e2ee_refuses_plain_text() -> None:
    room, inboxes = _room("a", "b")
    relay = ChatRelay()
    required = {"r": True}
    relay.requires_e2ee = lambda r: required[r.name]
    a = room.participants["a"]
    assert relay.relay(a, "plain words", now=0.0) == "not_encrypted"
    assert relay.relay(a, "e2ee1:0:AAAA", now=0.0) == "ok"
    required["r"] = False
    assert relay.relay(a, "plain words", now=0.0) == "ok"
    assert [m["text"] for m in inboxes["b"]] == ["e2ee1:0:AAAA", "plain words"]
    assert relay.refused == {"not_encrypted": 1}
