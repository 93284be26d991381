"""Chat in the room service, socket-free: an offer with a data channel section gets an SCTP
association on its transport; hosts mute a participant's chat (audited); the protocol's
``chat`` and ``mute_chat`` messages parse strictly."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_files import FIXTURES
from room_fixtures import harness

from sfu.packet.sdp import SessionDescription
from sfu.room.audit import AuditLog
from sfu.room.identity import Grant
from sfu.room.moderation import Moderation
from sfu.room.service import RoomError
from sfu.signaling.protocol import Chat, MuteChat, ProtocolError, parse_client_message

ROOM = "chat-unit"
HOST = Grant.HOST | Grant.PUBLISH | Grant.SUBSCRIBE


def _datachannel_offer() -> str:
    return (FIXTURES / "sdp" / "chromium_datachannel_offer.sdp").read_text()


def test_datachannel_offer_gets_an_association_and_a_bundled_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    answer = SessionDescription.parse(h.service.offer(alice, _datachannel_offer(), 0.0))
    (app,) = answer.media
    assert (app.kind, app.sctp_port, app.max_message_size) == ("application", 5000, 65536)
    assert app.port != 0 and answer.bundle == ("0",)
    assert alice.peer is not None
    channels = alice.peer.transport.data_channels
    assert channels is not None
    # Chromium offered 256 KiB; the association sends up to that, receives up to ours.
    assert channels.association.remote_max_message_size == 262144
    # DTLS actpass in the offer: the server answers passive, so it is the DTLS (and SCTP) server.
    assert channels.association.server
    # A renegotiation keeps the same association.
    h.service.offer(alice, _datachannel_offer(), 1.0)
    assert alice.peer.transport.data_channels is channels


def test_host_mutes_and_unmutes_chat_and_it_is_audited(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    h = harness(monkeypatch, audit=AuditLog(tmp_path))
    mod = Moderation(h.service)
    host = h.join(ROOM, "host", HOST)
    alice = h.join(ROOM, "alice")
    h.join(ROOM, "bob")
    mod.mute_chat(host, alice.id, True)
    assert alice.chat_muted
    assert h.messages("bob", "chat_muted") == [
        {"type": "chat_muted", "participant": alice.id, "muted": True}
    ]
    assert h.service.chat.relay(alice, "hi", now=0.0) == "muted"
    assert h.messages("bob", "chat") == []
    mod.mute_chat(host, alice.id, False)
    assert h.service.chat.relay(alice, "hi", now=0.0) == "ok"
    assert [m["text"] for m in h.messages("bob", "chat")] == ["hi"]
    # Not a host: refused, nothing changes.
    with pytest.raises(RoomError) as info:
        mod.mute_chat(alice, host.id, True)
    assert info.value.code == "forbidden" and not host.chat_muted
    records = [line for f in tmp_path.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert sum('"action":"mute_chat"' in r.replace(" ", "") for r in records) == 3


def test_leaving_drops_the_rate_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    alice = h.join(ROOM, "alice")
    h.join(ROOM, "bob")
    h.service.chat.relay(alice, "hi", now=0.0)
    assert alice.id in h.service.chat._buckets
    h.service.leave(alice, now=1.0)
    assert alice.id not in h.service.chat._buckets
    assert h.service.chat.relay(alice, "after", now=1.0) == "not_joined"


def test_protocol_messages() -> None:
    assert parse_client_message('{"type": "chat", "text": "hi", "id": 3}') == Chat("hi", 3)
    assert parse_client_message('{"type": "mute_chat", "participant": "PA_x"}') == MuteChat(
        "PA_x", True
    )
    for bad in ('{"type": "chat"}', '{"type": "chat", "text": ""}', '{"type": "chat", "text": 5}'):
        with pytest.raises(ProtocolError) as info:
            parse_client_message(bad)
        assert info.value.code == "bad_message"


def test_chat_metrics_count_relays_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_metrics_core import registry_for, value

    h = harness(monkeypatch)
    registry = registry_for(h.service)
    # Every refusal reason is exposed at 0 before anything happens.
    assert value(registry, "sfu_chat_refused_total", reason="rate") == 0
    alice = h.join(ROOM, "alice")
    h.join(ROOM, "bob")
    h.join(ROOM, "carol")
    h.service.chat.relay(alice, "hi", now=0.0)
    h.service.chat.relay(alice, "x" * 5000, now=0.0)
    assert value(registry, "sfu_chat_messages_total", event="relayed") == 1
    assert value(registry, "sfu_chat_messages_total", event="delivered") == 2
    assert value(registry, "sfu_chat_refused_total", reason="too_large") == 1


def test_plain_chat_refused_where_the_room_requires_e2ee(monkeypatch: pytest.MonkeyPatch) -> None:
    from sfu.room.policy import RoomDefaults, RoomPolicy

    h = harness(
        monkeypatch, defaults=RoomDefaults(RoomPolicy(waiting_room=False, e2ee_required=True))
    )
    alice = h.join(ROOM, "alice")
    h.join(ROOM, "bob")
    assert h.service.chat.relay(alice, "plain", now=0.0) == "not_encrypted"
    assert h.service.chat.relay(alice, "e2ee1:0:AAAA", now=0.0) == "ok"
    assert [m["text"] for m in h.messages("bob", "chat")] == ["e2ee1:0:AAAA"]


def test_data_channel_drops_are_exported(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_metrics_core import registry_for, value

    h = harness(monkeypatch)
    registry = registry_for(h.service)
    assert value(registry, "sfu_datachannel_drops_total", reason="sctp_malformed") == 0
    alice = h.join(ROOM, "alice")
    h.service.offer(alice, _datachannel_offer(), 0.0)
    assert alice.peer is not None and alice.peer.transport.data_channels is not None
    alice.peer.transport.data_channels.receive(b"not sctp at all", now=0.0)
    assert value(registry, "sfu_datachannel_drops_total", reason="sctp_malformed") == 1
    # The count outlives the participant's association.
    h.service.leave(alice, now=1.0)
    assert value(registry, "sfu_datachannel_drops_total", reason="sctp_malformed") == 1
