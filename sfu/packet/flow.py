"""A flow id in front of an opaque payload: the framing of a node link's QUIC DATAGRAMs.

In the style of RTP over QUIC (draft-ietf-avtcore-rtp-over-quic, section 5.1) every DATAGRAM
frame (RFC 9221) starts with a flow identifier as a QUIC variable-length integer (RFC 9000,
section 16: the two high bits of the first byte give the length, 1, 2, 4 or 8 bytes, and the
rest is the value, big-endian), then the payload, which the link never reads: an RTP or RTCP
packet, E2EE or not. The flow id says which relayed stream a payload belongs to.
"""

from __future__ import annotations

from typing import Final

from sfu.packet.errors import ParseError

__all__ = ["MAX_VARINT", "decode_flow", "decode_varint", "encode_flow", "encode_varint"]

#: Largest value a QUIC variable-length integer holds (2^62 - 1, RFC 9000 section 16).
MAX_VARINT: Final = (1 << 62) - 1

#: The length in bytes that each value of the first byte's two high bits announces.
_LENGTHS: Final = (1, 2, 4, 8)


def encode_varint(value: int) -> bytes:
    """``value`` as a QUIC variable-length integer in its shortest form."""
    if value < 0x40:
        if value < 0:
            raise ValueError(f"a varint is not negative, got {value}")
        return bytes((value,))
    if value < 0x4000:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 0x4000_0000:
        return (value | 0x8000_0000).to_bytes(4, "big")
    if value <= MAX_VARINT:
        return (value | 0xC000_0000_0000_0000).to_bytes(8, "big")
    raise ValueError(f"a varint holds at most 2^62 - 1, got {value}")


def decode_varint(data: bytes | memoryview, offset: int = 0) -> tuple[int, int]:
    """The varint at ``offset`` and the offset after it; ParseError when it is cut short."""
    if offset >= len(data):
        raise ParseError("varint: no bytes")
    first = data[offset]
    length = _LENGTHS[first >> 6]
    end = offset + length
    if end > len(data):
        raise ParseError(f"varint: needs {length} bytes, {len(data) - offset} left")
    value = first & 0x3F
    for i in range(offset + 1, end):
        value = (value << 8) | data[i]
    return value, end


def encode_flow(flow_id: int, payload: bytes) -> bytes:
    """One DATAGRAM frame's data: the flow id, then the payload untouched."""
    return encode_varint(flow_id) + payload


def decode_flow(data: bytes) -> tuple[int, bytes]:
    """(flow id, payload) of one DATAGRAM frame's data; ParseError when there is no flow id."""
    flow_id, start = decode_varint(data)
    return flow_id, data[start:]
