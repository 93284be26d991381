"""Writing the answer SDP for an ICE-lite SFU from a :class:`NegotiatedSession` (RFC 3264,
RFC 8829 §5.3): host candidates, the DTLS role, mirrored directions, the server's streams.
"""

from __future__ import annotations

import hashlib
import ipaddress
import zlib
from collections.abc import Mapping, Sequence
from typing import Final

from sfu.negotiation.result import (
    NegotiatedDataChannel,
    NegotiatedMedia,
    NegotiatedSession,
    SendStream,
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
    Ssrc,
    SsrcGroup,
)
from sfu.transport.sctp import DEFAULT_MAX_MESSAGE_SIZE, SCTP_PORT

__all__ = ["REJECTED_ATTRIBUTE", "HostCandidate", "build_answer", "candidate_priority"]

#: The attribute of a rejected (port 0) m-line that says why: ``a=x-sfu-rejected:<reason>``.
REJECTED_ATTRIBUTE: Final = "x-sfu-rejected"
#: The reason is cut to this many characters (it is already client-safe text).
REJECTED_REASON_CHARS: Final = 200

#: Our ``a=sctp-port`` (RFC 8841 §5) and the ``a=max-message-size`` we announce by default
#: (§6): the SCTP layer's values, repeated here because negotiation sits below transport users.
DATA_CHANNEL_SCTP_PORT: Final = SCTP_PORT
DATA_CHANNEL_MAX_MESSAGE_SIZE: Final = DEFAULT_MAX_MESSAGE_SIZE


def candidate_priority(
    local_preference: int, component: int = 1, type_preference: int = 126
) -> int:
    """RFC 8445 §5.1.2.1: 2^24 * type pref + 2^8 * local pref + (256 - component id)."""
    return (type_preference << 24) + (local_preference << 8) + (256 - component)


#: A host candidate: ``(address, port)`` for UDP, ``(address, port, "tcp")`` for a passive
#: ICE-TCP candidate (RFC 6544).
HostCandidate = tuple[str, int] | tuple[str, int, str]

#: RFC 8445 §5.1.2.2 type preference of our UDP host candidates (the recommended 126).
UDP_TYPE_PREFERENCE: Final = 126
#: Type preference of passive ICE-TCP host candidates: below every UDP candidate type a
#: browser gathers (host 126, prflx 110, srflx 100), so UDP wins whenever it works
#: (RFC 6544 §4.2 leaves the split between transports to the agent).
TCP_TYPE_PREFERENCE: Final = 90


def _host_candidates(candidates: Sequence[HostCandidate]) -> list[Candidate]:
    out: list[Candidate] = []
    seen: set[tuple[str, int, str]] = set()
    for position, candidate in enumerate(candidates):
        host, port = candidate[0], candidate[1]
        transport = candidate[2] if len(candidate) == 3 else "udp"
        if transport not in ("udp", "tcp"):
            raise ValueError(f"candidate transport must be udp or tcp: {transport!r}")
        address = str(ipaddress.ip_address(host))  # ValueError on anything but an IP literal
        if not 1 <= port <= 65535:
            raise ValueError(f"candidate port out of range: {port}")
        if (address, port, transport) in seen:
            continue
        seen.add((address, port, transport))
        # RFC 8445 §5.1.1.3: same type, base address and transport -> same foundation.
        foundation = str(zlib.crc32(f"host {transport} {address}".encode()))
        # §5.1.2.1: local preference unique per address, highest for the first given.
        local_pref = max(65535 - position, 0)
        if transport == "udp":
            out.append(
                Candidate(
                    foundation, 1, "udp", candidate_priority(local_pref), address, port, "host"
                )
            )
        else:
            priority = candidate_priority(local_pref, type_preference=TCP_TYPE_PREFERENCE)
            out.append(
                Candidate(
                    foundation,
                    1,
                    "tcp",
                    priority,
                    address,
                    port,
                    "host",
                    extensions=(("tcptype", "passive"),),
                )
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
    candidates: Sequence[HostCandidate],
    send_streams: Mapping[str, SendStream] | None = None,
    ice_lite: bool = True,
    session_id: int | None = None,
    data_channel_max_message_size: int = DATA_CHANNEL_MAX_MESSAGE_SIZE,
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
    reasons = {r.index: r.reason for r in negotiated.rejected}
    dc = negotiated.data_channel
    first = min([m.index for m in negotiated.media] + ([dc.index] if dc is not None else []))
    for index, section in enumerate(offer.media):
        media = accepted.get(index)
        if dc is not None and index == dc.index:
            answer.add_media(
                _data_channel_section(
                    dc,
                    ice=(ufrag, pwd),
                    fingerprint=fp,
                    setup=setup,
                    candidates=host_candidates if index == first else None,
                    max_message_size=data_channel_max_message_size,
                    proto=section.proto,
                )
            )
            continue
        if media is None:
            rejected = _rejected_section(section, (ufrag, pwd), fp, setup)
            reason = reasons.get(index)
            if reason is not None:
                # Why this m-line got port 0, for the client to show (docs/protocol.md); an
                # unknown attribute, which SDP parsers skip (RFC 8866 §5.13).
                rejected.add_attribute(REJECTED_ATTRIBUTE, _attribute_text(reason))
            answer.add_media(rejected)
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


def _attribute_text(text: str) -> str:
    """``text`` as an SDP attribute value: printable ASCII only (RFC 8866 §9 byte-string)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:REJECTED_REASON_CHARS]


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


def _data_channel_section(
    dc: NegotiatedDataChannel,
    *,
    ice: tuple[str, str],
    fingerprint: Fingerprint,
    setup: Setup,
    candidates: list[Candidate] | None,
    max_message_size: int,
    proto: str,
) -> MediaSection:
    """The accepted data channel section (RFC 8841 §4-6), bundled with the media."""
    if candidates:
        port, conn = candidates[0].port, _connection_for(candidates[0].address)
    else:
        port, conn = 9, Connection("IN", "IP4", "0.0.0.0")
    out = MediaSection.create("application", port, proto, ["webrtc-datachannel"], conn)
    for cand in candidates or ():
        out.add(cand)
    if candidates is not None:
        out.add_attribute("end-of-candidates")
    out.add_attribute("ice-ufrag", ice[0]).add_attribute("ice-pwd", ice[1])
    out.add(fingerprint).add_attribute("setup", setup.value).add_attribute("mid", dc.mid)
    out.add_attribute("sctp-port", str(DATA_CHANNEL_SCTP_PORT))
    out.add_attribute("max-message-size", str(max_message_size))
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
