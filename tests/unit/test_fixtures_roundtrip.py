"""Byte-exact round trips of real packets captured from Chromium and aiortc.

The captures (tests/fixtures/README.md says how each was made) are decrypted RTP and RTCP
as the transport layer will hand them to the parsers, and raw STUN as it arrives on the port.
"""

from __future__ import annotations

import pytest
from fixture_files import HexCapture, capture_ids, hex_captures

from sfu.packet.demux import PacketKind, classify
from sfu.packet.rtcp import parse_compound, serialize_compound
from sfu.packet.rtp import RtpPacket
from sfu.packet.stun import StunMessage, verify_fingerprint, verify_message_integrity

RTP = hex_captures("rtp")
RTCP = hex_captures("rtcp")
STUN = hex_captures("stun")


@pytest.mark.parametrize("capture", RTP, ids=capture_ids(RTP))
def test_rtp_round_trip(capture: HexCapture) -> None:
    assert capture.datagrams
    for data in capture.datagrams:
        assert classify(data) is PacketKind.RTP
        packet = RtpPacket.parse(data)
        assert packet.serialize() == data


@pytest.mark.parametrize("capture", RTCP, ids=capture_ids(RTCP))
def test_rtcp_round_trip(capture: HexCapture) -> None:
    assert capture.datagrams
    for data in capture.datagrams:
        assert classify(data) is PacketKind.RTCP
        packets = parse_compound(data)
        assert packets
        assert serialize_compound(packets) == data


@pytest.mark.parametrize("capture", STUN, ids=capture_ids(STUN))
def test_stun_round_trip_and_integrity(capture: HexCapture) -> None:
    passwords = [pwd.encode() for pwd in capture.comment_value("ice-pwd")]
    assert len(passwords) == 2, "both peers' ICE passwords are recorded in the comments"
    assert capture.datagrams
    for data in capture.datagrams:
        assert classify(data) is PacketKind.STUN
        message = StunMessage.parse(data)
        assert message.serialize() == data
        assert verify_fingerprint(data)
        # Requests are signed with the peer's password, responses with the sender's own.
        assert sum(verify_message_integrity(data, pwd) for pwd in passwords) == 1
