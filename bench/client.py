"""A synthetic WebRTC endpoint: SDP, ICE (controlling), DTLS-SRTP, then media by the engine.

One :class:`Endpoint` is one UDP socket (or, with ``transport="tcp"``, one ICE-TCP connection
to the server's passive candidate, RFC 6544/4571) and one BUNDLE transport, like one browser peer
connection: a publisher sends Opus and/or three-layer VP8 simulcast (``a=rid`` +
``a=simulcast``, ``mid``/``rid`` header extensions on every packet); a subscriber receives.
It offers (our SFU: WHIP/WHEP) or answers a server's offer (Janus subscribers). After
:meth:`Endpoint.connect` (STUN Binding with USE-CANDIDATE until answered, then the DTLS client
handshake) the SRTP contexts are handed to the load engine, which owns the socket's media;
STUN, DTLS and RTCP that arrive later come back through :meth:`Endpoint.handle_control`
(consent responses, binding requests from a full-ICE server, PLI/FIR for keyframes).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import secrets
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sfu._fastpath
from bench import _loadgen_py
from sfu._fastpath import SrtpError
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet import stun
from sfu.packet.errors import ParseError
from sfu.packet.extensions import MID_URI, RID_URI, TRANSPORT_CC_URI
from sfu.packet.rtcp import ReceiverReport, ReportBlock
from sfu.packet.sdp import SessionDescription
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState, SrtpProfile
from sfu.transport.tcp import FrameDecoder, FramingError, frame

__all__ = [
    "IMPLEMENTATION",
    "Endpoint",
    "HandshakeError",
    "PublishPlan",
    "TcpRelay",
    "loadgen",
]

#: "cython" when the compiled engine (and SRTP kernel) are in use, else "python".
IMPLEMENTATION: str
_loadgen_c: Any = None
if sfu._fastpath.IMPLEMENTATION == "cython":
    try:
        _loadgen_c = importlib.import_module("bench._loadgen")
    except ImportError:  # the bench module not built: the reference engine
        _loadgen_c = None
IMPLEMENTATION = "cython" if _loadgen_c is not None else "python"

#: Our header extension ids in offers (a server's offer or answer decides the final ones).
MID_ID = 4
RID_ID = 10
TWCC_ID = 3
#: A subscriber's RTX payload type (RFC 4588), offered with transport-wide CC: the server
#: probes the subscriber's downlink with padding-only packets on it (``sfu.core.prober``).
RTX_PT = 97
OPUS_PT = 111
VP8_PT = 96
#: Consent freshness checks this often (the server's consent timeout is 30 s, RFC 7675).
CONSENT_INTERVAL_S = 5.0
#: Seconds between two receiver reports (RFC 3550 §6.4.2) of a synthetic subscriber: what a
#: browser sends with reduced-size RTCP (RFC 5506), so the server's egress loss is real.
RR_INTERVAL_S = 1.0
_STUN_RETRY_S = 0.1
_RECV_BUFFER = 4 << 20


def loadgen() -> Any:
    """The engine module in use: compiled ``bench._loadgen`` or ``bench._loadgen_py``."""
    return _loadgen_c if _loadgen_c is not None else _loadgen_py


class HandshakeError(RuntimeError):
    """ICE or DTLS did not complete; the message says which and why."""


@dataclass(frozen=True, slots=True)
class PublishPlan:
    """What a publisher sends: audio and/or video with these simulcast rids (low to high)."""

    audio: bool = True
    video: bool = True
    rids: tuple[str, ...] = ("q", "h", "f")


@dataclass(eq=False)
class Endpoint:
    """One synthetic peer connection (see the module docstring)."""

    certificate: Certificate
    publish: PublishPlan | None = None
    bind_host: str = "127.0.0.1"
    profiles: Sequence[SrtpProfile] = (SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES128_CM_SHA1_80)
    ufrag: str = field(default_factory=lambda: secrets.token_hex(4))
    pwd: str = field(default_factory=lambda: secrets.token_hex(16))
    sock: socket.socket = field(init=False)
    remote_ufrag: str = ""
    remote_pwd: str = ""
    remote_addr: tuple[str, int] | None = None
    remote_fingerprints: list[tuple[str, str]] = field(default_factory=list)
    #: Extension ids in force (from the remote description) by URI.
    ext_ids: dict[str, int] = field(default_factory=dict)
    #: Payload types in force: "opus" and "vp8".
    payload_types: dict[str, int] = field(default_factory=dict)
    #: Our media SSRCs: audio, then one per rid.
    ssrcs: list[int] = field(default_factory=list)
    srtp_out: Any = None
    srtp_in: Any = None
    profile: SrtpProfile | None = None
    keyframe_requests: int = 0
    consent_sent: int = 0
    consent_answered: int = 0
    _dtls: DtlsEndpoint | None = None
    _tie_breaker: int = field(default_factory=lambda: secrets.randbits(64))
    _last_consent: float = 0.0
    #: Receiver reports sent, the SSRC they come from, and per source SSRC the (expected,
    #: received) counts at the last one (for the fraction lost of each interval).
    reports_sent: int = 0
    report_ssrc: int = field(default_factory=lambda: secrets.randbits(32) | 1)
    _last_report: float = 0.0
    _reported: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: "udp", or "tcp": ICE-TCP to the server's passive candidate (subscribers only: the
    #: engine's senders write datagrams).
    transport: str = "udp"
    #: Offer transport-wide CC (the extension and ``transport-cc`` feedback): a publisher
    #: then numbers its packets, a subscriber sends feedback on what arrived
    #: (:meth:`send_transport_feedback`), as a browser does.
    twcc: bool = True
    #: The subscriber's feedback state (created when the server negotiated transport-cc).
    _twcc: TwccRecorder | None = None
    feedback_sent: int = 0
    _decoder: FrameDecoder = field(default_factory=FrameDecoder)
    _frames: deque[bytes] = field(default_factory=deque)

    def __post_init__(self) -> None:
        family = socket.AF_INET6 if ":" in self.bind_host else socket.AF_INET
        if self.transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be udp or tcp, got {self.transport!r}")
        if self.transport == "tcp" and self.publish is not None:
            raise ValueError("ICE-TCP endpoints only subscribe")
        kind = socket.SOCK_STREAM if self.transport == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(family, kind)
        try:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
            self.sock.bind((self.bind_host, 0))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise
        count = (1 if self.publish and self.publish.audio else 0) + (
            len(self.publish.rids) if self.publish and self.publish.video else 0
        )
        self.ssrcs = [secrets.randbits(32) | 1 for _ in range(count)]

    def close(self) -> None:
        """Close the socket (the engine must not run anymore)."""
        self.sock.close()

    # -- SDP -----------------------------------------------------------------------------

    def _transport_lines(self, setup: str) -> list[str]:
        host, port = self.sock.getsockname()[:2]
        fp = self.certificate.fingerprint
        return [
            f"a=candidate:1 1 udp 2130706431 {host} {port} typ host",
            f"a=ice-ufrag:{self.ufrag}",
            f"a=ice-pwd:{self.pwd}",
            f"a=fingerprint:{fp.algorithm} {fp.value}",
            f"a=setup:{setup}",
            "a=rtcp-mux",
        ]

    def _twcc_lines(self, pt: int) -> list[str]:
        if not self.twcc:
            return []
        return [f"a=extmap:{TWCC_ID} {TRANSPORT_CC_URI}", f"a=rtcp-fb:{pt} transport-cc"]

    @property
    def rtx_pt(self) -> int:
        """The RTX payload type the server answered for this subscriber (-1: none)."""
        return self.payload_types.get("rtx", -1) if self.twcc else -1

    @property
    def twcc_id(self) -> int:
        """The transport-cc extension id in force (0: not negotiated or not offered)."""
        return self.ext_ids.get(TRANSPORT_CC_URI, 0) if self.twcc else 0

    def offer(self) -> str:
        """Our offer: sendonly audio/simulcast video (publisher) or recvonly both."""
        host = self.sock.getsockname()[0]
        sections: list[list[str]] = []
        plan = self.publish
        audio = plan is None or plan.audio
        video = plan is None or plan.video
        ssrcs = iter(self.ssrcs)
        direction = "sendonly" if plan is not None else "recvonly"
        cname = secrets.token_hex(8)
        if audio:
            lines = [f"m=audio 9 UDP/TLS/RTP/SAVPF {OPUS_PT}", f"c=IN IP4 {host}"]
            lines += self._transport_lines("actpass")
            lines += [
                f"a=mid:{len(sections)}",
                f"a=extmap:{MID_ID} {MID_URI}",
                *self._twcc_lines(OPUS_PT),
                f"a={direction}",
                f"a=rtpmap:{OPUS_PT} opus/48000/2",
                f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1",
            ]
            if plan is not None:
                ssrc = next(ssrcs)
                lines += ["a=msid:bench audio", f"a=ssrc:{ssrc} cname:{cname}"]
            sections.append(lines)
        if video:
            rtx = f" {RTX_PT}" if plan is None and self.twcc else ""
            lines = [f"m=video 9 UDP/TLS/RTP/SAVPF {VP8_PT}{rtx}", f"c=IN IP4 {host}"]
            lines += self._transport_lines("actpass")
            lines += [
                f"a=mid:{len(sections)}",
                f"a=extmap:{MID_ID} {MID_URI}",
                f"a=extmap:{RID_ID} {RID_URI}",
                *self._twcc_lines(VP8_PT),
                f"a={direction}",
                "a=rtcp-rsize",
                f"a=rtpmap:{VP8_PT} VP8/90000",
                f"a=rtcp-fb:{VP8_PT} nack",
                f"a=rtcp-fb:{VP8_PT} nack pli",
                f"a=rtcp-fb:{VP8_PT} ccm fir",
            ]
            if plan is None and self.twcc:
                lines += [f"a=rtpmap:{RTX_PT} rtx/90000", f"a=fmtp:{RTX_PT} apt={VP8_PT}"]
            if plan is not None:
                lines.append("a=msid:bench video")
                lines += [f"a=rid:{rid} send" for rid in plan.rids]
                lines.append("a=simulcast:send " + ";".join(plan.rids))
            sections.append(lines)
        mids = " ".join(str(i) for i in range(len(sections)))
        head = [
            "v=0",
            f"o=- {secrets.randbits(62)} 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {mids}",
            "a=msid-semantic: WMS bench",
        ]
        return "\r\n".join(head + [line for s in sections for line in s]) + "\r\n"

    def answer(self, offer_sdp: str) -> str:
        """Answer a server's offer as a receiver: recvonly for every audio/video section."""
        self.twcc = False  # the answer accepts no transport-cc (nor RTX): no feedback to send
        offer = SessionDescription.parse(offer_sdp)
        self.apply_remote(offer_sdp)
        host = self.sock.getsockname()[0]
        mids: list[str] = []
        lines: list[str] = []
        for section in offer.media:
            kind = section.kind
            mid = section.mid or str(len(mids))
            want = {"audio": "opus", "video": "vp8"}.get(kind)
            pts = [m.payload_type for m in section.rtpmaps if m.encoding_name.lower() == want]
            if want is None or not pts or section.port == 0:
                fmt = section.formats[0] if section.formats else "0"
                lines += [f"m={kind} 0 {section.proto} {fmt}", f"c=IN IP4 {host}", f"a=mid:{mid}"]
                continue
            mids.append(mid)
            pt = pts[0]
            rtpmap = section.rtpmap(pt)
            assert rtpmap is not None
            lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}", f"c=IN IP4 {host}"]
            lines += self._transport_lines("active")
            lines.append(f"a=mid:{mid}")
            lines += [f"a=extmap:{e.id} {e.uri}" for e in section.extmaps if e.uri == MID_URI]
            lines.append("a=recvonly")
            channels = f"/{rtpmap.channels}" if rtpmap.channels else ""
            lines.append(f"a=rtpmap:{pt} {rtpmap.encoding_name}/{rtpmap.clock_rate}{channels}")
        head = [
            "v=0",
            f"o=- {secrets.randbits(62)} 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {' '.join(mids)}",
        ]
        return "\r\n".join(head + lines) + "\r\n"

    def apply_remote(self, sdp: str) -> None:
        """Take the remote ICE credentials, candidate, fingerprints and ids from its SDP."""
        desc = SessionDescription.parse(sdp)
        live = [m for m in desc.media if m.port != 0] or desc.media
        if not live:
            raise HandshakeError("the remote description has no media section")
        first = live[0]
        ufrag = first.ice_ufrag or desc.ice_ufrag
        pwd = first.ice_pwd or desc.ice_pwd
        if not ufrag or not pwd:
            raise HandshakeError("the remote description has no ICE credentials")
        self.remote_ufrag, self.remote_pwd = ufrag, pwd
        fps = first.fingerprints or desc.fingerprints
        self.remote_fingerprints = [(f.algorithm, f.value) for f in fps]
        family = self.sock.family
        for section in live:
            for cand in section.candidates:
                if cand.transport.lower() != self.transport or cand.component != 1:
                    continue
                if self.transport == "tcp" and cand.tcptype != "passive":
                    continue
                v6 = ":" in cand.address
                if v6 != (family == socket.AF_INET6):
                    continue
                self.remote_addr = (cand.address, cand.port)
                break
            if self.remote_addr is not None:
                break
        if self.remote_addr is None:
            raise HandshakeError(
                f"the remote description has no usable {self.transport.upper()} host candidate"
            )
        for section in live:
            for ext in section.extmaps:
                self.ext_ids.setdefault(ext.uri, ext.id)
            for rtpmap in section.rtpmaps:
                name = rtpmap.encoding_name.lower()
                if name in ("opus", "vp8", "rtx"):
                    self.payload_types.setdefault(name, rtpmap.payload_type)

    # -- ICE and DTLS ----------------------------------------------------------------------

    def _binding_request(self, use_candidate: bool) -> bytes:
        attrs = [
            stun.StunMessage.username_attr(f"{self.remote_ufrag}:{self.ufrag}"),
            stun.StunMessage.priority_attr(0x6E001EFF),
            stun.StunMessage.ice_controlling_attr(self._tie_breaker),
        ]
        if use_candidate:
            attrs.append(stun.StunMessage.use_candidate_attr())
        msg = stun.StunMessage(
            stun.BINDING, stun.StunClass.REQUEST, secrets.token_bytes(12), tuple(attrs)
        )
        return msg.serialize(integrity_key=self.remote_pwd.encode(), fingerprint=True)

    def _send(self, data: bytes) -> None:
        assert self.remote_addr is not None
        if self.transport == "tcp":
            # Control messages only (checks, DTLS, consent): small, so a full send buffer
            # is the only way to lose one, as a datagram would be lost.
            with contextlib.suppress(BlockingIOError, ConnectionError, OSError):
                self.sock.send(frame(data))
            return
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            self.sock.send(data)

    async def connect(self, timeout: float = 10.0) -> None:
        """ICE (until a Binding success) then the DTLS client handshake; keys the SRTP
        contexts. Raises :class:`HandshakeError` on failure or after ``timeout`` seconds."""
        if self.remote_addr is None:
            raise HandshakeError("apply the remote description first")
        loop = asyncio.get_running_loop()
        if self.transport == "tcp":
            try:
                await asyncio.wait_for(loop.sock_connect(self.sock, self.remote_addr), timeout)
            except (OSError, TimeoutError) as exc:
                raise HandshakeError(f"ICE-TCP: cannot connect ({exc})") from None
        else:
            self.sock.connect(self.remote_addr)
        deadline = time.monotonic() + timeout
        request_at = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise HandshakeError("ICE: no Binding success response")
            if now >= request_at:
                self._send(self._binding_request(use_candidate=True))
                request_at = now + _STUN_RETRY_S
            data = await self._recv(loop, min(request_at, deadline) - now)
            if data is not None and self._on_stun(data) == "success":
                break
        self._last_consent = time.monotonic()
        dtls = DtlsEndpoint(
            self.certificate,
            DtlsRole.CLIENT,
            self.remote_fingerprints,
            handshake_timeout=max(1.0, deadline - time.monotonic()),
            srtp_profiles=self.profiles,
        )
        for out in dtls.start(time.monotonic()):
            self._send(out)
        while dtls.state is DtlsState.CONNECTING:
            timer = dtls.next_timer()
            wait = 0.05 if timer is None else max(0.0, min(0.05, timer - time.monotonic()))
            data = await self._recv(loop, wait)
            now = time.monotonic()
            if data is not None:
                kind = _loadgen_py.classify(data)
                if kind == _loadgen_py.PKT_DTLS:
                    for out in dtls.receive(data, now):
                        self._send(out)
                elif kind == _loadgen_py.PKT_STUN:
                    self._on_stun(data)
            for out in dtls.handle_timer(now):
                self._send(out)
        if dtls.state is not DtlsState.CONNECTED or dtls.srtp_keys is None:
            raise HandshakeError(f"DTLS: {dtls.failure_reason or dtls.state.value}")
        keys = dtls.srtp_keys
        self.profile = keys.profile
        ctx = loadgen_srtp_context()
        self.srtp_out = ctx(
            keys.profile.value, keys.local_key, keys.local_salt, outbound=True, max_streams=64
        )
        self.srtp_in = ctx(
            keys.profile.value, keys.remote_key, keys.remote_salt, outbound=False, max_streams=64
        )
        self._dtls = dtls  # keep it: a retransmitted server Finished must still be answered

    async def _recv(self, loop: asyncio.AbstractEventLoop, wait: float) -> bytes | None:
        if self.transport == "tcp":
            return await self._recv_frame(loop, wait)
        try:
            return await asyncio.wait_for(loop.sock_recv(self.sock, 2048), max(0.001, wait))
        except (TimeoutError, ConnectionRefusedError):
            return None

    async def _recv_frame(self, loop: asyncio.AbstractEventLoop, wait: float) -> bytes | None:
        if self._frames:
            return self._frames.popleft()
        try:
            data = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), max(0.001, wait))
        except (TimeoutError, ConnectionError):
            return None
        if not data:
            raise HandshakeError("ICE-TCP: the server closed the connection")
        try:
            self._frames.extend(self._decoder.feed(data))
        except FramingError as exc:
            raise HandshakeError(f"ICE-TCP: bad framing from the server ({exc.reason})") from None
        return self._frames.popleft() if self._frames else None

    def _on_stun(self, data: bytes) -> str:
        """Handle one STUN message: answer a Binding request, note a success response."""
        try:
            msg = stun.StunMessage.parse(data)
        except (ParseError, ValueError):  # not a message of ours
            return "bad"
        if msg.method != stun.BINDING:
            return "other"
        if msg.msg_class is stun.StunClass.SUCCESS:
            if stun.verify_message_integrity(data, self.remote_pwd.encode()):
                self.consent_answered += 1
                return "success"
            return "bad"
        if msg.msg_class is stun.StunClass.REQUEST:
            # A full-ICE server checks us too (Janus): answer with our password.
            if not stun.verify_message_integrity(data, self.pwd.encode()):
                return "bad"
            assert self.remote_addr is not None
            reply = stun.StunMessage(stun.BINDING, stun.StunClass.SUCCESS, msg.transaction_id)
            reply = stun.StunMessage(
                stun.BINDING,
                stun.StunClass.SUCCESS,
                msg.transaction_id,
                (reply.xor_mapped_address_attr(self.remote_addr),),
            )
            self._send(reply.serialize(integrity_key=self.pwd.encode(), fingerprint=True))
            return "request"
        return "other"

    # -- during the run ----------------------------------------------------------------------

    def keep_alive(self, now: float) -> None:
        """Send a consent check when one is due (every CONSENT_INTERVAL_S)."""
        if now - self._last_consent >= CONSENT_INTERVAL_S:
            self._last_consent = now
            self.consent_sent += 1
            self._send(self._binding_request(use_candidate=False))

    def report_due(self, now: float) -> bool:
        """Whether a receiver report is due (connected, every RR_INTERVAL_S)."""
        return self.srtp_out is not None and now - self._last_report >= RR_INTERVAL_S

    def send_receiver_report(self, streams: Sequence[Sequence[int]], now: float) -> None:
        """Send an SRTCP receiver report of what the engine received (the ``streams`` of
        its receiver snapshot). A subscriber's outbound SRTP context is never used by the
        engine (it only receives), so protecting here between engine slices is safe."""
        self._last_report = now
        blocks, self._reported = report_blocks(streams, self._reported)
        if not blocks or self.srtp_out is None:
            return
        plain = ReceiverReport(self.report_ssrc, blocks).serialize()
        try:
            self._send(self.srtp_out.protect_rtcp(plain))
        except SrtpError:  # pragma: no cover - a fresh index per report never fails
            return
        self.reports_sent += 1

    def send_transport_feedback(self, arrivals: Sequence[tuple[int, int, int]], now: float) -> None:
        """Record a subscriber's ``arrivals`` (transport-wide sequence number, SSRC, arrival
        ns on the monotonic clock, as :meth:`Engine.take_arrivals` gives them) and send the
        transport-wide CC feedback that is due (draft-holmer-rmcat-transport-wide-cc-
        extensions-01 §3.1), SRTCP-protected like the receiver reports."""
        if self.srtp_out is None:
            return
        if self._twcc is None:
            self._twcc = TwccRecorder(self.report_ssrc)
        recorder = self._twcc
        for seq, ssrc, at_ns in arrivals:
            recorder.on_packet(seq, ssrc, at_ns / 1e9)
        for plain in recorder.poll(now):
            try:
                self._send(self.srtp_out.protect_rtcp(plain))
            except SrtpError:  # pragma: no cover - a fresh index per packet never fails
                return
            self.feedback_sent += 1

    def handle_control(self, data: bytes) -> bool:
        """One non-media datagram from the engine; True when it asks for a keyframe."""
        kind = _loadgen_py.classify(data)
        if kind == _loadgen_py.PKT_STUN:
            self._on_stun(data)
            return False
        if kind == _loadgen_py.PKT_DTLS and self._dtls is not None:
            for out in self._dtls.receive(data, time.monotonic()):
                self._send(out)
            return False
        if kind != _loadgen_py.PKT_RTCP or self.publish is None or self.srtp_in is None:
            return False
        try:  # the engine never uses a publisher's inbound context: safe here
            plain = self.srtp_in.unprotect_rtcp(data)
        except SrtpError:  # a damaged or replayed report
            return False
        if _wants_keyframe(plain):
            self.keyframe_requests += 1
            return True
        return False


