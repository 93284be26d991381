"""In-place header-extension id mapping for forwarded packets (RFC 8285)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu import _fastpath
from sfu.core.header_extensions import ExtensionRewriter
from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
)
from sfu.packet.rtp import RtpPacket, build_extension_block

PUBLISHER = {1: AUDIO_LEVEL_URI, 2: ABS_SEND_TIME_URI, 3: TRANSPORT_CC_URI, 4: MID_URI, 10: RID_URI}
SUBSCRIBER = {5: AUDIO_LEVEL_URI, 6: ABS_SEND_TIME_URI, 7: MID_URI, 8: TRANSPORT_CC_URI}


def _packet(elements: list[tuple[int, bytes]], *, two_byte: bool = False) -> bytearray:
    profile, body = build_extension_block(elements, force_two_byte=two_byte)
    raw = RtpPacket(
        payload_type=111, extension_profile=profile, extension_data=body, payload=b"opus"
    ).serialize()
    return bytearray(raw)


def _rewrite(elements: list[tuple[int, bytes]], *, two_byte: bool = False) -> dict[int, bytes]:
    buf = _packet(elements, two_byte=two_byte)
    ExtensionRewriter(PUBLISHER, SUBSCRIBER).apply(buf, len(buf), 0xABCDEF)
    return dict(RtpPacket.parse(bytes(buf)).extensions())


def test_ids_follow_the_subscriber_and_routing_extensions_are_hidden() -> None:
    for two_byte in (False, True):
        out = _rewrite(
            [(1, b"\x9e"), (2, b"\x00\x00\x01"), (3, b"\x00\x05"), (4, b"1"), (10, b"q")],
            two_byte=two_byte,
        )
        assert out[5] == b"\x9e"  # audio level moved to the subscriber's id
        assert out[6] == b"\xab\xcd\xef"  # abs-send-time restamped with our send time
        # mid, rid and transport-cc now sit under an id the subscriber did not negotiate.
        assert not {7, 8} & set(out)
        assert len(out) == 3 or set(out) - {5, 6} <= {1}
        assert all(ext_id not in SUBSCRIBER or ext_id in (5, 6) for ext_id in out)


def test_identity_mapping_leaves_the_packet_alone() -> None:
    same = {1: AUDIO_LEVEL_URI}
    rewriter = ExtensionRewriter(same, same)
    assert rewriter.identity
    buf = _packet([(1, b"\x10")])
    before = bytes(buf)
    rewriter.apply(buf, len(buf), 1)
    assert bytes(buf) == before


@given(st.binary(min_size=12, max_size=200))
def test_never_raises_on_any_packet_the_kernel_accepts(data: bytes) -> None:
    buf = bytearray(1500)
    n = _fastpath.rewrite_rtp(data, buf, 1, 1, 1, 96, -1)
    if n > 0:
        ExtensionRewriter(PUBLISHER, SUBSCRIBER).apply(buf, n, 5)
        assert len(buf) == 1500
