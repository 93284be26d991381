"""Offer/answer negotiation for an ICE-lite SFU (JSEP, RFC 8829; BUNDLE, RFC 9143).

:func:`negotiate` reads a client's offer and decides what the server accepts: one BUNDLE
transport (ICE credentials, DTLS fingerprint and role) and, per m= section, the codecs with the
offer's payload types, the header-extension ids, the offerer's SSRCs and simulcast rids.
Sections the server cannot serve (data channels, no common codec, not bundled) are rejected
with port 0 in the answer (RFC 8829 §5.3.1) instead of failing the whole offer.
:func:`build_answer` turns that decision into the answer SDP. Pure functions: no I/O, no clock.

Every problem with the offer raises :class:`NegotiationError`, whose message is precise and
safe to return to the client (it echoes at most short, clipped identifiers).
"""

from __future__ import annotations

import hashlib
import ipaddress
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sfu.packet.errors import ParseError
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
from sfu.packet.sdp import (
    Candidate,
    Connection,
    Direction,
    ExtMap,
    Fingerprint,
    Fmtp,
    Group,
    MediaSection,
    Msid,
    MsidSemantic,
    Origin,
    Rid,
    RtcpFb,
    RtpMap,
    SessionDescription,
    Setup,
    Simulcast,
    SimulcastRid,
    Ssrc,
    SsrcGroup,
)