#: Most report blocks in one RR (the count field has 5 bits, RFC 3550 §6.4.2).
_MAX_BLOCKS = 31


def report_blocks(
    streams: Sequence[Sequence[int]], previous: dict[int, tuple[int, int]]
) -> tuple[list[ReportBlock], dict[int, tuple[int, int]]]:
    """RFC 3550 §6.4.1 report blocks from receiver counters, and the counts to remember.

    ``streams`` rows are (ssrc, unique, duplicates, reordered, first extended sequence
    number, highest extended sequence number, bytes), as the load generator's receiver
    snapshot gives them; ``previous`` maps an SSRC to (expected, received) at the last
    report. Expected is ``highest - first + 1`` (§A.3), lost is expected minus received
    (duplicates are not received twice here), the fraction is the interval's (§A.3), and no
    jitter or SR timing is claimed (0).
    """
    blocks: list[ReportBlock] = []
    remembered: dict[int, tuple[int, int]] = {}
    for row in streams[:_MAX_BLOCKS]:
        ssrc, unique, first, highest = row[0], row[1], row[4], row[5]
        expected = highest - first + 1
        lost = expected - unique
        prev_expected, prev_received = previous.get(ssrc, (0, 0))
        interval_expected = expected - prev_expected
        interval_lost = interval_expected - (unique - prev_received)
        fraction = 0
        if interval_expected > 0 and interval_lost > 0:
            fraction = min(255, (interval_lost << 8) // interval_expected)
        cumulative = max(-(1 << 23), min(lost, (1 << 23) - 1))
        blocks.append(ReportBlock(ssrc, fraction, cumulative, highest & 0xFFFFFFFF, 0, 0, 0))
        remembered[ssrc] = (expected, unique)
    return blocks, remembered


class TcpRelay:
    """Hands ICE-TCP subscribers' media to the engine, which reads datagram sockets.

    One thread reads every ICE-TCP endpoint's connection, splits the RFC 4571 frames and
    writes each one as a datagram into a socketpair whose other end the engine drains as
    that receiver's socket (accounting, latency and control messages as for UDP). The relay
    runs in the generator's process: it costs generator CPU, never the server's.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pairs: list[socket.socket] = []

    def attach(self, ep: Endpoint) -> socket.socket:
        """The socket the engine should drain for ``ep`` (its frames arrive there)."""
        engine_side, relay_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            engine_side.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECV_BUFFER)
        engine_side.setblocking(False)
        self._pairs += [engine_side, relay_side]
        for pending in ep._frames:  # what arrived during the handshake
            with contextlib.suppress(OSError):
                relay_side.send(pending)
        ep._frames.clear()
        self._selector.register(ep.sock, selectors.EVENT_READ, (ep, relay_side))
        return engine_side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ice-tcp-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.1):
                ep, out = key.data
                try:
                    data = ep.sock.recv(262144)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._selector.unregister(ep.sock)
                    continue
                try:
                    for payload in ep._decoder.feed(data):
                        with contextlib.suppress(OSError):
                            out.send(payload)
                except FramingError:
                    self._selector.unregister(ep.sock)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        self._selector.close()
        for sock in self._pairs:
            sock.close()


def _wants_keyframe(compound: bytes) -> bool:
    """True when a compound RTCP packet holds a PLI (PSFB FMT 1) or FIR (FMT 4)."""
    pos = 0
    while pos + 4 <= len(compound):
        fmt = compound[pos] & 0x1F
        if compound[pos + 1] == 206 and fmt in (1, 4):
            return True
        pos += 4 + 4 * int.from_bytes(compound[pos + 2 : pos + 4], "big")
    return False


def loadgen_srtp_context() -> Any:
    """The SrtpContext class the engine in use needs (compiled engine: compiled kernel)."""
    if _loadgen_c is not None:
        from sfu._fastpath import _srtp

        return _srtp.SrtpContext
    return sfu._fastpath.SrtpContext
