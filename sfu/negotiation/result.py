"""The outcome of offer/answer as plain values: accepted codecs and m= sections, rejected
sections, the BUNDLE transport's parameters, and the streams the server sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sfu.negotiation.policy import AUDIO_CODECS
from sfu.packet.sdp import (
    Direction,
    Fingerprint,
    Fmtp,
    Msid,
    Setup,
    SimulcastRid,
)

__all__ = [
    "MAX_TOKEN_CHARS",
    "NegotiatedCodec",
    "NegotiatedDataChannel",
    "NegotiatedMedia",
    "NegotiatedSession",
    "RejectedMedia",
    "SendStream",
]


#: Longest cname or msid token the server writes (RFC 8830 limits msid ids to 64; cnames
#: are ours, a few dozen characters): anything longer is a caller bug, not a client's.
MAX_TOKEN_CHARS = 256


@dataclass(frozen=True, slots=True)
class NegotiatedCodec:
    """One accepted codec with the offer's payload type and parameters."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None
    #: The offer's fmtp parameters, verbatim (None when it had none).
    fmtp: str | None
    #: Kept RTCP feedback, ``type`` or ``type subtype`` (e.g. "nack pli").
    rtcp_feedback: tuple[str, ...]
    rtx_payload_type: int | None = None
    #: The fmtp of the RTX payload type (apt=, maybe rtx-time), verbatim.
    rtx_fmtp: str | None = None

    @property
    def mime_type(self) -> str:
        """e.g. ``video/VP8``; opus is the only audio codec the server takes."""
        kind = "audio" if self.name.lower() in AUDIO_CODECS else "video"
        return f"{kind}/{self.name}"

    @property
    def parameters(self) -> dict[str, str]:
        """The fmtp ``key=value`` pairs as a dict."""
        return {} if self.fmtp is None else Fmtp(self.payload_type, self.fmtp).params


@dataclass(frozen=True, slots=True)
class NegotiatedMedia:
    """An accepted m= section: what the offerer declared and what the server agreed to."""

    index: int
    mid: str
    kind: str
    #: The OFFER's direction (what the client does).
    direction: Direction
    codecs: tuple[NegotiatedCodec, ...]
    #: Header extension id -> URI, the offer's ids limited to supported URIs (RFC 8285 §6).
    extensions: Mapping[int, str]
    #: The offerer's SSRCs in order of appearance (media and RTX).
    ssrcs: tuple[int, ...] = ()
    #: ``a=ssrc-group:FID`` pairs (media ssrc, rtx ssrc), RFC 5576 §4.2 / RFC 4588.
    fid: tuple[tuple[int, int], ...] = ()
    cname: str | None = None
    msid: Msid | None = None
    #: Send rids declared by the offerer and still usable with the accepted codecs.
    rids: tuple[str, ...] = ()
    #: One entry per simulcast stream the offerer sends (RFC 8853), lowest first as offered;
    #: ``paused`` marks a ``~`` stream.
    simulcast: tuple[SimulcastRid, ...] = ()
    #: rid -> media SSRC when the offer also has an ``a=ssrc-group:SIM``.
    rid_ssrcs: Mapping[str, int] = field(default_factory=dict)
    rtcp_rsize: bool = False

    @property
    def payload_types(self) -> tuple[int, ...]:
        """Accepted payload types, each codec followed by its RTX type."""
        out: list[int] = []
        for codec in self.codecs:
            out.append(codec.payload_type)
            if codec.rtx_payload_type is not None:
                out.append(codec.rtx_payload_type)
        return tuple(out)

    @property
    def rtx_ssrcs(self) -> dict[int, int]:
        """media SSRC -> RTX SSRC from the FID groups."""
        return dict(self.fid)

    @property
    def has_rtx(self) -> bool:
        return any(c.rtx_payload_type is not None for c in self.codecs)

    def extension_id(self, uri: str) -> int | None:
        return next((i for i, u in self.extensions.items() if u == uri), None)


@dataclass(frozen=True, slots=True)
class RejectedMedia:
    """An m= section answered with port 0, and why."""

    index: int
    mid: str | None
    kind: str
    reason: str


@dataclass(frozen=True, slots=True)
class NegotiatedDataChannel:
    """The accepted ``m=application ... UDP/DTLS/SCTP webrtc-datachannel`` section (RFC 8841)."""

    index: int
    mid: str
    #: The offerer's ``a=sctp-port`` (RFC 8841 §5: 5000 when absent).
    remote_port: int
    #: The offerer's ``a=max-message-size`` (RFC 8841 §6: 64 KiB when absent, 0 = unlimited).
    remote_max_message_size: int


@dataclass(frozen=True, slots=True)
class NegotiatedSession:
    """The outcome of :func:`negotiate`: one BUNDLE transport plus accepted/rejected sections."""

    media: tuple[NegotiatedMedia, ...]
    rejected: tuple[RejectedMedia, ...]
    #: The client's ICE credentials (RFC 8839 §5.4) for checking its STUN requests.
    remote_ufrag: str
    remote_pwd: str
    #: The fingerprint to verify the client's DTLS certificate against (sha-256 if offered).
    fingerprint: Fingerprint
    fingerprints: tuple[Fingerprint, ...]
    remote_setup: Setup
    #: Our DTLS role in the answer: PASSIVE (DTLS server) or ACTIVE (DTLS client).
    setup: Setup
    extmap_allow_mixed: bool = False
    ice_trickle: bool = False
    #: The data channel section, when the offer had one and the caller serves data channels.
    data_channel: NegotiatedDataChannel | None = None

    @property
    def bundle_mids(self) -> tuple[str, ...]:
        """Accepted mids in offer order; the first is the answerer BUNDLE-tag (RFC 9143 §7.3)."""
        sections = [(m.index, m.mid) for m in self.media]
        if self.data_channel is not None:
            sections.append((self.data_channel.index, self.data_channel.mid))
        return tuple(mid for _, mid in sorted(sections))

    @property
    def dtls_server(self) -> bool:
        return self.setup is Setup.PASSIVE

    def media_by_mid(self, mid: str) -> NegotiatedMedia | None:
        return next((m for m in self.media if m.mid == mid), None)


@dataclass(frozen=True, slots=True)
class SendStream:
    """A stream the server sends on an m= section (to a subscriber)."""

    ssrc: int
    rtx_ssrc: int | None
    cname: str
    msid_stream: str
    msid_track: str

    def __post_init__(self) -> None:
        for value in (self.ssrc, self.rtx_ssrc):
            if value is not None and not 0 <= value < 2**32:
                raise ValueError(f"SSRC out of range: {value}")
        for text in (self.cname, self.msid_stream, self.msid_track):
            if not text or not text.isprintable() or " " in text or len(text) > MAX_TOKEN_CHARS:
                raise ValueError(f"bad cname/msid token: {text[:40]!r}")
