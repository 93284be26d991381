"""The pipe's wire format: what two forwarding places (workers, later nodes) exchange.

One datagram is a QUIC variable-length integer (RFC 9000 §16) naming a *flow*, then the
flow's payload, in the style of RTP over QUIC (draft-ietf-avtcore-rtp-over-quic §5.1): the
very same bytes fit a UDP datagram on loopback (between workers) and a QUIC DATAGRAM frame
(RFC 9221, between nodes), where the connection's TLS replaces the loopback address check.

- Flow ``CONTROL_FLOW`` (0) carries one small control message (below).
- Any other flow is one relayed publication: an RTP packet or an RTCP compound, told apart
  as RFC 5761 §4 does (second byte 192-223 is an RTCP packet type), in both directions:
  RTP and Sender Reports downstream, PLI/FIR and NACK upstream. RTP travels as the
  publisher's worker decrypted it (SRTP removed, the payload untouched: E2EE frames stay
  encrypted end to end).

Control messages (first byte the type, integers as QUIC varints):

- ``HELLO epoch``: keepalive; a new epoch means the peer restarted, its flows are gone.
- ``DEMAND flow version spatial_mask bitrate track_id``: the receiving side wants
  ``track_id`` on ``flow`` (which it allocated), the simulcast layers in ``spatial_mask``
  (bit i = spatial layer i; 0 keeps the flow open with nothing sent) and ``bitrate`` bits/s
  in all. State, not a delta: sent on every change and refreshed, so a lost one costs one
  refresh interval; ``version`` orders them (a late, older one is ignored).
- ``CLOSE flow reason``: either side ends a flow (unsubscribed, track ended, refused).
- ``RATES flow bps...``: downstream, the bitrate the publisher sends in each spatial layer
  (the remote allocator's input for layers it does not currently receive).
- ``STREAMS flow (ssrc layer)...``: downstream, which SSRC carries which spatial layer
  (publishers stop sending the mid/rid extensions that named them once acknowledged, so
  the receiving side cannot learn it from the packets). State, refreshed like DEMAND.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, TypeAlias

from sfu.packet.errors import ParseError

__all__ = [
    "CONTROL_FLOW",
    "MAX_FLOW_ID",
    "MAX_RATES",
    "MAX_STREAMS",
    "MAX_TRACK_ID_BYTES",
    "MAX_VARINT",
    "Close",
    "CloseReason",
    "ControlMessage",
    "Demand",
    "Hello",
    "MessageType",
    "Rates",
    "Streams",
    "decode_varint",
    "encode_control",
    "encode_varint",
    "flow_prefix",
    "is_rtcp",
    "parse_control",
    "split_flow",
]

#: The flow id of control messages; publications use the others.
CONTROL_FLOW: Final = 0
#: The largest value a QUIC varint holds (RFC 9000 §16: 62 bits).
MAX_VARINT: Final = (1 << 62) - 1
#: Flow ids are varints; every value but CONTROL_FLOW names a publication's flow.
MAX_FLOW_ID: Final = MAX_VARINT
#: A track id is a short server-made token (``TR_`` + 12 base64 characters); anything
#: longer is malformed, which bounds what one message may make the other side store.
MAX_TRACK_ID_BYTES: Final = 64
#: Spatial layers a RATES message may list (simulcast uses at most 3, SVC at most 4).
MAX_RATES: Final = 8
#: Source streams a STREAMS message may list (one per simulcast layer).
MAX_STREAMS: Final = 8
#: Smallest RTP header (RFC 3550 §5.1) and RTCP header (§6.4.1).
_RTP_HEADER: Final = 12
_RTCP_HEADER: Final = 4


class MessageType(enum.IntEnum):
    """The first byte of a control message."""

    HELLO = 1
    DEMAND = 2
    CLOSE = 3
    RATES = 4
    STREAMS = 5


class CloseReason(enum.IntEnum):
    """Why a flow ended (a fixed set: they become metric label values)."""

    UNSUBSCRIBED = 0
    ENDED = 1
    UNKNOWN_TRACK = 2
    FLOW_LIMIT = 3
    EXPIRED = 4


@dataclass(frozen=True, slots=True)
class Hello:
    """A keepalive carrying the sender's epoch (random per pipe instance)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Demand:
    """The receiving side's wish for one flow: which track, which layers, how much."""

    flow: int
    version: int
    spatial_mask: int
    bitrate: int
    track_id: str


@dataclass(frozen=True, slots=True)
class Close:
    """The end of one flow."""

    flow: int
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class Rates:
    """The publisher's bitrate per spatial layer of one flow, lowest layer first."""

    flow: int
    bps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Streams:
    """The (ssrc, spatial layer) of each source stream of one flow."""

    flow: int
    streams: tuple[tuple[int, int], ...]


ControlMessage: TypeAlias = Hello | Demand | Close | Rates | Streams


def encode_varint(value: int) -> bytes:
    """``value`` as a QUIC variable-length integer, in its shortest form (RFC 9000 §16)."""
    if value < 0 or value > MAX_VARINT:
        raise ValueError(f"varint out of range: {value}")
    if value < 1 << 6:
        return bytes((value,))
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x8000_0000).to_bytes(4, "big")
    return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")


