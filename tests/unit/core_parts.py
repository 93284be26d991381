"""Small builders shared by the unit tests of the core's parts (no sockets, no clocks)."""

from __future__ import annotations

from sfu.core.kernels import default_kernels
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec

VP8 = NegotiatedCodec(96, "VP8", 90000, None, 97, ("nack", "nack pli"))
OPUS = NegotiatedCodec(111, "opus", 48000, 2, None, ())
#: The run's kernels (these tests check the parts above the kernels).
KERNELS = default_kernels()


class RecordingSender:
    """A Sender that keeps what it was asked to send."""

    def __init__(self, *, has_srtp: bool = True) -> None:
        self.has_srtp = has_srtp
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.rtp.append(packet)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp.append(packet)
        return True


def video_publication(rids: tuple[str, ...] = ("q", "h", "f"), mid: str = "0") -> Publication:
    """A VP8 publication with ``rids`` simulcast layers."""
    return Publication("v" + mid, "pub", "video", "cam", mid, VP8, {}, rids, kernels=KERNELS)


def audio_publication(mid: str = "1") -> Publication:
    """An Opus publication."""
    return Publication("a" + mid, "pub", "audio", "mic", mid, OPUS, {}, kernels=KERNELS)


def subscription(
    pub: Publication, out_ssrc: int = 0x9000, rtx_ssrc: int | None = None
) -> Subscription:
    """A subscription of ``pub`` sent on ``out_ssrc`` (and RTX on ``rtx_ssrc``)."""
    return Subscription(
        f"s{out_ssrc}",
        pub,
        "sub",
        pub.mid,
        out_ssrc=out_ssrc,
        payload_type=pub.codec.payload_type,
        extensions={},
        rtx_ssrc=rtx_ssrc,
        rtx_payload_type=97 if rtx_ssrc is not None else None,
        kernels=pub.kernels,
    )
