"""One WebRTC transport: ICE-lite, DTLS-SRTP and SRTP composed into a sans-I/O state machine.

The transport owns no socket. Datagrams for it arrive from the media port
(:mod:`sfu.transport.port`, which demultiplexes the single media UDP port) together with
``now``; what it sends goes out through the ``send`` callable the port hands it. Decrypted
RTP and RTCP go up to a :class:`TransportListener` with their arrival time; the routing layer
sends RTP/RTCP back down with ``send_rtp`` / ``send_rtcp``. That pair of calls is the whole
interface to routing, so the compiled data plane can later take over the RTP part of a
connected transport (it needs only the selected address and the SRTP keys) without the
control plane changing.

States (see docs/architecture.md):

``NEW`` -- created from an offer, waiting for the client's first valid ICE check;
``CONNECTING`` -- ICE has selected an address, DTLS handshake in progress;
``CONNECTED`` -- SRTP keys exported, media flows;
``CLOSED`` -- closed locally or by the peer (close_notify), or consent expired;
``FAILED`` -- DTLS failed (bad fingerprint, handshake timeout, protocol error) or ICE never
connected. A transport in ``CLOSED``/``FAILED`` holds no SRTP context and no timer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Protocol

from sfu.packet.stun import StunMessage
from sfu.transport.counters import DropCounters
from sfu.transport.datachannel import ChannelMessage, ChannelOpened, DataChannels
from sfu.transport.dtls import DtlsEndpoint, DtlsFailure, DtlsRole, DtlsState, SrtpKeys
from sfu.transport.ice import (
    Address,
    Connected,
    IceLiteAgent,
    IceResult,
    SelectedPairChanged,
    address_key,
    is_tcp,
)
from sfu.transport.srtp import SrtpError, SrtpSession

__all__ = ["HandshakeFailure", "TransportListener", "TransportState", "WebRtcTransport"]

Sender = Callable[[bytes, Address], None]
#: Who receives data channel events (opened channels, messages) with their arrival time.
ChannelListener = Callable[["WebRtcTransport", ChannelOpened | ChannelMessage, float], None]


class TransportState(enum.Enum):
    """Lifecycle of a transport; see the module docstring."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"
    FAILED = "failed"


#: The two final states (see :attr:`WebRtcTransport.finished`).
_CLOSED: Final = TransportState.CLOSED
_FAILED: Final = TransportState.FAILED


class HandshakeFailure(enum.Enum):
    """Why a transport failed to connect; each value is the metric's ``(stage, reason)``."""

    ICE_TIMEOUT = ("ice", "timeout")
    #: An ICE failure other than the connect timeout: none exists today, but the label set
    #: (and dashboards built on it) keeps the stage's generic reason like DTLS's.
    ICE_ERROR = ("ice", "error")
    DTLS_TIMEOUT = ("dtls", "timeout")
    DTLS_FINGERPRINT_MISMATCH = ("dtls", "fingerprint_mismatch")
    DTLS_NO_SRTP_PROFILE = ("dtls", "no_srtp_profile")
    DTLS_ERROR = ("dtls", "error")


#: The transport's failure for each DTLS failure code.
_DTLS_FAILURES: Final = {
    DtlsFailure.TIMEOUT: HandshakeFailure.DTLS_TIMEOUT,
    DtlsFailure.FINGERPRINT_MISMATCH: HandshakeFailure.DTLS_FINGERPRINT_MISMATCH,
    DtlsFailure.NO_SRTP_PROFILE: HandshakeFailure.DTLS_NO_SRTP_PROFILE,
    DtlsFailure.ERROR: HandshakeFailure.DTLS_ERROR,
}


class TransportListener(Protocol):
    """What the routing layer implements to receive from a transport."""

    def on_rtp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """One decrypted RTP packet, with its arrival time."""

    def on_rtcp(self, transport: WebRtcTransport, packet: bytes, now: float) -> None:
        """One decrypted RTCP compound packet, with its arrival time."""

    def on_state(self, transport: WebRtcTransport, state: TransportState, now: float) -> None:
        """The transport changed state (``CONNECTED``, ``CLOSED`` or ``FAILED`` matter most)."""


