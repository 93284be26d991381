"""The echo service: every RTP stream a client sends comes back to it on a new SSRC.

A diagnostic for operators (like Janus's EchoTest): one request proves ICE, DTLS-SRTP, SRTP in
both directions and the media path of a deployment. It is sans-I/O like the transports it
drives: :meth:`EchoService.create` turns an SDP offer into an answer and a transport, and the
media port feeds the transport. Packets are forwarded untouched apart from the SSRC (rewritten
by the fast-path kernel), so end-to-end encrypted media echoes too.

PLI and FIR from the client about an echoed stream are passed back as PLI for the client's own
sending stream, so video starts with a keyframe promptly.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from sfu import _fastpath
from sfu.core.publication import new_ssrc
from sfu.negotiation import (
    DEFAULT_HEADER_EXTENSIONS,
    CodecPreferences,
    HostCandidate,
    NegotiatedSession,
    NegotiationError,
    SendStream,
    build_answer,
    negotiate,
)
from sfu.packet.errors import ParseError
from sfu.packet.extensions import MID_URI, TRANSPORT_CC_URI, parse_sdes_item
from sfu.packet.rtcp import Fir, Pli, parse_compound
from sfu.packet.rtp import RtpPacket, peek_rtp_header
from sfu.packet.sdp import SessionDescription, Setup
from sfu.transport.dtls import DtlsRole
from sfu.transport.port import MediaPort
from sfu.transport.transport import TransportState, WebRtcTransport

__all__ = ["ECHO_PREFERENCES", "EchoService", "EchoSession", "OfferError"]

log = logging.getLogger(__name__)

#: What the echo answers: no RTX (it keeps no retransmission cache) and no congestion-control
#: feedback it does not generate yet; PLI/FIR so video recovers with keyframes.
ECHO_PREFERENCES = CodecPreferences(
    rtx=False,
    rtcp_feedback=frozenset({"nack pli", "ccm fir"}),
    header_extensions=DEFAULT_HEADER_EXTENSIONS - {TRANSPORT_CC_URI},
)


class OfferError(ValueError):
    """The offer cannot be answered; the message is safe to return to the client."""


@dataclass(slots=True)
class _Echo:
    """One echoed stream: the client's SSRC -> our SSRC on the same mid."""

    mid: str
    out_ssrc: int
    in_ssrc: int | None = None


@dataclass(eq=False, slots=True)
class EchoSession:
    """The state of one echo: its transport and the SSRC mapping (a TransportListener)."""

    id: str
    transport: WebRtcTransport
    negotiated: NegotiatedSession
    echoes: dict[str, _Echo]
    mid_extension_id: int | None
    forwarded: int = 0
    dropped: int = 0
    keyframe_requests: int = 0
    _by_in: dict[int, _Echo] = field(default_factory=dict)
    _by_out: dict[int, _Echo] = field(default_factory=dict)
    _buffer: bytearray = field(default_factory=lambda: bytearray(1500))
    _view: memoryview = field(init=False)

    def __post_init__(self) -> None:
        self._view = memoryview(self._buffer)
        self._by_out = {echo.out_ssrc: echo for echo in self.echoes.values()}
        # SSRCs the offer declared (a=ssrc) are bound up front; others are learned by mid.
        for media in self.negotiated.media:
            echo = self.echoes.get(media.mid)
            rtx = set(media.rtx_ssrcs.values()) if media.has_rtx else set()
            primaries = [s for s in media.ssrcs if s not in rtx]
            if echo is not None and primaries:
                echo.in_ssrc = primaries[0]
                self._by_in[primaries[0]] = echo

    def on_rtp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        header = peek_rtp_header(packet)
        if header is None:
            self.dropped += 1
            return
        ssrc, seq, timestamp, payload_type = header
        echo = self._by_in.get(ssrc) or self._learn(ssrc, packet)
        if echo is None:
            self.dropped += 1
            return
        keep = _fastpath.KEEP_MARKER
        n = _fastpath.rewrite_rtp(
            packet, self._buffer, echo.out_ssrc, seq, timestamp, payload_type, keep
        )
        if n > 0 and transport.send_rtp(bytes(self._view[:n])):  # one copy, no slice copy
            self.forwarded += 1
        else:
            self.dropped += 1

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        try:
            compound = parse_compound(packet)
        except ParseError:
            self.dropped += 1
            return
        targets: list[int] = []
        for item in compound:
            if isinstance(item, Pli):
                targets.append(item.media_ssrc)
            elif isinstance(item, Fir):
                targets.extend(entry.ssrc for entry in item.entries)
        for out_ssrc in targets:
            echo = self._by_out.get(out_ssrc)
            if echo is not None and echo.in_ssrc is not None:
                self.keyframe_requests += 1
                pli = Pli(sender_ssrc=echo.out_ssrc, media_ssrc=echo.in_ssrc)
                transport.send_rtcp(pli.serialize())

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        if state in (TransportState.CLOSED, TransportState.FAILED):
            log.info("echo session ended: %s", transport.close_reason)

    def _learn(self, ssrc: int, packet: bytes) -> _Echo | None:
        """Bind an undeclared SSRC to the echo of the mid its RTP header extension names."""
        if self.mid_extension_id is None:
            return None
        try:
            raw = RtpPacket.parse(packet).get_extension(self.mid_extension_id)
            mid = parse_sdes_item(raw) if raw is not None else None
        except ParseError:
            return None
        echo = self.echoes.get(mid) if mid is not None else None
        if echo is None or echo.in_ssrc is not None:
            return None  # e.g. a second simulcast layer: only one stream per mid is echoed
        echo.in_ssrc = ssrc
        self._by_in[ssrc] = echo
        return echo


