"""The room chat relay: text messages from one participant to everyone else in its room.

Messages arrive on a participant's data channels (label ``chat``: reliable and ordered, or
``chat-lossy``: whatever partial reliability the client opened it with) or, as a fallback, on
the room WebSocket (``{"type": "chat", "text": ...}``). The relay checks the sender (joined, not
chat-muted by a host), its size and rate limits, attaches the sender's participant id itself
(nothing the client claims about who it is is trusted) and sends the same envelope to every
other joined participant: on the channel with the same label when that participant opened one,
otherwise on its room WebSocket. Nothing is stored: a message exists only while it is relayed.

In an E2EE room the clients encrypt the text with their media key before sending; the relay
sees (and forwards) only ciphertext, which it treats as opaque text like any other. In a room
whose policy requires E2EE, text not in the encrypted format is refused (``not_encrypted``):
a client without the key cannot leak plaintext into it by mistake.

Sans-I/O: the caller passes ``now``; refusals are counted by reason, never raised to the peer.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sfu.room.room import Participant, ParticipantState, Room
from sfu.transport.datachannel import ChannelMessage, ChannelOpened

__all__ = [
    "CHAT_LABEL",
    "LOSSY_CHAT_LABEL",
    "ChatLimits",
    "ChatRelay",
]

#: Data channel labels the relay serves: the reliable chat and the unreliable one.
CHAT_LABEL: Final = "chat"
LOSSY_CHAT_LABEL: Final = "chat-lossy"
_LABELS: Final = frozenset({CHAT_LABEL, LOSSY_CHAT_LABEL})
#: How an end-to-end encrypted chat message starts (docs/e2ee.md, "Chat"): in a room whose
#: policy requires E2EE, text without it is refused (the relay cannot check the rest).
E2EE_CHAT_PREFIX: Final = "e2ee1:"
#: Refusal reasons, a fixed set (they label a metric).
REFUSAL_REASONS: Final = (
    "not_joined",
    "muted",
    "too_large",
    "not_encrypted",
    "rate",
    "binary",
    "not_utf8",
    "unknown_channel",
)


@dataclass(frozen=True, slots=True)
class ChatLimits:
    """Per-participant limits of the relay (a token bucket and a size cap)."""

    #: Longest message text in bytes (UTF-8); an E2EE message is longer than its plaintext
    #: (base64 of IV + ciphertext + tag), so this leaves room for ~3 KB of plain text.
    max_message_bytes: int = 4096
    #: Sustained messages per second one participant may send, and the burst above it.
    rate_per_s: float = 5.0
    burst: int = 10

    def __post_init__(self) -> None:
        if self.max_message_bytes <= 0 or self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("chat limits must be positive")


class _Bucket:
    """Token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


#: What the relay delivers to one receiver: the envelope (JSON text) and whether reliable.
Delivery = Callable[[Participant, str, str, float], bool]


class ChatRelay:
    """Relays chat between the participants of each room; holds only per-sender buckets."""

    def __init__(self, limits: ChatLimits | None = None) -> None:
        self.limits = limits or ChatLimits()
        self._buckets: dict[str, _Bucket] = {}
        self.relayed = 0
        self.delivered = 0
        self.refused: collections.Counter[str] = collections.Counter()
        #: Drops on every participant's data channels (SCTP and DCEP), by reason; the room
        #: service hands it to each association so the totals survive the peers.
        self.channel_drops: collections.Counter[str] = collections.Counter()
        #: Sees every message the relay accepts, as the relay received it (sender id, text):
        #: the tests' capture of what the server relays. None in production.
        self.tap: Callable[[str, str], None] | None = None
        #: Told of every relayed envelope (room, label, envelope): the room's other shards
        #: deliver it to their participants (``deliver_shared``).
        self.on_relayed: Callable[[Room, str, str], None] | None = None
        #: Sends to one participant's data channel: (receiver, label, envelope, now) -> sent.
        #: The room service sets it; without it everything goes to the WebSocket.
        self.channel_sender: Delivery | None = None
        #: Whether a room's policy requires E2EE (the room service sets it; None: never).
        self.requires_e2ee: Callable[[Room], bool] | None = None

    # -- inputs ---------------------------------------------------------------------------

    def on_channel_event(
        self, sender: Participant, event: ChannelOpened | ChannelMessage, now: float
    ) -> None:
        """A data channel event of ``sender``'s transport."""
        if isinstance(event, ChannelOpened):
            return
        if event.channel.label not in _LABELS:
            self.refused["unknown_channel"] += 1
            return
        if event.binary:
            self.refused["binary"] += 1
            return
        try:
            text = event.data.decode("utf-8")
        except UnicodeDecodeError:
            self.refused["not_utf8"] += 1
            return
        self.relay(sender, text, label=event.channel.label, now=now)

    def relay(self, sender: Participant, text: str, *, label: str = CHAT_LABEL, now: float) -> str:
        """Relay ``text`` from ``sender``; returns ``"ok"`` or the refusal reason (counted)."""
        reason = self._check(sender, text, now)
        if reason is not None:
            self.refused[reason] += 1
            return reason
        if self.tap is not None:
            self.tap(sender.id, text)
        envelope = json.dumps(
            {"type": "chat", "from": sender.id, "text": text, "reliable": label == CHAT_LABEL},
            separators=(",", ":"),
        )
        self.relayed += 1
        for receiver in list(sender.room.participants.values()):
            if receiver is sender or receiver.state is not ParticipantState.JOINED:
                continue
            if self._deliver(receiver, label, envelope, now):
                self.delivered += 1
        if self.on_relayed is not None:
            self.on_relayed(sender.room, label, envelope)
        return "ok"

    def deliver_shared(self, room: Room, label: str, envelope: str, now: float) -> None:
        """A chat envelope another shard of ``room`` relayed: to every participant here."""
        if label not in _LABELS:
            self.refused["unknown_channel"] += 1
            return
        for receiver in list(room.participants.values()):
            if receiver.state is ParticipantState.JOINED and self._deliver(
                receiver, label, envelope, now
            ):
                self.delivered += 1

    def forget(self, participant: Participant) -> None:
        """Drop a participant's bucket when it leaves (state stays bounded by who is present)."""
        self._buckets.pop(participant.id, None)

    # -- internals ------------------------------------------------------------------------

    def _check(self, sender: Participant, text: str, now: float) -> str | None:
        if sender.state is not ParticipantState.JOINED or sender.id not in sender.room.participants:
            return "not_joined"
        if sender.chat_muted:
            return "muted"
        if len(text.encode("utf-8")) > self.limits.max_message_bytes:
            return "too_large"
        requires = self.requires_e2ee
        if requires is not None and not text.startswith(E2EE_CHAT_PREFIX) and requires(sender.room):
            return "not_encrypted"
        limits = self.limits
        bucket = self._buckets.get(sender.id)
        if bucket is None:
            bucket = self._buckets[sender.id] = _Bucket(float(limits.burst), now)
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(float(limits.burst), bucket.tokens + elapsed * limits.rate_per_s)
        bucket.at = now
        if bucket.tokens < 1.0:
            return "rate"
        bucket.tokens -= 1.0
        return None

    def _deliver(self, receiver: Participant, label: str, envelope: str, now: float) -> bool:
        sender = self.channel_sender
        if sender is not None and sender(receiver, label, envelope, now):
            return True
        if receiver.kind != "websocket":
            return False  # WHIP/WHEP clients have no room socket
        receiver.send(json.loads(envelope))
        return True