#: Addresses compare on (host, port) and the transport (UDP or ICE-TCP): IPv6 tuples carry
#: flowinfo and scope id too.
_key = address_key


class WebRtcTransport:
    """ICE-lite + DTLS-SRTP + SRTP for one peer connection (one BUNDLE group, rtcp-mux)."""

    __slots__ = (
        "_channel_listener",
        "_counters",
        "_listener",
        "_send",
        "_srtp",
        "close_reason",
        "connecting_at",
        "created_at",
        "data_channels",
        "dtls",
        "failure",
        "ice",
        "id",
        "state",
    )

    def __init__(
        self,
        transport_id: str,
        *,
        ice: IceLiteAgent,
        dtls: DtlsEndpoint,
        send: Sender,
        counters: DropCounters,
        listener: TransportListener | None = None,
        now: float,
    ) -> None:
        self.id = transport_id
        self.ice = ice
        self.dtls = dtls
        self.state = TransportState.NEW
        self.close_reason: str | None = None
        #: Why the transport failed to connect (state FAILED), as the metric's fixed labels.
        self.failure: HandshakeFailure | None = None
        self._send = send
        self._counters = counters
        self._listener = listener
        self._srtp: SrtpSession | None = None
        #: When the answer was made and when ICE first succeeded, for handshake metrics.
        self.created_at = now
        self.connecting_at: float | None = None
        #: The SCTP association and its data channels, when the answer accepted m=application.
        self.data_channels: DataChannels | None = None
        self._channel_listener: ChannelListener | None = None

    # -- properties ---------------------------------------------------------------------

    @property
    def selected_address(self) -> Address | None:
        """Where media goes: the address ICE selected (nominated) for this transport."""
        return self.ice.selected_address

    @property
    def srtp_keys(self) -> SrtpKeys | None:
        """The exported SRTP keys once connected (for the compiled data plane)."""
        return self.dtls.srtp_keys if self._srtp is not None else None

    @property
    def srtp(self) -> SrtpSession | None:
        """The SRTP contexts once DTLS has produced keys (the data plane uses them too)."""
        return self._srtp

    @property
    def has_srtp(self) -> bool:
        """True while this transport holds SRTP contexts (connected and not closed)."""
        return self._srtp is not None

    @property
    def finished(self) -> bool:
        """True once closed or failed: the port then forgets it."""
        # Identity against module constants: ``in (TransportState.X, ...)`` costs ~0.5 µs
        # (two enum member lookups and a tuple), and the port asks this per slow datagram.
        state = self.state
        return state is _CLOSED or state is _FAILED

    @property
    def listener(self) -> TransportListener | None:
        """Who receives this transport's media and state changes."""
        return self._listener

    def set_listener(self, listener: TransportListener | None) -> None:
        """Attach the routing layer (may happen after creation, once the answer is sent)."""
        self._listener = listener

    def enable_data_channels(self, channels: DataChannels, listener: ChannelListener) -> None:
        """Carry SCTP (RFC 8261) in this transport's DTLS application data; before connecting."""
        self.data_channels = channels
        self._channel_listener = listener
        self.dtls.deliver_application_data = True

    def send_channel(self, packets: list[bytes] | None) -> bool:
        """Encrypt and send SCTP packets the data channels produced; False if refused/down."""
        if packets is None or self.finished:
            return False
        for packet in packets:
            self._send_dtls(self.dtls.send_application_data(packet))
        return True

    # -- input from the media port --------------------------------------------------------

    def handle_stun(
        self, message: StunMessage, data: bytes, addr: Address, now: float
    ) -> IceResult:
        """An ICE connectivity check for this transport; answers it and follows nomination."""
        result = self.ice.handle_stun(message, data, addr, now)
        # Success responses go out here; error responses are the port's to send, under its
        # rate limit, since they answer peers that proved nothing.
        if result.accepted and result.response is not None and result.destination is not None:
            self._send(result.response, result.destination)
        if result.drop_reason is not None:
            self._counters.drop("stun_" + result.drop_reason.replace(" ", "_"))
        for event in result.events:
            if isinstance(event, Connected) and self.state is TransportState.NEW:
                self._set_state(TransportState.CONNECTING, now)
                self._send_dtls(self.dtls.start(now))
            elif isinstance(event, SelectedPairChanged):
                pass  # the port re-indexes; sends below always use ice.selected_address
        return result

    def handle_dtls(self, data: bytes, addr: Address, now: float) -> None:
        """A DTLS record; accepted only from an address that passed an ICE check."""
        if self.finished:
            return
        if not self.ice.is_validated(addr):
            self._counters.drop("dtls_unvalidated_source")
            return
        self._send_dtls(self.dtls.receive(data, now), addr)
        self._after_dtls(now)
        self._sctp_input(now)

    def handle_srtp(self, data: bytes, addr: Address, now: float, rtcp: bool) -> None:
        """An SRTP or SRTCP packet: unprotect and hand it to the listener."""
        srtp = self._srtp
        if srtp is None:
            self._counters.drop("srtp_before_dtls")
            return
        if not self.ice.is_validated(addr):
            self._counters.drop("srtp_unvalidated_source")
            return
        try:
            plain = srtp.unprotect_rtcp(data) if rtcp else srtp.unprotect_rtp(data)
        except SrtpError as exc:
            self._counters.drop("srtp_" + exc.reason)
            return
        listener = self._listener
        if listener is None:
            self._counters.drop("no_listener")
        elif rtcp:
            listener.on_rtcp(self, plain, now)
        else:
            listener.on_rtp(self, plain, now)

    # -- output from routing ------------------------------------------------------------

    def send_rtp(self, packet: bytes) -> bool:
        """Protect and send one RTP packet to the selected address; False if not connected."""
        srtp = self._srtp
        addr = self.ice.selected_address
        if srtp is None or addr is None:
            return False
        try:
            self._send(srtp.protect_rtp(packet), addr)
        except SrtpError:
            self._counters.drop("srtp_protect_failed")
            return False
        return True

    def send_protected(self, datagram: bytes) -> bool:
        """Send an SRTP packet protected earlier (a pacer held it); False if not connected."""
        addr = self.ice.selected_address
        if self._srtp is None or addr is None:
            return False
        self._send(datagram, addr)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        """Protect and send one RTCP compound packet; False if not connected."""
        srtp = self._srtp
        addr = self.ice.selected_address
        if srtp is None or addr is None:
            return False
        try:
            self._send(srtp.protect_rtcp(packet), addr)
        except SrtpError:
            self._counters.drop("srtp_protect_failed")
            return False
        return True

    # -- timers and lifecycle -----------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest deadline of ICE (connect/consent) and DTLS (retransmit/timeout)."""
        if self.finished:
            return None
        deadlines = [self.ice.next_timer(), self.dtls.next_timer()]
        if self.data_channels is not None:
            deadlines.append(self.data_channels.association.next_timer())
        return min((d for d in deadlines if d is not None), default=None)

    def handle_timer(self, now: float) -> None:
        """Run expired timers: consent freshness (RFC 7675), DTLS retransmission and timeout."""
        if self.finished:
            return
        if self.ice.consent_expired(now):
            if self.state is TransportState.NEW:
                self._fail(HandshakeFailure.ICE_TIMEOUT, "ice connect timeout", now)
            else:
                # RFC 7675 §5.1: without consent nothing more is sent, not even close_notify.
                self._finish(TransportState.CLOSED, "ice consent expired", now)
            return
        self._send_dtls(self.dtls.handle_timer(now))
        self._after_dtls(now)
        channels = self.data_channels
        if channels is not None and self._srtp is not None:
            self.send_channel(channels.association.handle_timer(now=now))

    def close(self, now: float, reason: str = "closed") -> None:
        """Close locally: send close_notify if DTLS is up, free SRTP state."""
        if self.finished:
            return
        if self.dtls.state is DtlsState.CONNECTED:
            if self.data_channels is not None:
                self.send_channel(self.data_channels.association.close(now=now))
            self._send_dtls(self.dtls.close())
        self._finish(TransportState.CLOSED, reason, now)

    # -- internals ------------------------------------------------------------------------

    def _send_dtls(self, datagrams: list[bytes], fallback: Address | None = None) -> None:
        addr = self.ice.selected_address or fallback
        if addr is None:
            return
        for datagram in datagrams:
            self._send(datagram, addr)

    def _after_dtls(self, now: float) -> None:
        state = self.dtls.state
        if state is DtlsState.CONNECTED and self._srtp is None:
            keys = self.dtls.srtp_keys
            if keys is None:  # pragma: no cover - the endpoint sets keys before CONNECTED
                self._fail(HandshakeFailure.DTLS_ERROR, "dtls: no srtp keys", now)
                return
            self._srtp = SrtpSession(keys)
            self._set_state(TransportState.CONNECTED, now)
        elif state is DtlsState.FAILED:
            failure = _DTLS_FAILURES[self.dtls.failure or DtlsFailure.ERROR]
            self._fail(failure, f"dtls: {self.dtls.failure_reason}", now)
        elif state is DtlsState.CLOSED:
            self._finish(TransportState.CLOSED, "dtls close_notify", now)

    def _sctp_input(self, now: float) -> None:
        """SCTP packets DTLS decrypted: through the association, events to the listener."""
        channels = self.data_channels
        if channels is None or self._srtp is None:
            return
        association = channels.association
        if not association.established and not association.closed:
            self.send_channel(association.start(now=now))
        for packet in self.dtls.take_application_data():
            out, events = channels.receive(packet, now=now)
            self.send_channel(out)
            listener = self._channel_listener
            for event in events:
                if listener is not None:
                    listener(self, event, now)

    def _fail(self, failure: HandshakeFailure, reason: str, now: float) -> None:
        self.failure = failure
        self._finish(TransportState.FAILED, reason, now)

    def _finish(self, state: TransportState, reason: str, now: float) -> None:
        self._srtp = None
        self.close_reason = reason
        self._set_state(state, now)

    def _set_state(self, state: TransportState, now: float) -> None:
        if state is self.state:
            return
        self._record_handshake(state, now)
        self.state = state
        if self._listener is not None:
            self._listener.on_state(self, state, now)

    def _record_handshake(self, state: TransportState, now: float) -> None:
        """Handshake durations and failures by stage, from fixed reason sets (for metrics)."""
        counters = self._counters
        if state is TransportState.CONNECTING:
            self.connecting_at = now
            counters.ice_handshake.observe(max(0.0, now - self.created_at))
        elif state is TransportState.CONNECTED and self.connecting_at is not None:
            counters.dtls_handshake.observe(max(0.0, now - self.connecting_at))
            counters.connected_by_type[self.candidate_type] += 1
        elif state is TransportState.FAILED:
            assert self.failure is not None  # every way to FAILED goes through _fail
            counters.handshake_failures[self.failure.value] += 1
            counters.failed_by_type[self.candidate_type] += 1

    @property
    def candidate_type(self) -> str:
        """How the client reaches us: ``udp``, ``tcp`` (ICE-TCP), ``relay`` (from a TURN
        relay's address) or ``none`` (no address selected yet)."""
        address = self.ice.selected_address
        if address is None:
            return "none"
        if is_tcp(address):
            return "tcp"
        return "relay" if address[0] in self._counters.relay_hosts else "udp"

    @property
    def dtls_role(self) -> DtlsRole:
        """Our DTLS role (from SDP ``a=setup``)."""
        return self.dtls.role
