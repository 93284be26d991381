"""RFC 7983 first-byte demultiplexing with RFC 5761 rtcp-mux."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.packet.demux import PacketKind, classify, is_rtcp


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"\x00\x01\x00\x00", PacketKind.STUN),
        (b"\x01\x01", PacketKind.STUN),
        (b"\x03", PacketKind.STUN),
        (b"\x10", PacketKind.ZRTP),
        (b"\x16\xfe\xfd", PacketKind.DTLS),  # handshake record, DTLS 1.2
        (b"\x17\xfe\xfd", PacketKind.DTLS),  # application data
        (b"\x3f", PacketKind.DTLS),
        (b"\x40\x00", PacketKind.TURN_CHANNEL),
        (b"\x80\x60", PacketKind.RTP),  # PT 96
        (b"\x80\xe0", PacketKind.RTP),  # PT 96 with marker
        (b"\x80\xc8", PacketKind.RTCP),  # SR
        (b"\x81\xc9", PacketKind.RTCP),  # RR
        (b"\x8f\xcd", PacketKind.RTCP),  # RTPFB fmt 15 (transport-wide CC)
        (b"\x81\xce", PacketKind.RTCP),  # PSFB
        (b"\xbf\xdf", PacketKind.RTCP),  # upper end of the RTCP range (223)
        (b"\x80\xe0\x00", PacketKind.RTP),  # 224: RTP again
        (b"\x80", PacketKind.UNKNOWN),  # too short to tell RTP from RTCP
        (b"", PacketKind.UNKNOWN),
        (b"\x04", PacketKind.UNKNOWN),
        (b"\x50", PacketKind.UNKNOWN),
        (b"\xc0\x60", PacketKind.UNKNOWN),
    ],
)
def test_classify(data: bytes, kind: PacketKind) -> None:
    assert classify(data) is kind
    assert is_rtcp(data) == (kind is PacketKind.RTCP)


@given(st.binary(max_size=8))
def test_classify_never_raises_and_is_consistent(data: bytes) -> None:
    kind = classify(data)
    assert isinstance(kind, PacketKind)
    if kind in (PacketKind.RTP, PacketKind.RTCP):
        assert data[0] >> 6 == 2
    assert classify(memoryview(data)) is kind
    assert classify(bytearray(data)) is kind