class EchoService:
    """Creates and ends echo sessions on a media port."""

    def __init__(self, port: MediaPort, candidates: Sequence[HostCandidate]) -> None:
        self._port = port
        self._candidates = list(candidates)
        self.sessions: dict[str, EchoSession] = {}

    def create(
        self, offer_sdp: str, now: float, *, source: str | None = None
    ) -> tuple[EchoSession, str]:
        """Answer ``offer_sdp``; raises OfferError (bad offer) or CapacityError (full, in all
        or for the client's ``source`` address: the media port's per-source pending cap)."""
        self._reap()
        try:
            offer = SessionDescription.parse(offer_sdp)
            negotiated = negotiate(offer, prefs=ECHO_PREFERENCES)
        except (ParseError, NegotiationError) as exc:
            raise OfferError(str(exc)) from None
        sending = [m for m in negotiated.media if m.direction.value in ("sendrecv", "sendonly")]
        if not sending:
            raise OfferError("offer sends no media to echo")
        transport = self._port.create_transport(
            remote_ufrag=negotiated.remote_ufrag,
            remote_fingerprints=[(f.algorithm, f.value) for f in negotiated.fingerprints],
            dtls_role=DtlsRole.SERVER if negotiated.setup is Setup.PASSIVE else DtlsRole.CLIENT,
            now=now,
            source=source,
        )
        taken = set(s for m in negotiated.media for s in m.ssrcs)
        cname = secrets.token_urlsafe(9)
        echoes = {
            m.mid: _Echo(m.mid, new_ssrc(taken))
            for m in negotiated.media
            if m.direction.value == "sendrecv"
        }
        send_streams = {
            mid: SendStream(echo.out_ssrc, None, cname, "echo", f"echo-{mid}")
            for mid, echo in echoes.items()
        }
        local = transport.ice.local_credentials
        fingerprint = self._port.certificate.fingerprint
        answer = build_answer(
            offer,
            negotiated,
            ice=(local.ufrag, local.pwd),
            fingerprint=(fingerprint.algorithm, fingerprint.value),
            setup=negotiated.setup,
            candidates=self._candidates,
            send_streams=send_streams,
        )
        mid_ids = {m.extension_id(MID_URI) for m in negotiated.media} - {None}
        session = EchoSession(
            id=transport.id,
            transport=transport,
            negotiated=negotiated,
            echoes=echoes,
            mid_extension_id=mid_ids.pop() if len(mid_ids) == 1 else None,
        )
        transport.set_listener(session)
        self.sessions[session.id] = session
        return session, answer.serialize()

    def restart_ice(self, session_id: str, remote_ufrag: str) -> tuple[str, str] | None:
        """ICE restart for a session; returns our new (ufrag, pwd), None if no such session."""
        session = self.sessions.get(session_id)
        if session is None or session.transport.finished:
            return None
        local = self._port.restart_ice(session.transport, remote_ufrag)
        return local.ufrag, local.pwd

    def delete(self, session_id: str, now: float) -> bool:
        """End a session (``DELETE`` on its location); False if there is none."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return False
        self._port.close_transport(session.transport, now, "deleted")
        return True

    def _reap(self) -> None:
        for sid in [s for s, sess in self.sessions.items() if sess.transport.finished]:
            del self.sessions[sid]
