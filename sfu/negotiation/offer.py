"""Reading a client's offer (JSEP, RFC 8829; BUNDLE, RFC 9143): :func:`negotiate` decides
what the server accepts, rejecting with port 0 the sections it cannot serve (RFC 8829 §5.3.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sfu.negotiation.policy import (
    HASH_SIZES,
    MAX_REASONS,
    PWD_LEN,
    RTP_PROTOS,
    UFRAG_LEN,
    CodecPreferences,
    NegotiationError,
    clip,
    codec_ok,
    forwardable,
    h264_rank,
)
from sfu.negotiation.result import (
    NegotiatedCodec,
    NegotiatedDataChannel,
    NegotiatedMedia,
    NegotiatedSession,
    RejectedMedia,
)
from sfu.packet.errors import ParseError
from sfu.packet.sdp import (
    Direction,
    Fingerprint,
    Fmtp,
    MediaSection,
    Msid,
    RtpMap,
    SessionDescription,
    Setup,
    SimulcastRid,
)

__all__ = ["negotiate"]

#: The data channel transport (RFC 8841 §4.1); the older ``DTLS/SCTP`` with ``a=sctpmap`` is
#: pre-standard and no browser we support offers it any more.
SCTP_PROTOS: Final = frozenset({"UDP/DTLS/SCTP", "TCP/DTLS/SCTP"})
#: ``a=sctp-port`` when absent (RFC 8841 §5.2) and ``a=max-message-size`` when absent (§6.1).
DEFAULT_SCTP_PORT: Final = 5000
DEFAULT_REMOTE_MAX_MESSAGE_SIZE: Final = 65536


def _where(section: MediaSection, index: int) -> str:
    mid = section.mid
    return f"m={section.kind} (mid {clip(mid)})" if mid else f"m={section.kind} (index {index})"


def negotiate(
    offer: SessionDescription,
    *,
    prefs: CodecPreferences,
    actpass_role: Setup = Setup.PASSIVE,
    data_channels: bool = False,
) -> NegotiatedSession:
    """Decide what to accept from ``offer``; raises NegotiationError if it cannot be answered.

    ``actpass_role`` is the DTLS role taken when the offer says actpass (RFC 8842 §5.3).
    ``data_channels``: accept the first SCTP data channel section (the caller serves it);
    otherwise it is rejected with port 0 like any section the server cannot serve.
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
    data_channel: NegotiatedDataChannel | None = None
    for index, section in enumerate(offer.media):
        if section.kind == "application" and data_channels and data_channel is None:
            dc = _data_channel(section, index, bundle)
            if isinstance(dc, RejectedMedia):
                rejected.append(dc)
            else:
                data_channel = dc
                transport_sections.append(section)
            continue
        result = _negotiate_section(offer, section, index, bundle, prefs)
        if isinstance(result, RejectedMedia):
            rejected.append(result)
            continue
        accepted.append(result)
        transport_sections.append(section)
    if not accepted and data_channel is None:
        reasons = "; ".join(f"{r.reason}" for r in rejected[:MAX_REASONS])
        more = " ..." if len(rejected) > MAX_REASONS else ""
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
    preferred = min(fingerprints, key=lambda f: list(HASH_SIZES).index(f.algorithm.lower()))
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
        data_channel=data_channel,
    )


def _data_channel(
    section: MediaSection, index: int, bundle: tuple[str, ...]
) -> NegotiatedDataChannel | RejectedMedia:
    """Accept an ``m=application`` data channel section (RFC 8841 §4-6) or say why not."""
    mid = section.mid
    where = _where(section, index)

    def reject(reason: str) -> RejectedMedia:
        return RejectedMedia(index, mid, section.kind, f"{where}: {reason}")

    if section.port == 0 and not section.bundle_only:
        return reject("rejected by the offerer (port 0)")
    if section.proto not in SCTP_PROTOS or "webrtc-datachannel" not in section.formats:
        return reject(f"unsupported data channel transport {clip(section.proto)}")
    if mid is None or mid not in bundle:
        return reject("not in the BUNDLE group")
    port, size = section.sctp_port, section.max_message_size  # range-checked by the parser
    if port == 0:
        return reject("a=sctp-port 0 names no SCTP port")
    return NegotiatedDataChannel(
        index=index,
        mid=mid,
        remote_port=DEFAULT_SCTP_PORT if port is None else port,
        remote_max_message_size=DEFAULT_REMOTE_MAX_MESSAGE_SIZE if size is None else size,
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
            raise NegotiationError(f"mid {clip(mid)} is used by two m= sections")
        seen.add(mid)
    for mid in bundle:
        if mid not in seen:
            raise NegotiationError(f"a=group:BUNDLE names unknown mid {clip(mid)}")
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
    if section.proto not in RTP_PROTOS:
        return reject(f"unsupported transport protocol {clip(section.proto)}")
    if mid is None or mid not in bundle:
        return reject("not in the BUNDLE group")
    if not section.bundle_only and not section.rtcp_mux:
        raise NegotiationError(f"{where}: offer is not BUNDLEd with rtcp-mux: no a=rtcp-mux")
    codecs = _select_codecs(section, where, prefs)
    if not codecs:
        return reject("no supported codec")
    if prefs.publish_forwardable_only and section.direction in (
        Direction.SENDRECV,
        Direction.SENDONLY,
    ):
        usable = tuple(c for c in codecs if forwardable(c.name))
        if not usable:
            names = ", ".join(dict.fromkeys(c.name for c in codecs))
            return reject(f"cannot forward {clip(names, 64)} publications")
        # One codec per publication: its every format (e.g. two H.264 profiles) stays.
        codecs = tuple(c for c in usable if c.name.lower() == usable[0].name.lower())
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
            raise NegotiationError(f"{where}: payload type {clip(fmt)} is not a number 0-127")
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
        if name not in order or not codec_ok(name, rtpmap, Fmtp(pt, fmtps.get(pt, "-"))):
            continue
        profile_rank = h264_rank(fmtps.get(pt), prefs) if name == "h264" else 0
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


def _extensions(section: MediaSection, where: str, prefs: CodecPreferences) -> dict[int, str]:
    out: dict[int, str] = {}
    ids: set[int] = set()
    uris: set[str] = set()
    for ext in dict.fromkeys(section.extmaps):  # an exact duplicate line is harmless
        if ext.id in ids:
            raise NegotiationError(f"{where}: extmap id {ext.id} is used twice")
        if ext.uri in uris:
            raise NegotiationError(f"{where}: extension {clip(ext.uri, 80)} is mapped twice")
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
                    f"SSRC {ssrc} appears in mid {clip(other)} and mid {clip(m.mid)}"
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
        where = f"m={section.kind} (mid {clip(section.mid or '')})"  # accepted: has a mid
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
    if not UFRAG_LEN[0] <= len(ufrag) <= UFRAG_LEN[1]:
        raise NegotiationError("offer's a=ice-ufrag must be 4-256 characters")
    if not PWD_LEN[0] <= len(pwd) <= PWD_LEN[1]:
        raise NegotiationError("offer's a=ice-pwd must be 22-256 characters")
    return ufrag, pwd


def _fingerprints(offer: SessionDescription, sections: Sequence[MediaSection]) -> list[Fingerprint]:
    out: list[Fingerprint] = []
    any_given = False
    for section in sections:
        for fp in offer.fingerprints_for(section):
            any_given = True
            size = HASH_SIZES.get(fp.algorithm.lower())
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
