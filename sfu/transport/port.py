"""The media port: one UDP port for every transport, demultiplexed (RFC 7983) without I/O.

:class:`MediaPort` receives every datagram of the media socket with its source address and
``now``, and routes it:

* STUN binding requests go to the transport whose local ufrag is in USERNAME (a request from an
  address never seen before is how a client first appears, and how it moves); a well-formed
  request naming no transport gets an unsigned 401 and creates no state (RFC 8445 §7.3);
* DTLS, SRTP and SRTCP go to the transport whose ICE-selected address they come from;
* anything else is dropped and counted by reason.

The port keeps no state per source address: only transports created from an SDP offer (whose
number is capped, and those not yet connected capped again) and fixed counters. Error
responses to unknown peers are rate-limited so the port cannot be used as a reflector.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from sfu.packet.demux import PacketKind, classify
from sfu.packet.errors import ParseError
from sfu.packet.stun import BINDING, StunClass, StunMessage, binding_error
from sfu.timer_queue import TimerQueue
from sfu.transport.certificate import Certificate
from sfu.transport.counters import DropCounters
from sfu.transport.dtls import DEFAULT_SRTP_PROFILES, DtlsEndpoint, DtlsRole, SrtpProfile
from sfu.transport.ice import (
    Address,
    IceCredentials,
    IceLiteAgent,
    SelectedPairChanged,
    address_key,
    is_tcp,
    ufrag_of_request,
)
from sfu.transport.transport import TransportListener, TransportState, WebRtcTransport

__all__ = ["REFUSAL_REASONS", "CapacityError", "MediaPort", "TransportHook"]

Sender = Callable[[bytes, Address], None]
#: Called with a transport whose routing state (selected address, SRTP keys) may have
#: changed, or that the port has just forgotten; the data plane above subscribes to both.
TransportHook = Callable[[WebRtcTransport], None]


def _ignore(_transport: WebRtcTransport) -> None:
    """The default hook: nobody above listens."""


_KIND_NAMES = {kind: kind.name.lower() for kind in PacketKind}

# Defaults for a port built without configuration (tests, tools); the server passes its
# media section (``media.max_transports``, ``media.max_pending_transports``).
#: Transports held at once (each is one client's offer).
DEFAULT_MAX_TRANSPORTS: Final = 2000
#: Of those, transports that have not passed an ICE check yet (cheap for anyone to create).
DEFAULT_MAX_PENDING: Final = 200
#: Of those, pending transports created for one source address (an HTTP client, behind
#: trusted proxies the forwarded one) and for one identity (a join token's subject): one
#: client cannot take the whole pending budget and starve everyone else's joins.
DEFAULT_MAX_PENDING_PER_SOURCE: Final = 20
DEFAULT_MAX_PENDING_PER_IDENTITY: Final = 4
#: Seconds a new transport waits for its first valid ICE check before it fails (and stops
#: counting as pending). Browsers send checks within milliseconds of the answer; 10 s covers
#: a slow TURN allocation while an offer that never starts ICE frees its place soon.
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
#: Seconds without a valid check before consent expires (RFC 7675 §5.1 suggests 30).
DEFAULT_CONSENT_TIMEOUT_S: Final = 30.0
#: Seconds a DTLS handshake may take once it has started.
DEFAULT_HANDSHAKE_TIMEOUT_S: Final = 10.0
#: Error responses (401/400) sent per second to unknown peers, so the port is no reflector.
DEFAULT_ERROR_RESPONSES_PER_S: Final = 200.0
#: Every transport's timer is looked at this often even when its queued deadline is later:
#: a backstop for a deadline moved earlier by a call the port does not see (and to reap
#: transports closed from outside). ICE and DTLS timeouts are seconds, so 1 s is well within.
TIMER_SWEEP_S: Final = 1.0


#: Why a transport was refused (``CapacityError.reason``; the label of the refusal counter).
REFUSED_TOTAL: Final = "transports"
REFUSED_PENDING: Final = "pending"
REFUSED_PENDING_SOURCE: Final = "pending_per_source"
REFUSED_PENDING_IDENTITY: Final = "pending_per_identity"
REFUSAL_REASONS: Final = (
    REFUSED_TOTAL,
    REFUSED_PENDING,
    REFUSED_PENDING_SOURCE,
    REFUSED_PENDING_IDENTITY,
)


class CapacityError(RuntimeError):
    """The port holds as many transports (or pending transports, in all or for this source
    or identity) as it is allowed to; ``reason`` is one of :data:`REFUSAL_REASONS`."""

    def __init__(self, message: str, reason: str = REFUSED_TOTAL) -> None:
        super().__init__(message)
        self.reason = reason


class _TokenBucket:
    """At most ``rate`` events per second on average, bursts up to ``burst``."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last: float | None = None

    def take(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


_key = address_key


class MediaPort:
    """Routes the datagrams of the single media UDP port to transports (sans-I/O)."""

    def __init__(
        self,
        certificate: Certificate,
        send: Sender,
        *,
        max_transports: int = DEFAULT_MAX_TRANSPORTS,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_pending_per_source: int = DEFAULT_MAX_PENDING_PER_SOURCE,
        max_pending_per_identity: int = DEFAULT_MAX_PENDING_PER_IDENTITY,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        consent_timeout: float = DEFAULT_CONSENT_TIMEOUT_S,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        error_responses_per_s: float = DEFAULT_ERROR_RESPONSES_PER_S,
        srtp_profiles: Sequence[SrtpProfile] = DEFAULT_SRTP_PROFILES,
        on_transport_changed: TransportHook | None = None,
        on_transport_closed: TransportHook | None = None,
    ) -> None:
        self.certificate = certificate
        #: After a datagram or ICE event that may have changed a live transport's selected
        #: address or SRTP keys (cheap for the listener to ignore when nothing changed).
        self.on_transport_changed: TransportHook = on_transport_changed or _ignore
        #: Once for every transport the port forgets (closed, failed or timed out).
        self.on_transport_closed: TransportHook = on_transport_closed or _ignore
        self.counters = DropCounters()
        self._raw_send = send
        self._max_transports = max_transports
        self._max_pending = max_pending
        self._max_pending_per_source = max_pending_per_source
        self._max_pending_per_identity = max_pending_per_identity
        #: Transports refused, by reason (:data:`REFUSAL_REASONS`), read at scrape time.
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        #: Who asked for each transport: (source address, identity); never logged.
        self._owners: dict[str, tuple[str | None, str | None]] = {}
        self._connect_timeout = connect_timeout
        self._consent_timeout = consent_timeout
        self._handshake_timeout = handshake_timeout
        self._srtp_profiles = tuple(srtp_profiles)
        self._error_budget = _TokenBucket(error_responses_per_s, error_responses_per_s)
        self._transports: dict[str, WebRtcTransport] = {}
        self._by_ufrag: dict[str, WebRtcTransport] = {}
        self._by_addr: dict[tuple[str, int] | tuple[str, int, str], WebRtcTransport] = {}
        #: ICE-TCP peers that passed a valid check (selected or not), until their connection
        #: ends: bounded by the connections the TCP gate holds.
        self._tcp_checked: dict[tuple[str, int] | tuple[str, int, str], WebRtcTransport] = {}
        #: Each transport's next deadline, by transport id: :meth:`poll` runs only the due ones.
        self._timers: TimerQueue[str] = TimerQueue()
        #: When :meth:`poll` next looks at every transport (a backstop; see TIMER_SWEEP_S).
        self._next_sweep = -math.inf

    def _send(self, data: bytes, addr: Address) -> None:
        """Every datagram leaves through here, counted by kind (RFC 7983 first byte)."""
        name = _KIND_NAMES[classify(data)]
        counters = self.counters
        counters.sent[name] += 1
        counters.sent_bytes[name] += len(data)
        self._raw_send(data, addr)

    # -- transports ----------------------------------------------------------------------

    def create_transport(
        self,
        *,
        remote_ufrag: str | None,
        remote_fingerprints: Sequence[tuple[str, str]],
        dtls_role: DtlsRole,
        now: float,
        listener: TransportListener | None = None,
        source: str | None = None,
        identity: str | None = None,
    ) -> WebRtcTransport:
        """A new transport for one offer; raises :class:`CapacityError` when full.

        ``source`` (the client's address) and ``identity`` (who the token names), when given,
        are capped separately: at most ``max_pending_per_source`` / ``_per_identity`` of the
        transports still waiting for their first ICE check may share one.
        """
        self._reap()
        self._admit(source, identity)
        local = IceCredentials.generate()
        while local.ufrag in self._by_ufrag:  # pragma: no cover - 8 random chars collide rarely
            local = IceCredentials.generate()
        transport = WebRtcTransport(
            secrets.token_urlsafe(12),
            ice=IceLiteAgent(
                local,
                remote_ufrag,
                now=now,
                consent_timeout=self._consent_timeout,
                connect_timeout=self._connect_timeout,
            ),
            dtls=DtlsEndpoint(
                self.certificate,
                dtls_role,
                remote_fingerprints,
                handshake_timeout=self._handshake_timeout,
                srtp_profiles=self._srtp_profiles,
            ),
            send=self._send,
            counters=self.counters,
            listener=listener,
            now=now,
        )
        self._transports[transport.id] = transport
        self._by_ufrag[local.ufrag] = transport
        self._owners[transport.id] = (source, identity)
        self._rearm(transport)
        return transport

    def _admit(self, source: str | None, identity: str | None) -> None:
        """Raise (and count) the CapacityError of the first cap a new transport would pass."""
        reason = None
        if len(self._transports) >= self._max_transports:
            reason, message = REFUSED_TOTAL, "too many transports"
        else:
            pending = from_source = of_identity = 0
            for transport in self._transports.values():
                if transport.state is not TransportState.NEW:
                    continue
                pending += 1
                owner_source, owner_identity = self._owners.get(transport.id, (None, None))
                if source is not None and owner_source == source:
                    from_source += 1
                if identity is not None and owner_identity == identity:
                    of_identity += 1
            if pending >= self._max_pending:
                reason, message = REFUSED_PENDING, "too many transports waiting for ICE"
            elif from_source >= self._max_pending_per_source:
                reason = REFUSED_PENDING_SOURCE
                message = "too many transports waiting for ICE from this address"
            elif of_identity >= self._max_pending_per_identity:
                reason = REFUSED_PENDING_IDENTITY
                message = "too many transports waiting for ICE for this identity"
        if reason is not None:
            self.refused[reason] += 1
            raise CapacityError(message, reason)

    def restart_ice(self, transport: WebRtcTransport, remote_ufrag: str) -> IceCredentials:
        """ICE restart (RFC 8445 §9): new local credentials, indexed under the new ufrag.

        Media keeps flowing on the selected pair; checks with the old credentials fail from
        now on (401), checks with the new ones refresh consent or move the pair.
        """
        if transport.finished or self._transports.get(transport.id) is not transport:
            raise KeyError(transport.id)
        local = IceCredentials.generate()
        while local.ufrag in self._by_ufrag:  # pragma: no cover - 8 random chars collide rarely
            local = IceCredentials.generate()
        old = transport.ice.local_credentials.ufrag
        if self._by_ufrag.get(old) is transport:
            del self._by_ufrag[old]
        transport.ice.restart(local, remote_ufrag)
        self._by_ufrag[local.ufrag] = transport
        self._rearm(transport)
        return local

    def get(self, transport_id: str) -> WebRtcTransport | None:
        """The live transport with this id, if any."""
        return self._transports.get(transport_id)

    def close_transport(
        self, transport: WebRtcTransport, now: float, reason: str = "closed"
    ) -> None:
        """Close one transport and forget it (its timers and SRTP contexts go with it)."""
        transport.close(now, reason)
        self._forget(transport)

    def close_all(self, now: float, reason: str = "shutdown") -> None:
        """Close every transport (server shutdown)."""
        for transport in list(self._transports.values()):
            self.close_transport(transport, now, reason)

    def __iter__(self) -> Iterator[WebRtcTransport]:
        return iter(list(self._transports.values()))

    @property
    def max_transports(self) -> int:
        """The most transports the port holds at once."""
        return self._max_transports

    @property
    def transport_count(self) -> int:
        """Transports held (any state but finished)."""
        return len(self._transports)

    @property
    def pending_count(self) -> int:
        """Transports that have not passed a valid ICE check yet."""
        return sum(1 for t in self._transports.values() if t.state is TransportState.NEW)

    @property
    def srtp_context_count(self) -> int:
        """Transports holding SRTP contexts."""
        return sum(1 for t in self._transports.values() if t.has_srtp)

    @property
    def timer_count(self) -> int:
        """Transports with a pending timer."""
        return sum(1 for t in self._transports.values() if t.next_timer() is not None)

    @property
    def address_count(self) -> int:
        """Remote addresses currently routed to a transport."""
        return len(self._by_addr)

    def is_authenticated(self, addr: Address) -> bool:
        """Whether a valid ICE check came from ``addr`` (an ICE-TCP peer, or a routed one)."""
        key = _key(addr)
        return key in self._by_addr or key in self._tcp_checked

    def connection_closed(self, addr: Address) -> None:
        """An ICE-TCP connection ended: nothing it carried is accepted from it any more.

        A transport whose selected address it was stops getting media from there; it fails
        over when the client nominates another pair, or ends when consent expires.
        """
        key = _key(addr)
        self._tcp_checked.pop(key, None)
        self._by_addr.pop(key, None)

    # -- datagrams -----------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Address, now: float) -> None:
        """Route one datagram. Never raises: bad input is dropped and counted."""
        kind = classify(data)
        name = _KIND_NAMES[kind]
        counters = self.counters
        counters.received[name] += 1
        counters.received_bytes[name] += len(data)
        if kind is PacketKind.STUN:
            self._stun(data, addr, now)
            return
        transport = self._by_addr.get(_key(addr))
        if transport is None:
            self.counters.drop(f"{_KIND_NAMES[kind]}_unknown_source")
            return
        if kind is PacketKind.RTP:
            transport.handle_srtp(data, addr, now, rtcp=False)
        elif kind is PacketKind.RTCP:
            transport.handle_srtp(data, addr, now, rtcp=True)
        elif kind is PacketKind.DTLS:
            transport.handle_dtls(data, addr, now)
            self._rearm(transport)  # a handshake flight (re)sets its retransmission timer
        else:
            self.counters.drop(f"{_KIND_NAMES[kind]}_unsupported")
            return
        if transport.finished:
            self._forget(transport)
        else:
            self.on_transport_changed(transport)  # SRTP keys may have just arrived

    def _stun(self, data: bytes, addr: Address, now: float) -> None:
        try:
            message = StunMessage.parse(data)
        except ParseError:
            self.counters.drop("stun_malformed")
            return
        if message.method != BINDING or message.msg_class is not StunClass.REQUEST:
            # A lite agent sends no requests, so responses and indications are never for us.
            self.counters.drop("stun_not_binding_request")
            return
        ufrag = ufrag_of_request(message)
        transport = self._by_ufrag.get(ufrag) if ufrag is not None else None
        if transport is None:
            self.counters.drop("stun_unknown_username")
            if ufrag is not None and self._error_budget.take(now):
                # RFC 8445 §7.3 / RFC 8489 §9.2.4: unknown credentials -> 401, no state kept.
                self._send(binding_error(message, 401), addr)
            return
        result = transport.handle_stun(message, data, addr, now)
        # Errors (wrong password, bad request) share the unknown-ufrag reflection budget.
        response, destination = result.response, result.destination
        if (
            not result.accepted
            and response is not None
            and destination is not None
            and self._error_budget.take(now)
        ):
            self._send(response, destination)
        if result.accepted and is_tcp(addr):
            self._tcp_checked[_key(addr)] = transport
        for event in result.events:
            if isinstance(event, SelectedPairChanged):
                # Only drop the old route if it is still ours: another transport may have
                # been nominated from that address since (last nomination wins).
                if event.previous is not None:
                    old = _key(event.previous)
                    if self._by_addr.get(old) is transport:
                        del self._by_addr[old]
                self._by_addr[_key(event.address)] = transport
                self.on_transport_changed(transport)
        if transport.finished:
            self._forget(transport)
        else:
            self._rearm(transport)  # consent refreshed, or a DTLS client's first flight

    # -- timers --------------------------------------------------------------------------

    def next_timer(self) -> float | None:
        """The earliest deadline of any transport."""
        return self._timers.next_deadline()

    def poll(self, now: float) -> None:
        """Run the expired timers; forget transports that closed or failed.

        Only transports whose deadline passed are looked at (the datagrams and calls that
        move a deadline earlier re-arm it); every :data:`TIMER_SWEEP_S` all of them are, as
        a backstop for a deadline something else moved and to reap transports closed from
        outside."""
        if now >= self._next_sweep:
            self._next_sweep = now + TIMER_SWEEP_S
            due = list(self._transports.values())
        else:
            transports = self._transports
            due = [t for tid in self._timers.pop_due(now) if (t := transports.get(tid))]
        for transport in due:
            deadline = transport.next_timer()
            if deadline is not None and now >= deadline:
                transport.handle_timer(now)
            if transport.finished:
                self._forget(transport)
            else:
                self._rearm(transport)

    def _rearm(self, transport: WebRtcTransport) -> None:
        self._timers.schedule(transport.id, transport.next_timer())

    # -- internals -----------------------------------------------------------------------

    def _forget(self, transport: WebRtcTransport) -> None:
        if self._transports.pop(transport.id, None) is None:
            return
        self._timers.cancel(transport.id)
        self._owners.pop(transport.id, None)
        self.on_transport_closed(transport)
        ufrag = transport.ice.local_credentials.ufrag
        if self._by_ufrag.get(ufrag) is transport:
            del self._by_ufrag[ufrag]
        for key in [k for k, t in self._by_addr.items() if t is transport]:
            del self._by_addr[key]
        for key in [k for k, t in self._tcp_checked.items() if t is transport]:
            del self._tcp_checked[key]

    def _reap(self) -> None:
        for transport in [t for t in self._transports.values() if t.finished]:
            self._forget(transport)
