"""WebRTC data channels (RFC 8831) over an :class:`~sfu.transport.sctp.SctpAssociation`, sans-I/O.

The Data Channel Establishment Protocol (DCEP, RFC 8832) is small enough to live here: the
peer opens a channel with DATA_CHANNEL_OPEN on a stream, we answer DATA_CHANNEL_ACK on the same
stream and from then on messages on that stream belong to the channel. The server only accepts
channels (it never opens one): each client opens the channels it wants relayed, so the channel's
reliability is the client's choice and is mirrored when the server sends on it.

Malformed DCEP messages and messages on unknown streams are counted and dropped.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from typing import Final

from sfu.transport.sctp import SctpAssociation, SctpMessage

__all__ = [
    "ChannelMessage",
    "ChannelOpened",
    "DataChannel",
    "DataChannels",
    "DcepError",
    "Ppid",
    "parse_open",
]

#: DCEP message types (RFC 8832 §8.2.1).
DCEP_OPEN: Final = 0x03
DCEP_ACK: Final = 0x02
#: Channel types (RFC 8832 §5.1); the low byte picks partial reliability, 0x80 unordered.
CHANNEL_RELIABLE: Final = 0x00
CHANNEL_PARTIAL_RELIABLE_REXMIT: Final = 0x01
CHANNEL_PARTIAL_RELIABLE_TIMED: Final = 0x02
CHANNEL_UNORDERED_BIT: Final = 0x80
#: Drop reasons of data channels (a fixed set: they label a metric).
DROP_REASONS: Final = (
    "sctp_malformed",
    "sctp_overrun",
    "message_too_large",
    "dcep_malformed",
    "send_refused",
    "sctp_error",
)
#: Most channels one peer may open: bounds per-peer state (a chat needs two).
MAX_CHANNELS: Final = 16
#: Longest label or protocol we keep (RFC 8832 allows 65535); longer ones are refused.
MAX_LABEL_BYTES: Final = 256
_OPEN_HEADER: Final = struct.Struct("!BBHIHH")


class Ppid(enum.IntEnum):
    """SCTP payload protocol identifiers of WebRTC (RFC 8831 §8, RFC 8832 §8.1)."""

    DCEP = 50
    STRING = 51
    BINARY = 53
    STRING_EMPTY = 56
    BINARY_EMPTY = 57


class DcepError(ValueError):
    """A DATA_CHANNEL_OPEN that cannot be parsed."""


@dataclasses.dataclass(frozen=True, slots=True)
class DataChannel:
    """One open channel: its stream, label and reliability as the opener asked."""

    stream_id: int
    label: str
    protocol: str
    ordered: bool
    max_retransmits: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelOpened:
    """Event: the peer opened a channel."""

    channel: DataChannel


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelMessage:
    """Event: one message on an open channel (``binary`` tells bytes from UTF-8 text)."""

    channel: DataChannel
    data: bytes
    binary: bool


def parse_open(stream_id: int, payload: bytes) -> DataChannel:
    """Parse DATA_CHANNEL_OPEN (RFC 8832 §5.1); raise :class:`DcepError` on anything else."""
    if len(payload) < _OPEN_HEADER.size:
        raise DcepError("short DATA_CHANNEL_OPEN")
    kind, channel_type, _prio, reliability, label_len, proto_len = _OPEN_HEADER.unpack_from(payload)
    if kind != DCEP_OPEN:
        raise DcepError(f"not DATA_CHANNEL_OPEN: {kind}")
    if label_len > MAX_LABEL_BYTES or proto_len > MAX_LABEL_BYTES:
        raise DcepError("label or protocol too long")
    end = _OPEN_HEADER.size + label_len + proto_len
    if len(payload) != end:
        raise DcepError("DATA_CHANNEL_OPEN length mismatch")
    try:
        label = payload[_OPEN_HEADER.size : _OPEN_HEADER.size + label_len].decode()
        protocol = payload[_OPEN_HEADER.size + label_len : end].decode()
    except UnicodeDecodeError as exc:
        raise DcepError("label or protocol not UTF-8") from exc
    base = channel_type & ~CHANNEL_UNORDERED_BIT
    if base not in (
        CHANNEL_RELIABLE,
        CHANNEL_PARTIAL_RELIABLE_REXMIT,
        CHANNEL_PARTIAL_RELIABLE_TIMED,
    ):
        raise DcepError(f"unknown channel type {channel_type}")
    # A timed channel is served as a zero-retransmission one: the server holds no clock per
    # message, and a lifetime shorter than one RTO means no retransmission anyway.
    max_retransmits = None if base == CHANNEL_RELIABLE else (reliability if base == 1 else 0)
    return DataChannel(
        stream_id=stream_id,
        label=label,
        protocol=protocol,
        ordered=not channel_type & CHANNEL_UNORDERED_BIT,
        max_retransmits=max_retransmits,
    )


class DataChannels:
    """The data channels of one peer connection; wraps its SCTP association."""

    def __init__(self, association: SctpAssociation) -> None:
        self.association = association
        self.channels: dict[int, DataChannel] = {}
        self.malformed = 0
        self.refused_sends = 0

    def receive(
        self, packet: bytes, *, now: float
    ) -> tuple[list[bytes], list[ChannelOpened | ChannelMessage]]:
        """Take one SCTP packet; return packets to send and the channel events it produced."""
        out = self.association.receive(packet, now=now)
        events: list[ChannelOpened | ChannelMessage] = []
        for message in self.association.messages():
            out += self._deliver(message, events, now)
        for stream_id in self.association.reset_streams():
            # The peer closed the channel: forget it and reset our direction too (§6.7).
            if self.channels.pop(stream_id, None) is not None:
                out += self.association.reset_outgoing(stream_id, now=now)
        return out, events

    def send(
        self, channel: DataChannel, data: bytes, *, binary: bool, now: float
    ) -> list[bytes] | None:
        """Send one message on ``channel`` with its reliability; None when refused (counted)."""
        if data:
            ppid = Ppid.BINARY if binary else Ppid.STRING
        else:
            # An empty message travels as one zero byte with its own PPID (RFC 8831 §6.6).
            ppid, data = (Ppid.BINARY_EMPTY if binary else Ppid.STRING_EMPTY), b"\x00"
        out = self.association.send(
            channel.stream_id,
            ppid,
            data,
            now=now,
            ordered=channel.ordered,
            max_retransmits=channel.max_retransmits,
        )
        if out is None:
            self.refused_sends += 1
            self.association.drops["send_refused"] += 1
        return out

    def by_label(self, label: str) -> DataChannel | None:
        """The open channel with ``label`` (the first one, if the peer opened several)."""
        for channel in self.channels.values():
            if channel.label == label:
                return channel
        return None

    def _deliver(
        self, message: SctpMessage, events: list[ChannelOpened | ChannelMessage], now: float
    ) -> list[bytes]:
        if message.ppid == Ppid.DCEP:
            return self._dcep(message, events, now)
        channel = self.channels.get(message.stream_id)
        if channel is None or message.ppid not in Ppid.__members__.values():
            self.malformed += 1
            self.association.drops["dcep_malformed"] += 1
            return []
        if message.ppid in (Ppid.STRING_EMPTY, Ppid.BINARY_EMPTY):
            events.append(ChannelMessage(channel, b"", message.ppid == Ppid.BINARY_EMPTY))
        else:
            events.append(ChannelMessage(channel, message.data, message.ppid == Ppid.BINARY))
        return []

    def _dcep(
        self, message: SctpMessage, events: list[ChannelOpened | ChannelMessage], now: float
    ) -> list[bytes]:
        if message.data[:1] == bytes([DCEP_ACK]):
            return []  # we open no channel, so an ACK answers nothing: ignore it
        try:
            channel = parse_open(message.stream_id, message.data)
        except DcepError:
            self.malformed += 1
            self.association.drops["dcep_malformed"] += 1
            return []
        if message.stream_id not in self.channels and len(self.channels) >= MAX_CHANNELS:
            self.malformed += 1
            self.association.drops["dcep_malformed"] += 1
            return []
        self.channels[message.stream_id] = channel
        events.append(ChannelOpened(channel))
        ack = self.association.send(message.stream_id, Ppid.DCEP, bytes([DCEP_ACK]), now=now)
        return ack or []