__all__ = [
    "DEFAULT_HEADER_EXTENSIONS",
    "DEFAULT_RTCP_FEEDBACK",
    "CodecPreferences",
    "NegotiatedCodec",
    "NegotiatedMedia",
    "NegotiatedSession",
    "NegotiationError",
    "RejectedMedia",
    "SendStream",
    "build_answer",
    "candidate_priority",
    "negotiate",
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

_AUDIO_CODECS = frozenset({"opus"})
_VIDEO_CODECS = frozenset({"vp8", "h264", "vp9", "av1"})
# RFC 8122 §5 hash functions with their digest sizes, in the order we prefer them.
_HASH_SIZES = {"sha-256": 32, "sha-384": 48, "sha-512": 64, "sha-1": 20, "sha-224": 28}
# RFC 8839 §5.4: ufrag 4-256 ice-chars, pwd 22-256 ice-chars.
_UFRAG_LEN = (4, 256)
_PWD_LEN = (22, 256)
_RTP_PROTOS = frozenset({"UDP/TLS/RTP/SAVPF", "TCP/DTLS/RTP/SAVPF", "RTP/SAVPF"})
_MAX_REASONS = 4


def _clip(text: str, limit: int = 32) -> str:
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

    def __post_init__(self) -> None:
        for names, known in (
            (self.audio_codecs, _AUDIO_CODECS),
            (self.video_codecs, _VIDEO_CODECS),
        ):
            unknown = [n for n in names if n.lower() not in known]
            if unknown:
                raise ValueError(f"unsupported codec(s) in preferences: {unknown}")


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
        kind = "audio" if self.name.lower() in _AUDIO_CODECS else "video"
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

    @property
    def bundle_mids(self) -> tuple[str, ...]:
        """Accepted mids in offer order; the first is the answerer BUNDLE-tag (RFC 9143 §7.3)."""
        return tuple(m.mid for m in self.media)

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
            if not text or not text.isprintable() or " " in text or len(text) > 256:
                raise ValueError(f"bad cname/msid token: {text[:40]!r}")


# --------------------------------------------------------------------------- negotiate


def _where(section: MediaSection, index: int) -> str:
    mid = section.mid
    return f"m={section.kind} (mid {_clip(mid)})" if mid else f"m={section.kind} (index {index})"


def negotiate(
    offer: SessionDescription,
    *,
    prefs: CodecPreferences,
    actpass_role: Setup = Setup.PASSIVE,
) -> NegotiatedSession:
    """Decide what to accept from ``offer``; raises NegotiationError if it cannot be answered.

    ``actpass_role`` is the DTLS role taken when the offer says actpass (RFC 8842 §5.3).
    """
    if actpass_role not in (Setup.ACTIVE, Setup.PASSIVE):
        raise ValueError("actpass_role must be ACTIVE or PASSIVE")
    if offer.ice_lite:
        # RFC 8445 §6.1.1: with two lite agents nobody sends checks; we are lite.
        raise NegotiationError("offer is from an ICE lite agent; the server is ICE lite too")
    bundle = offer.bundle
    if bundle is None:
        raise NegotiationError("offer is not BUNDLEd with rtcp-mux: no a=group:BUNDLE")
    _check_mids(offer, bundle)

    accepted: list[NegotiatedMedia] = []
    rejected: list[RejectedMedia] = []
    transport_sections: list[MediaSection] = []
    for index, section in enumerate(offer.media):
        result = _negotiate_section(offer, section, index, bundle, prefs)
        if isinstance(result, RejectedMedia):
            rejected.append(result)
            continue
        accepted.append(result)
        transport_sections.append(section)
    if not accepted:
        reasons = "; ".join(f"{r.reason}" for r in rejected[:_MAX_REASONS])
        more = " ..." if len(rejected) > _MAX_REASONS else ""
        raise NegotiationError(f"offer has no acceptable media section: {reasons or 'none'}{more}")
    _check_unique_ssrcs(accepted)
    _check_bundle_extmaps(accepted)

    ufrag, pwd = _ice_credentials(offer, transport_sections)
    fingerprints = _fingerprints(offer, transport_sections)
    remote_setup = _remote_setup(offer, transport_sections)
    if remote_setup is Setup.ACTPASS:
        setup = actpass_role
    elif remote_setup is Setup.ACTIVE:
        setup = Setup.PASSIVE
    else:
        setup = Setup.ACTIVE
    preferred = min(fingerprints, key=lambda f: list(_HASH_SIZES).index(f.algorithm.lower()))
    return NegotiatedSession(
        media=tuple(accepted),
        rejected=tuple(rejected),
        remote_ufrag=ufrag,
        remote_pwd=pwd,
        fingerprint=preferred,
        fingerprints=tuple(fingerprints),
        remote_setup=remote_setup,
        setup=setup,
        extmap_allow_mixed=offer.extmap_allow_mixed
        or any(s.extmap_allow_mixed for s in transport_sections),
        ice_trickle="trickle" in offer.ice_options
        or any("trickle" in s.ice_options for s in transport_sections),
    )


def _check_mids(offer: SessionDescription, bundle: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for index, section in enumerate(offer.media):
        mid = section.mid
        if mid is None:
            if section.port != 0:
                raise NegotiationError(f"m={section.kind} (index {index}) has no a=mid")
            continue
        if mid in seen:
            raise NegotiationError(f"mid {_clip(mid)} is used by two m= sections")
        seen.add(mid)
    for mid in bundle:
        if mid not in seen:
            raise NegotiationError(f"a=group:BUNDLE names unknown mid {_clip(mid)}")
    if len(set(bundle)) != len(bundle):
        raise NegotiationError("a=group:BUNDLE names a mid twice")


def _negotiate_section(
    offer: SessionDescription,
    section: MediaSection,
    index: int,
    bundle: tuple[str, ...],
    prefs: CodecPreferences,
) -> NegotiatedMedia | RejectedMedia:
    where = _where(section, index)
    kind = section.kind
    mid = section.mid

    def reject(reason: str) -> RejectedMedia:
        return RejectedMedia(index, mid, kind, f"{where}: {reason}")

    if section.port == 0 and not section.bundle_only:
        return reject("rejected by the offerer (port 0)")
    if kind == "application":
        return reject("data channels are not supported")
    if kind not in ("audio", "video"):
        return reject("unsupported media kind")
    if section.proto not in _RTP_PROTOS:
        return reject(f"unsupported transport protocol {_clip(section.proto)}")
    if mid is None or mid not in bundle:
        return reject("not in the BUNDLE group")
    if not section.bundle_only and not section.rtcp_mux:
        raise NegotiationError(f"{where}: offer is not BUNDLEd with rtcp-mux: no a=rtcp-mux")
    codecs = _select_codecs(section, where, prefs)
    if not codecs:
        return reject("no supported codec")
    extensions = _extensions(section, where, prefs)
    ssrcs, fid, cname, ssrc_msid, sim = _sources(section, where)
    accepted_pts = {c.payload_type for c in codecs}
    rids, simulcast, rid_ssrcs = _simulcast(section, accepted_pts, sim)
    return NegotiatedMedia(
        index=index,
        mid=mid,
        kind=kind,
        direction=section.direction,
        codecs=codecs,
        extensions=extensions,
        ssrcs=ssrcs,
        fid=fid,
        cname=cname,
        msid=section.msid or ssrc_msid,
        rids=rids,
        simulcast=simulcast,
        rid_ssrcs=rid_ssrcs,
        rtcp_rsize=section.rtcp_rsize,
    )


def _payload_types(section: MediaSection, where: str) -> list[int]:
    out: list[int] = []
    for fmt in section.formats:
        if not (fmt.isascii() and fmt.isdigit() and len(fmt) <= 3 and int(fmt) <= 127):
            raise NegotiationError(f"{where}: payload type {_clip(fmt)} is not a number 0-127")
        if int(fmt) in out:
            raise NegotiationError(f"{where}: payload type {fmt} listed twice")
        out.append(int(fmt))
    return out


def _select_codecs(
    section: MediaSection, where: str, prefs: CodecPreferences
) -> tuple[NegotiatedCodec, ...]:
    """Accepted codecs in server preference order (offer order within one name)."""
    pts = _payload_types(section, where)
    rtpmaps: dict[int, RtpMap] = {}
    for line in section.rtpmaps:
        if rtpmaps.setdefault(line.payload_type, line) != line:
            raise NegotiationError(f"{where}: payload type {line.payload_type} has two rtpmaps")
    fmtps: dict[int, str] = {}
    for fmtp in section.fmtps:
        if fmtps.setdefault(fmtp.payload_type, fmtp.parameters) != fmtp.parameters:
            raise NegotiationError(f"{where}: payload type {fmtp.payload_type} has two fmtps")
    names = prefs.audio_codecs if section.kind == "audio" else prefs.video_codecs
    order = [n.lower() for n in names]
    candidates: list[tuple[tuple[int, int, int], int, RtpMap]] = []
    for position, pt in enumerate(pts):
        rtpmap = rtpmaps.get(pt)
        if rtpmap is None:
            continue
        name = rtpmap.encoding_name.lower()
        if name not in order or not _codec_ok(name, rtpmap, Fmtp(pt, fmtps.get(pt, "-"))):
            continue
        profile_rank = _h264_rank(fmtps.get(pt), prefs) if name == "h264" else 0
        candidates.append(((order.index(name), profile_rank, position), pt, rtpmap))
    candidates.sort(key=lambda c: c[0])
    rtx_by_apt: dict[int, int] = {}
    if prefs.rtx and section.kind == "video":
        for pt in pts:
            rtx_map = rtpmaps.get(pt)
            if rtx_map is None or rtx_map.encoding_name.lower() != "rtx":
                continue
            if rtx_map.clock_rate != 90000:
                continue
            apt = Fmtp(pt, fmtps.get(pt, "-")).params.get("apt", "")
            if apt.isascii() and apt.isdigit() and len(apt) <= 3:
                rtx_by_apt.setdefault(int(apt), pt)
    codecs = []
    for _, pt, chosen in candidates:
        feedback: list[str] = []
        for fb in section.rtcp_fb(pt):
            text = fb.type if fb.subtype is None else f"{fb.type} {fb.subtype}"
            if text in prefs.rtcp_feedback and text not in feedback:
                feedback.append(text)
        rtx = rtx_by_apt.get(pt)
        codecs.append(
            NegotiatedCodec(
                payload_type=pt,
                name=chosen.encoding_name,
                clock_rate=chosen.clock_rate,
                channels=chosen.channels,
                fmtp=fmtps.get(pt),
                rtcp_feedback=tuple(feedback),
                rtx_payload_type=rtx,
                rtx_fmtp=None if rtx is None else fmtps.get(rtx),
            )
        )
    return tuple(codecs)


def _codec_ok(name: str, rtpmap: RtpMap, fmtp: Fmtp) -> bool:
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


def _h264_rank(fmtp: str | None, prefs: CodecPreferences) -> int:
    profile = Fmtp(0, fmtp or "-").params.get("profile-level-id", "420010").lower()
    preferred = [p.lower() for p in prefs.h264_profiles]
    return preferred.index(profile) if profile in preferred else len(preferred)


def _extensions(section: MediaSection, where: str, prefs: CodecPreferences) -> dict[int, str]:
    out: dict[int, str] = {}
    ids: set[int] = set()
    uris: set[str] = set()
    for ext in dict.fromkeys(section.extmaps):  # an exact duplicate line is harmless
        if ext.id in ids:
            raise NegotiationError(f"{where}: extmap id {ext.id} is used twice")
        if ext.uri in uris:
            raise NegotiationError(f"{where}: extension {_clip(ext.uri, 80)} is mapped twice")
        uris.add(ext.uri)
        ids.add(ext.id)
        # Ids 4096-4351 only ask the answerer to choose (RFC 8285 §7); we reuse offer ids.
        if ext.uri in prefs.header_extensions and ext.id <= 255:
            out[ext.id] = ext.uri
    return out


def _sources(
    section: MediaSection, where: str
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...], str | None, Msid | None, tuple[int, ...]]:
    """SSRCs, FID pairs, cname, msid and SIM ssrcs declared by the offerer (RFC 5576)."""
    ssrcs: list[int] = []
    cname: str | None = None
    msid: Msid | None = None
    for line in section.ssrcs:
        if line.ssrc not in ssrcs:
            ssrcs.append(line.ssrc)
        if line.attribute == "cname" and cname is None and line.value:
            cname = line.value
        if line.attribute == "msid" and msid is None and line.value:
            try:
                msid = Msid.parse(line.value)
            except ParseError:
                raise NegotiationError(f"{where}: malformed a=ssrc msid") from None
    fid: list[tuple[int, int]] = []
    sim: tuple[int, ...] = ()
    for group in section.ssrc_groups:
        if group.semantics == "FID":
            if len(group.ssrcs) != 2 or group.ssrcs[0] == group.ssrcs[1]:
                raise NegotiationError(f"{where}: a=ssrc-group:FID needs two distinct SSRCs")
            fid.append((group.ssrcs[0], group.ssrcs[1]))
        elif group.semantics == "SIM" and not sim:
            if len(set(group.ssrcs)) != len(group.ssrcs):
                raise NegotiationError(f"{where}: a=ssrc-group:SIM repeats an SSRC")
            sim = group.ssrcs
        for ssrc in group.ssrcs:
            if ssrc not in ssrcs:
                ssrcs.append(ssrc)
    media = [m for m, _ in fid]
    rtx = [r for _, r in fid]
    if len(set(media)) != len(media) or len(set(rtx)) != len(rtx) or set(media) & set(rtx):
        raise NegotiationError(f"{where}: a=ssrc-group:FID pairs overlap")
    return tuple(ssrcs), tuple(fid), cname, msid, sim


def _simulcast(
    section: MediaSection, accepted_pts: set[int], sim: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[SimulcastRid, ...], dict[str, int]]:
    """Send rids usable with the accepted codecs and the offerer's simulcast streams (RFC
    8853 §5.3: the answerer drops rids and alternatives it cannot use)."""
    if section.direction not in (Direction.SENDRECV, Direction.SENDONLY):
        return (), (), {}
    rids: list[str] = []
    for rid in section.rids:
        if rid.direction != "send" or rid.rid in rids:
            continue
        if rid.payload_types and not accepted_pts.intersection(rid.payload_types):
            continue  # RFC 8851 §5: a rid whose formats were all removed is removed
        rids.append(rid.rid)
    streams: list[SimulcastRid] = []
    offered = section.simulcast
    if offered is not None:
        for stream in offered.send:
            usable = [alt for alt in stream if alt.rid in rids]
            if usable and all(s.rid != usable[0].rid for s in streams):
                streams.append(usable[0])
    rid_ssrcs: dict[str, int] = {}
    ordered = [s.rid for s in streams] if streams else rids
    if sim and len(sim) == len(ordered):
        rid_ssrcs = dict(zip(ordered, sim, strict=True))
    return tuple(rids), tuple(streams), rid_ssrcs


def _check_unique_ssrcs(media: Sequence[NegotiatedMedia]) -> None:
    # RFC 9143 §9.2: one SSRC identifies one stream on the BUNDLE transport.
    owner: dict[int, str] = {}
    for m in media:
        for ssrc in m.ssrcs:
            other = owner.setdefault(ssrc, m.mid)
            if other != m.mid:
                raise NegotiationError(
                    f"SSRC {ssrc} appears in mid {_clip(other)} and mid {_clip(m.mid)}"
                )


def _check_bundle_extmaps(media: Sequence[NegotiatedMedia]) -> None:
    # RFC 9143 §7.5 / RFC 8285 §6: within one BUNDLE group an id means one extension.
    seen: dict[int, str] = {}
    for m in media:
        for ext_id, uri in m.extensions.items():
            if seen.setdefault(ext_id, uri) != uri:
                raise NegotiationError(
                    f"extmap id {ext_id} maps to different extensions in bundled sections"
                )


def _ice_credentials(
    offer: SessionDescription, sections: Sequence[MediaSection]
) -> tuple[str, str]:
    found: set[tuple[str, str]] = set()
    for section in sections:
        ufrag, pwd = offer.ice_ufrag_for(section), offer.ice_pwd_for(section)
        where = f"m={section.kind} (mid {_clip(section.mid or '')})"  # accepted: has a mid
        if section.bundle_only and (ufrag is None or pwd is None):
            continue  # RFC 9143 §7.1.3: bundle-only sections may omit transport attributes
        if ufrag is None:
            raise NegotiationError(f"{where}: offer has no a=ice-ufrag")
        if pwd is None:
            raise NegotiationError(f"{where}: offer has no a=ice-pwd")
        found.add((ufrag, pwd))
    if not found:
        raise NegotiationError("offer has no a=ice-ufrag and a=ice-pwd")
    if len(found) > 1:
        raise NegotiationError("offer uses different ICE credentials in bundled sections")
    ufrag, pwd = found.pop()
    # RFC 8839 §5.4: ufrag at least 4, pwd at least 22 characters, both at most 256.
    if not _UFRAG_LEN[0] <= len(ufrag) <= _UFRAG_LEN[1]:
        raise NegotiationError("offer's a=ice-ufrag must be 4-256 characters")
    if not _PWD_LEN[0] <= len(pwd) <= _PWD_LEN[1]:
        raise NegotiationError("offer's a=ice-pwd must be 22-256 characters")
    return ufrag, pwd


def _fingerprints(offer: SessionDescription, sections: Sequence[MediaSection]) -> list[Fingerprint]:
    out: list[Fingerprint] = []
    any_given = False
    for section in sections:
        for fp in offer.fingerprints_for(section):
            any_given = True
            size = _HASH_SIZES.get(fp.algorithm.lower())
            if size is None or fp in out:
                continue
            if len(fp.digest) != size:
                raise NegotiationError(
                    f"offer's {fp.algorithm.lower()} fingerprint has the wrong length"
                )
            out.append(fp)
    if not any_given:
        raise NegotiationError("offer has no a=fingerprint")
    if not out:
        raise NegotiationError("offer has no a=fingerprint with a supported hash function")
    return out


def _remote_setup(offer: SessionDescription, sections: Sequence[MediaSection]) -> Setup:
    roles: list[Setup] = []
    for section in sections:
        role = offer.setup_for(section)
        if role is not None and role not in roles:
            roles.append(role)
    if len(roles) > 1:
        raise NegotiationError(
            f"offer uses setup:{roles[0]} and setup:{roles[1]} in different sections"
        )
    if roles and roles[0] is Setup.HOLDCONN:
        raise NegotiationError("offer uses setup:holdconn; a DTLS connection is required")
    # RFC 4145 §4: without a=setup the offerer is active.
    return roles[0] if roles else Setup.ACTIVE


# --------------------------------------------------------------------------- answer


def candidate_priority(
    local_preference: int, component: int = 1, type_preference: int = 126
) -> int:
    """RFC 8445 §5.1.2.1: 2^24 * type pref + 2^8 * local pref + (256 - component id)."""
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


def _host_candidates(candidates: Sequence[tuple[str, int]]) -> list[Candidate]:
    out: list[Candidate] = []
    seen: set[tuple[str, int]] = set()
    for position, (host, port) in enumerate(candidates):
        address = str(ipaddress.ip_address(host))  # ValueError on anything but an IP literal
        if not 1 <= port <= 65535:
            raise ValueError(f"candidate port out of range: {port}")
        if (address, port) in seen:
            continue
        seen.add((address, port))
        # RFC 8445 §5.1.1.3: same type, base address and transport -> same foundation.
        foundation = str(zlib.crc32(f"host udp {address}".encode()))
        # §5.1.2.1: local preference unique per address, highest for the first given.
        local_pref = max(65535 - position, 0)
        out.append(
            Candidate(foundation, 1, "udp", candidate_priority(local_pref), address, port, "host")
        )
    return out


def _connection_for(address: str) -> Connection:
    return Connection("IN", "IP6" if ":" in address else "IP4", address)


def _mirror(direction: Direction, sending: bool) -> Direction:
    """RFC 3264 §6.1: the answer's direction from the offer's and whether we send."""
    receives = direction in (Direction.SENDRECV, Direction.SENDONLY)
    can_send = direction in (Direction.SENDRECV, Direction.RECVONLY) and sending
    if receives and can_send:
        return Direction.SENDRECV
    if receives:
        return Direction.RECVONLY
    return Direction.SENDONLY if can_send else Direction.INACTIVE


def build_answer(
    offer: SessionDescription,
    negotiated: NegotiatedSession,
    *,
    ice: tuple[str, str],
    fingerprint: tuple[str, str],
    setup: Setup,
    candidates: Sequence[tuple[str, int]],
    send_streams: Mapping[str, SendStream] | None = None,
    ice_lite: bool = True,
    session_id: int | None = None,
) -> SessionDescription:
    """The answer SDP to ``offer`` for the decision ``negotiated`` (RFC 8829 §5.3.1).

    ``ice`` is our (ufrag, pwd), ``fingerprint`` our certificate's (algorithm, hex digest),
    ``setup`` our DTLS role (normally ``negotiated.setup``), ``candidates`` our host
    (address, port) pairs, written to the first bundled section as Chromium does.
    """
    streams = dict(send_streams or {})
    ufrag, pwd = ice
    if setup not in (Setup.ACTIVE, Setup.PASSIVE):
        raise ValueError("answer setup must be ACTIVE or PASSIVE (RFC 8842 §5.3)")
    if negotiated.remote_setup is not Setup.ACTPASS and setup is negotiated.remote_setup:
        raise ValueError(
            f"answer setup {setup} conflicts with the offer's {negotiated.remote_setup}"
        )
    fp = Fingerprint(fingerprint[0], fingerprint[1])
    Fingerprint.parse(fp.to_value())
    for mid in streams:
        media = negotiated.media_by_mid(mid)
        if media is None or media.direction not in (Direction.SENDRECV, Direction.RECVONLY):
            raise ValueError(f"send stream for mid {mid!r}, which does not receive from us")
    host_candidates = _host_candidates(candidates)

    if session_id is None:
        session_id = int.from_bytes(hashlib.sha256(ufrag.encode()).digest()[:8], "big") >> 2
    answer = SessionDescription.create(Origin("-", session_id, 2))
    if ice_lite:
        answer.add_attribute("ice-lite")  # RFC 8839 §5.3
    answer.add(Group("BUNDLE", negotiated.bundle_mids))
    if offer.extmap_allow_mixed:
        answer.add_attribute("extmap-allow-mixed")
    answer.add_attribute(MsidSemantic.NAME, " WMS *")  # Chromium's spelling

    accepted = {m.index: m for m in negotiated.media}
    first = negotiated.media[0].index
    for index, section in enumerate(offer.media):
        media = accepted.get(index)
        if media is None:
            answer.add_media(_rejected_section(section, (ufrag, pwd), fp, setup))
            continue
        answer.add_media(
            _accepted_section(
                offer,
                section,
                media,
                ice=(ufrag, pwd),
                fingerprint=fp,
                setup=setup,
                candidates=host_candidates if index == first else None,
                stream=streams.get(media.mid),
            )
        )
    return answer


def _rejected_section(
    section: MediaSection, ice: tuple[str, str], fingerprint: Fingerprint, setup: Setup
) -> MediaSection:
    """RFC 8829 §5.3.1 / RFC 9143 §7.3.3: port 0, same proto and formats, the mid kept.

    The transport attributes are repeated (as Chromium does) because some stacks (aiortc)
    refuse an answer with any m= section lacking ICE credentials, a DTLS role or rtcp-mux.
    """
    out = MediaSection.create(
        section.kind, 0, section.proto, section.formats, Connection("IN", "IP4", "0.0.0.0")
    )
    out.add_attribute("ice-ufrag", ice[0]).add_attribute("ice-pwd", ice[1])
    out.add(fingerprint).add_attribute("setup", setup.value)
    if section.mid is not None:
        out.add_attribute("mid", section.mid)
    out.add_attribute(Direction.INACTIVE.value)
    if section.kind in ("audio", "video"):
        out.add_attribute("rtcp-mux")
    return out


def _accepted_section(
    offer: SessionDescription,
    section: MediaSection,
    media: NegotiatedMedia,
    *,
    ice: tuple[str, str],
    fingerprint: Fingerprint,
    setup: Setup,
    candidates: list[Candidate] | None,
    stream: SendStream | None,
) -> MediaSection:
    formats = [str(pt) for pt in media.payload_types]
    if candidates:
        port, conn = candidates[0].port, _connection_for(candidates[0].address)
    else:
        port, conn = 9, Connection("IN", "IP4", "0.0.0.0")
    out = MediaSection.create(media.kind, port, section.proto, formats, conn)
    for cand in candidates or ():
        out.add(cand)
    if candidates is not None:
        out.add_attribute("end-of-candidates")
    out.add_attribute("ice-ufrag", ice[0]).add_attribute("ice-pwd", ice[1])
    out.add(fingerprint).add_attribute("setup", setup.value).add_attribute("mid", media.mid)
    offered = {e.id: e for e in section.extmaps}
    for ext_id, uri in media.extensions.items():
        direction = offered[ext_id].direction
        if direction is not None:
            direction = _mirror(direction, True)
        out.add(ExtMap(ext_id, uri, direction))
    if section.extmap_allow_mixed:
        out.add_attribute("extmap-allow-mixed")
    out.add_attribute(_mirror(media.direction, stream is not None).value)
    sending = stream is not None and media.direction in (Direction.SENDRECV, Direction.RECVONLY)
    if sending and stream is not None:
        out.add(Msid(stream.msid_stream, stream.msid_track))
    out.add_attribute("rtcp-mux")
    if media.rtcp_rsize:
        out.add_attribute("rtcp-rsize")
    for codec in media.codecs:
        out.add(RtpMap(codec.payload_type, codec.name, codec.clock_rate, codec.channels))
        for fb in codec.rtcp_feedback:
            fb_type, _, subtype = fb.partition(" ")
            out.add(RtcpFb(codec.payload_type, fb_type, subtype or None))
        if codec.fmtp is not None:
            out.add(Fmtp(codec.payload_type, codec.fmtp))
        if codec.rtx_payload_type is not None:
            out.add(RtpMap(codec.rtx_payload_type, "rtx", codec.clock_rate))
            out.add(Fmtp(codec.rtx_payload_type, codec.rtx_fmtp or f"apt={codec.payload_type}"))
    if sending and stream is not None:
        _add_send_stream(out, stream, media.has_rtx)
    if media.simulcast or media.rids:
        _add_recv_simulcast(out, section, media)
    return out


def _add_send_stream(out: MediaSection, stream: SendStream, rtx: bool) -> None:
    ssrcs = [stream.ssrc]
    if rtx and stream.rtx_ssrc is not None:
        ssrcs.append(stream.rtx_ssrc)
        out.add(SsrcGroup("FID", (stream.ssrc, stream.rtx_ssrc)))
    msid = Msid(stream.msid_stream, stream.msid_track).to_value()
    for ssrc in ssrcs:
        out.add(Ssrc(ssrc, "cname", stream.cname), Ssrc(ssrc, "msid", msid))


def _add_recv_simulcast(out: MediaSection, section: MediaSection, media: NegotiatedMedia) -> None:
    # RFC 8851 §5 / RFC 8853 §5.3: mirror the usable send rids as recv, with kept formats.
    accepted = set(media.payload_types)
    offered: dict[str, Rid] = {}
    for rid in section.rids:
        if rid.direction == "send":
            offered.setdefault(rid.rid, rid)
    for rid_id in media.rids:
        rid = offered[rid_id]
        pts = tuple(pt for pt in rid.payload_types if pt in accepted)
        out.add(Rid(rid_id, "recv", pts, rid.restrictions))
    if media.simulcast:
        out.add(Simulcast(recv=tuple((s,) for s in media.simulcast)))
