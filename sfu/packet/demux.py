"""First-byte demultiplexing of one UDP port (RFC 7983 §7) with rtcp-mux (RFC 5761 §4).

The media socket carries STUN, DTLS, SRTP and SRTCP together; the first byte tells them apart
and, for RTP versus RTCP, the second byte (RTCP packet types 192-223 never collide with the
dynamic RTP payload types when payload types 64-95 are avoided, RFC 5761 §4).
"""

from __future__ import annotations

from enum import IntEnum


class PacketKind(IntEnum):
    """What a datagram on the shared media port is."""

    UNKNOWN = 0
    STUN = 1
    ZRTP = 2
    DTLS = 3
    TURN_CHANNEL = 4
    RTP = 5
    RTCP = 6


# One entry per first-byte value (RFC 7983 §7): 0-3 STUN, 16-19 ZRTP, 20-63 DTLS,
# 64-79 TURN channel, 128-191 RTP/RTCP (resolved by the second byte).
_FIRST_BYTE: tuple[PacketKind, ...] = tuple(
    PacketKind.STUN
    if b <= 3
    else PacketKind.ZRTP
    if 16 <= b <= 19
    else PacketKind.DTLS
    if 20 <= b <= 63
    else PacketKind.TURN_CHANNEL
    if 64 <= b <= 79
    else PacketKind.RTP
    if 128 <= b <= 191
    else PacketKind.UNKNOWN
    for b in range(256)
)


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Classify one datagram; never raises. Too-short datagrams are ``UNKNOWN``."""
    if not data:
        return PacketKind.UNKNOWN
    kind = _FIRST_BYTE[data[0]]
    if kind is PacketKind.RTP:
        if len(data) < 2:
            return PacketKind.UNKNOWN
        if 192 <= data[1] <= 223:
            return PacketKind.RTCP
    return kind


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """True for an RTP-range datagram whose second byte is an RTCP packet type (RFC 5761 §4)."""
    return len(data) >= 2 and 128 <= data[0] <= 191 and 192 <= data[1] <= 223
