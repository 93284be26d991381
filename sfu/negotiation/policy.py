"""What the server accepts in an offer: codecs, RTCP feedback, header extensions, fingerprint
hashes and ICE credential sizes, and the one error every offer problem raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    DEPENDENCY_DESCRIPTOR_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    VIDEO_ORIENTATION_URI,
)
from sfu.packet.sdp import Fmtp, RtpMap

__all__ = [
    "AUDIO_CODECS",
    "CLIP_CHARS",
    "DEFAULT_HEADER_EXTENSIONS",
    "DEFAULT_RTCP_FEEDBACK",
    "HASH_SIZES",
    "MAX_REASONS",
    "PWD_LEN",
    "RTP_PROTOS",
    "UFRAG_LEN",
    "VIDEO_CODECS",
    "CodecPreferences",
    "NegotiationError",
    "clip",
    "codec_ok",
    "forwardable",
    "h264_rank",
]


class NegotiationError(ValueError):
    """The offer cannot be answered; the message says why and is safe to send to the client."""


#: RTCP feedback the server acts on (RFC 4585 nack/pli, RFC 5104 fir, REMB, transport-cc);
#: entries are ``type`` or ``type subtype`` as written after the payload type.
DEFAULT_RTCP_FEEDBACK = frozenset({"nack", "nack pli", "ccm fir", "goog-remb", "transport-cc"})

#: Header extensions the server reads or forwards (RFC 8285; ids come from the offer).
DEFAULT_HEADER_EXTENSIONS = frozenset(
    {
        MID_URI,
        RID_URI,
        REPAIRED_RID_URI,
        ABS_SEND_TIME_URI,
        TRANSPORT_CC_URI,
        AUDIO_LEVEL_URI,
        DEPENDENCY_DESCRIPTOR_URI,
        VIDEO_ORIENTATION_URI,
    }
)

AUDIO_CODECS = frozenset({"opus"})
VIDEO_CODECS = frozenset({"vp8", "h264", "vp9", "av1"})
#: Codecs a publication may carry: the forwarding core reads their payload descriptors (layer
#: switches need keyframes and frame starts). Read only through :func:`forwardable`.
_FORWARDABLE_CODECS = frozenset({"opus", "vp8", "h264", "vp9", "av1"})


def forwardable(name: str) -> bool:
    """Whether the forwarding core can carry a publication in codec ``name`` (SDP encoding
    name, any case). The one place this is decided: negotiation rejects a send section with
    no such codec (that m-line only) and the room service refuses nothing else."""
    return name.lower() in _FORWARDABLE_CODECS


# RFC 8122 §5 hash functions with their digest sizes, in the order we prefer them.
HASH_SIZES = {"sha-256": 32, "sha-384": 48, "sha-512": 64, "sha-1": 20, "sha-224": 28}
# RFC 8839 §5.4: ufrag 4-256 ice-chars, pwd 22-256 ice-chars.
UFRAG_LEN = (4, 256)
PWD_LEN = (22, 256)
RTP_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "TCP/DTLS/RTP/SAVPF", "RTP/SAVPF"})
#: At most this many rejection reasons are quoted when no section is acceptable.
MAX_REASONS = 4
#: Identifiers from the offer are echoed in errors cut to this many characters.
CLIP_CHARS = 32


def clip(text: str, limit: int = CLIP_CHARS) -> str:
    """Client-safe echo of an identifier from the offer."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


@dataclass(frozen=True, slots=True)
class CodecPreferences:
    """What the server accepts, in preference order (codec names are case-insensitive)."""

    audio_codecs: tuple[str, ...] = ("opus",)
    video_codecs: tuple[str, ...] = ("VP8", "H264", "VP9", "AV1")
    #: H.264 profile-level-ids (RFC 6184 §8.1) put first, in this order; any other profile
    #: the client offers is still accepted, after these.
    h264_profiles: tuple[str, ...] = ("42e01f", "42001f")
    #: Accept RTX (RFC 4588) for each accepted video codec.
    rtx: bool = True
    rtcp_feedback: frozenset[str] = DEFAULT_RTCP_FEEDBACK
    header_extensions: frozenset[str] = DEFAULT_HEADER_EXTENSIONS
    #: Sections the client sends on become publications: accept only :func:`forwardable`
    #: codecs there, and only one codec (by name) per section, so that every payload type
    #: the answer allows the sender is one the forwarding core maps (RFC 3264 §6.1: the
    #: offerer may send any of them). Off for the echo service, which reads no payload.
    publish_forwardable_only: bool = False

    def __post_init__(self) -> None:
        for names, known in (
            (self.audio_codecs, AUDIO_CODECS),
            (self.video_codecs, VIDEO_CODECS),
        ):
            unknown = [n for n in names if n.lower() not in known]
            if unknown:
                raise ValueError(f"unsupported codec(s) in preferences: {unknown}")


def codec_ok(name: str, rtpmap: RtpMap, fmtp: Fmtp) -> bool:
    """Whether one offered payload type is a configuration the server can forward."""
    if name == "opus":
        # RFC 7587 §7: always opus/48000/2.
        return rtpmap.clock_rate == 48000 and rtpmap.channels == 2
    if rtpmap.clock_rate != 90000 or rtpmap.channels is not None:
        return False
    params = fmtp.params
    if name == "h264":
        # RFC 6184 §8.1: packetization-mode defaults to 0 (single NAL), which we do not take.
        return params.get("packetization-mode") == "1"
    if name == "vp9":
        return params.get("profile-id", "0") == "0"
    return True  # VP8, AV1


def h264_rank(fmtp: str | None, prefs: CodecPreferences) -> int:
    profile = Fmtp(0, fmtp or "-").params.get("profile-level-id", "420010").lower()
    preferred = [p.lower() for p in prefs.h264_profiles]
    return preferred.index(profile) if profile in preferred else len(preferred)