def decode_varint(data: bytes, offset: int = 0) -> tuple[int, int]:
    """The varint at ``offset`` and the offset after it; ParseError when truncated."""
    if offset >= len(data):
        raise ParseError("truncated varint")
    first = data[offset]
    length = 1 << (first >> 6)
    end = offset + length
    if end > len(data):
        raise ParseError("truncated varint")
    value = first & 0x3F
    for i in range(offset + 1, end):
        value = (value << 8) | data[i]
    return value, end


def flow_prefix(flow: int) -> bytes:
    """The bytes in front of every datagram of ``flow`` (computed once per flow)."""
    return encode_varint(flow)


def split_flow(data: bytes) -> tuple[int, int]:
    """A datagram's flow id and where its payload starts; ParseError when malformed."""
    return decode_varint(data, 0)


def is_rtcp(data: bytes, offset: int) -> bool:
    """Whether the payload at ``offset`` is an RTCP compound rather than an RTP packet
    (RFC 5761 §4); ParseError when it is neither (not version 2, or too short)."""
    remaining = len(data) - offset
    if remaining < _RTCP_HEADER or data[offset] >> 6 != 2:
        raise ParseError("not RTP or RTCP")
    rtcp = 192 <= data[offset + 1] <= 223
    if not rtcp and remaining < _RTP_HEADER:
        raise ParseError("truncated RTP")
    return rtcp


def encode_control(message: ControlMessage) -> bytes:
    """The whole datagram (flow 0 included) carrying ``message``."""
    out = bytearray((CONTROL_FLOW,))
    if isinstance(message, Hello):
        out.append(MessageType.HELLO)
        out += encode_varint(message.epoch)
    elif isinstance(message, Demand):
        track = message.track_id.encode()
        if len(track) > MAX_TRACK_ID_BYTES or not 0 <= message.spatial_mask <= 0xFF:
            raise ValueError("demand out of range")
        out.append(MessageType.DEMAND)
        out += encode_varint(message.flow)
        out += encode_varint(message.version)
        out.append(message.spatial_mask)
        out += encode_varint(message.bitrate)
        out.append(len(track))
        out += track
    elif isinstance(message, Close):
        out.append(MessageType.CLOSE)
        out += encode_varint(message.flow)
        out.append(message.reason)
    elif isinstance(message, Streams):
        if len(message.streams) > MAX_STREAMS:
            raise ValueError("too many streams")
        out.append(MessageType.STREAMS)
        out += encode_varint(message.flow)
        out.append(len(message.streams))
        for ssrc, layer in message.streams:
            out += ssrc.to_bytes(4, "big")
            out.append(layer)
    else:
        if len(message.bps) > MAX_RATES:
            raise ValueError("too many layers")
        out.append(MessageType.RATES)
        out += encode_varint(message.flow)
        out.append(len(message.bps))
        for bps in message.bps:
            out += encode_varint(bps)
    return bytes(out)


def _byte(data: bytes, offset: int) -> tuple[int, int]:
    if offset >= len(data):
        raise ParseError("truncated control message")
    return data[offset], offset + 1


def _flow(data: bytes, offset: int) -> tuple[int, int]:
    flow, offset = decode_varint(data, offset)
    if flow == CONTROL_FLOW:
        raise ParseError("control message names the control flow")
    return flow, offset


def parse_control(data: bytes, offset: int) -> ControlMessage:
    """The control message at ``offset`` (after the flow id); it must fill the datagram.
    Raises ParseError on anything malformed: unknown type, truncation, trailing bytes,
    an out-of-range field."""
    kind, offset = _byte(data, offset)
    message: ControlMessage
    if kind == MessageType.HELLO:
        epoch, offset = decode_varint(data, offset)
        message = Hello(epoch)
    elif kind == MessageType.DEMAND:
        flow, offset = _flow(data, offset)
        version, offset = decode_varint(data, offset)
        mask, offset = _byte(data, offset)
        bitrate, offset = decode_varint(data, offset)
        length, offset = _byte(data, offset)
        end = offset + length
        if length > MAX_TRACK_ID_BYTES or end > len(data):
            raise ParseError("bad track id")
        try:
            track_id = data[offset:end].decode()
        except UnicodeDecodeError as exc:
            raise ParseError("track id is not UTF-8") from exc
        offset = end
        message = Demand(flow, version, mask, bitrate, track_id)
    elif kind == MessageType.CLOSE:
        flow, offset = _flow(data, offset)
        code, offset = _byte(data, offset)
        try:
            reason = CloseReason(code)
        except ValueError as exc:
            raise ParseError("unknown close reason") from exc
        message = Close(flow, reason)
    elif kind == MessageType.RATES:
        flow, offset = _flow(data, offset)
        count, offset = _byte(data, offset)
        if count > MAX_RATES:
            raise ParseError("too many layers")
        rates = []
        for _ in range(count):
            bps, offset = decode_varint(data, offset)
            rates.append(bps)
        message = Rates(flow, tuple(rates))
    elif kind == MessageType.STREAMS:
        flow, offset = _flow(data, offset)
        count, offset = _byte(data, offset)
        end = offset + 5 * count
        if count > MAX_STREAMS or end > len(data):
            raise ParseError("bad stream list")
        streams = tuple(
            (int.from_bytes(data[i : i + 4], "big"), data[i + 4]) for i in range(offset, end, 5)
        )
        offset = end
        message = Streams(flow, streams)
    else:
        raise ParseError("unknown control message")
    if offset != len(data):
        raise ParseError("trailing bytes after control message")
    return message
