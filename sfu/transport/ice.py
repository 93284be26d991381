"""ICE-lite agent (RFC 8445 §2.5, §7.3) with consent freshness (RFC 7675), sans-I/O.

The server is always a lite, controlled agent: it never sends connectivity checks, it only
answers the client's Binding requests and learns from them which of the client's addresses
is in use. The caller parses a datagram with :meth:`StunMessage.parse`, hands both to
:meth:`IceLiteAgent.handle_stun` with the current time, sends back ``IceResult.response`` (if
any) to the request's source address and acts on ``IceResult.events``. The agent never reads
a clock, touches a socket or logs; credentials never appear in its reprs.
"""

from __future__ import annotations

import hmac
import secrets
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from sfu._fastpath.values import FRAMED_MARK
from sfu.packet.errors import ParseError
from sfu.packet.stun import (
    BINDING,
    ERROR_CODE,
    MAPPED_ADDRESS,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    NONCE,
    PRIORITY,
    REALM,
    UNKNOWN_ATTRIBUTES,
    USE_CANDIDATE,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    StunAttribute,
    StunClass,
    StunMessage,
    binding_error,
    binding_success,
    verify_fingerprint,
    verify_message_integrity,
)

__all__ = [
    "DROP_BAD_FINGERPRINT",
    "DROP_BAD_INTEGRITY",
    "DROP_BAD_REQUEST",
    "DROP_NOT_BINDING_REQUEST",
    "DROP_ROLE_CONFLICT",
    "DROP_UNANSWERABLE",
    "DROP_UNKNOWN_ATTRIBUTE",
    "DROP_WRONG_USERNAME",
    "ICE_CHARS",
    "TCP",
    "Address",
    "AddressKey",
    "Connected",
    "IceCredentials",
    "IceEvent",
    "IceLiteAgent",
    "IceResult",
    "SelectedPairChanged",
    "address_key",
    "is_tcp",
    "tcp_address",
    "ufrag_of_request",
]

#: A socket address as asyncio reports it: ``(host, port)`` or the IPv6 4-tuple.
Address: TypeAlias = tuple[Any, ...]

#: ice-char (RFC 8839 §5.4): ALPHA / DIGIT / "+" / "/".
ICE_CHARS: Final = string.ascii_letters + string.digits + "+/"
_ICE_CHAR_SET: Final = frozenset(ICE_CHARS)

# RFC 8445 §5.3: at least 24 bits of randomness in the ufrag and 128 bits in the password,
# i.e. 4 and 22 ice-chars; RFC 8839 §5.4 caps both at 256 characters.
_UFRAG_MIN, _PWD_MIN, _CRED_MAX = 4, 22, 256
_GENERATED_UFRAG_LEN: Final = 8
_GENERATED_PWD_LEN: Final = 24

#: How many validated source addresses are remembered; the oldest is forgotten first.
DEFAULT_MAX_ADDRESSES: Final = 8

# Drop reasons, stable strings meant for counters (never for addresses or credentials).
DROP_NOT_BINDING_REQUEST: Final = "not a binding request"
DROP_BAD_FINGERPRINT: Final = "bad fingerprint"
DROP_BAD_REQUEST: Final = "bad request"
DROP_WRONG_USERNAME: Final = "wrong username"
DROP_BAD_INTEGRITY: Final = "bad integrity"
DROP_UNKNOWN_ATTRIBUTE: Final = "unknown attribute"
DROP_ROLE_CONFLICT: Final = "role conflict"
DROP_UNANSWERABLE: Final = "unanswerable address"

# Comprehension-required attributes (< 0x8000) we understand; anything else in an
# authenticated request earns a 420 (RFC 8489 §6.3.1).
_KNOWN_REQUIRED: Final = frozenset(
    {
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        MESSAGE_INTEGRITY_SHA256,
        XOR_MAPPED_ADDRESS,
        PRIORITY,
        USE_CANDIDATE,
    }
)


def _check_ice_chars(value: str, what: str, minimum: int) -> None:
    if not minimum <= len(value) <= _CRED_MAX:
        raise ValueError(f"{what} must be {minimum}..{_CRED_MAX} characters")
    if not _ICE_CHAR_SET.issuperset(value):
        raise ValueError(f"{what} may only contain ice-chars (RFC 8839 §5.4)")


@dataclass(frozen=True, slots=True)
class IceCredentials:
    """Local ICE ufrag and password (RFC 8445 §5.3); the password is kept out of repr."""

    ufrag: str
    pwd: str = field(repr=False)

    def __post_init__(self) -> None:
        _check_ice_chars(self.ufrag, "ICE ufrag", _UFRAG_MIN)
        _check_ice_chars(self.pwd, "ICE password", _PWD_MIN)

    @classmethod
    def generate(cls) -> IceCredentials:
        """Fresh random credentials: 8-char ufrag (48 bits), 24-char password (144 bits)."""
        ufrag = "".join(secrets.choice(ICE_CHARS) for _ in range(_GENERATED_UFRAG_LEN))
        pwd = "".join(secrets.choice(ICE_CHARS) for _ in range(_GENERATED_PWD_LEN))
        return cls(ufrag, pwd)

    @property
    def key(self) -> bytes:
        """The short-term credential key: the password's UTF-8 bytes (RFC 8489 §9.1.1)."""
        return self.pwd.encode()


@dataclass(frozen=True, slots=True)
class SelectedPairChanged:
    """The client's address for media changed (first selection, nomination or move)."""

    address: Address
    previous: Address | None


@dataclass(frozen=True, slots=True)
class Connected:
    """The first valid check selected an address: ICE is usable from now on."""

    address: Address


IceEvent: TypeAlias = SelectedPairChanged | Connected


@dataclass(frozen=True, slots=True)
class IceResult:
    """What to do with one STUN message.

    ``response`` goes to ``destination``, which is always the request's source address
    (RFC 8489 §6.3.1.1). ``drop_reason`` is set when the request was not accepted, even
    if an error response is still sent.
    """

    response: bytes | None = None
    destination: Address | None = None
    events: tuple[IceEvent, ...] = ()
    drop_reason: str | None = None

    @property
    def accepted(self) -> bool:
        """True when the request was a valid connectivity check."""
        return self.drop_reason is None


def ufrag_of_request(message: StunMessage) -> str | None:
    """The local-ufrag part of a Binding request's USERNAME (``"<local>:<remote>"``).

    The media port uses it to route a check from a not yet known address to its pending
    transport. None if the message is not a Binding request or has no usable USERNAME.
    """
    if message.method != BINDING or message.msg_class != StunClass.REQUEST:
        return None
    try:
        username = message.username
    except ParseError:
        return None
    if username is None:
        return None
    local, sep, _ = username.partition(":")
    return local if sep and local else None


#: The third element of an address that arrived over ICE-TCP (RFC 6544): ``(host, port, "tcp")``.
#: UDP addresses are asyncio's ``(host, port)`` or IPv6 4-tuples, so the two never compare equal.
#: The forwarder knows the same mark (it keeps such peers apart and hands their egress back).
TCP: Final = FRAMED_MARK


def tcp_address(host: str, port: int) -> Address:
    """The address of an ICE-TCP connection's peer, told apart from a UDP source."""
    return (host, port, TCP)


def is_tcp(addr: Address) -> bool:
    """Whether ``addr`` is an ICE-TCP connection's peer (see :func:`tcp_address`)."""
    return len(addr) == 3 and addr[2] == TCP


#: What identifies a peer address (see :func:`address_key`).
AddressKey: TypeAlias = tuple[str, int] | tuple[str, int, str]


def address_key(addr: Address) -> AddressKey:
    """What identifies a peer address: (host, port), plus the transport when it is TCP
    (IPv6 tuples carry flowinfo and scope id, which do not identify the peer)."""
    return (addr[0], addr[1], TCP) if is_tcp(addr) else (addr[0], addr[1])


_addr_key = address_key


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class IceLiteAgent:
    """Answers connectivity checks for one transport and tracks its selected address.

    Lite agents are always controlled (RFC 8445 §6.1.1) and select what the controlling
    peer nominates (§7.3.1.5). Until a nomination arrives, the first valid check's source
    address is selected tentatively so clients that nominate late still get media.
    """

    def __init__(
        self,
        local: IceCredentials,
        remote_ufrag: str | None,
        *,
        now: float,
        consent_timeout: float = 30.0,
        connect_timeout: float = 30.0,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        if consent_timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_addresses < 1:
            raise ValueError("max_addresses must be at least 1")
        self._local = local
        self._remote_ufrag = remote_ufrag
        self._consent_timeout = consent_timeout
        self._connect_deadline = now + connect_timeout
        self._max_addresses = max_addresses
        # key -> (address as given, time of the last valid check); least recent first.
        self._validated: OrderedDict[AddressKey, tuple[Address, float]] = OrderedDict()
        self._selected: Address | None = None
        self._nominated = False
        self._connected = False

    # ----------------------------------------------------------------- state

    @property
    def local_credentials(self) -> IceCredentials:
        """The credentials checks must currently be signed with."""
        return self._local

    @property
    def remote_ufrag(self) -> str | None:
        """The peer's ufrag, or None while unknown (then it is not checked)."""
        return self._remote_ufrag

    @remote_ufrag.setter
    def remote_ufrag(self, value: str | None) -> None:
        self._remote_ufrag = value

    @property
    def selected_address(self) -> Address | None:
        """Where media and DTLS for this client go, or None before the first valid check."""
        return self._selected

    @property
    def nominated(self) -> bool:
        """True once the selected address came from a USE-CANDIDATE check."""
        return self._nominated

    @property
    def connected(self) -> bool:
        """True once any address has been selected."""
        return self._connected

    @property
    def validated_addresses(self) -> frozenset[AddressKey]:
        """``(host, port)`` (plus ``"tcp"`` over ICE-TCP) of every remembered address that
        passed a valid check."""
        return frozenset(self._validated)

    def is_validated(self, addr: Address) -> bool:
        """Whether datagrams (DTLS, SRTP) from ``addr`` may be accepted."""
        return _addr_key(addr) in self._validated

    # ----------------------------------------------------------------- timers

    def next_timer(self) -> float | None:
        """The consent deadline (or the connect deadline before any valid check)."""
        if self._selected is None:
            return self._connect_deadline
        entry = self._validated.get(_addr_key(self._selected))
        # The selected address is never evicted, so the entry exists; stay defensive.
        return None if entry is None else entry[1] + self._consent_timeout

    def consent_expired(self, now: float) -> bool:
        """True when the selected address has had no valid check for ``consent_timeout``.

        RFC 7675 §5.1: consent is lost 30 s after the last successful check. A lite agent
        sends no checks of its own, so the client's checks (which browsers send every few
        seconds for consent freshness) are what refresh it. Before any valid check this
        reports whether the connect timeout has passed.
        """
        deadline = self.next_timer()
        return deadline is not None and now >= deadline

    # ----------------------------------------------------------------- restart

    def restart(self, local: IceCredentials, remote_ufrag: str | None) -> None:
        """ICE restart (RFC 8445 §9): swap credentials, keep media on the selected pair.

        Checks signed with the old credentials fail from now on; the selected address and
        its consent stay until checks with the new credentials refresh or move them.
        """
        self._local = local
        self._remote_ufrag = remote_ufrag

    # ----------------------------------------------------------------- checks

    def handle_stun(
        self, message: StunMessage, data: bytes, addr: Address, now: float
    ) -> IceResult:
        """Answer one STUN message received from ``addr``; ``data`` is its raw datagram."""
        if message.method != BINDING or message.msg_class != StunClass.REQUEST:
            # We never send requests, so responses are stray; indications are keepalives.
            return IceResult(drop_reason=DROP_NOT_BINDING_REQUEST)
        # RFC 8445 §7.3 / RFC 8489 §7.3: checks carry FINGERPRINT; without a valid one the
        # datagram may not even be STUN, so it is discarded without an answer.
        if not verify_fingerprint(data):
            return IceResult(drop_reason=DROP_BAD_FINGERPRINT)
        # Only attributes before MESSAGE-INTEGRITY are authenticated (RFC 8489 §14.5);
        # anything after it (other than FINGERPRINT) must be ignored, or an on-path
        # attacker could append USE-CANDIDATE to a genuine check.
        signed: list[StunAttribute] = []
        has_integrity = False
        for attr in message.attributes:
            if attr.type == MESSAGE_INTEGRITY:
                has_integrity = True
                break
            signed.append(attr)
        covered = StunMessage(
            message.method, message.msg_class, message.transaction_id, tuple(signed)
        )
        try:
            username = covered.username
        except ParseError:
            username = None
        # RFC 8489 §9.1.3: missing USERNAME or MESSAGE-INTEGRITY -> 400, unauthenticated.
        if username is None or not has_integrity:
            return self._reject(message, addr, 400, DROP_BAD_REQUEST, authenticated=False)
        local, sep, remote = username.partition(":")
        ok = sep == ":" and _same(local, self._local.ufrag)
        if self._remote_ufrag is not None:
            ok = _same(remote, self._remote_ufrag) and ok
        if not ok:
            # RFC 8489 §9.1.3: unknown username -> 401 without integrity (no known key).
            return self._reject(message, addr, 401, DROP_WRONG_USERNAME, authenticated=False)
        if not verify_message_integrity(data, self._local.key):
            return self._reject(message, addr, 401, DROP_BAD_INTEGRITY, authenticated=False)

        # Authenticated from here on: error responses carry MESSAGE-INTEGRITY.
        unknown = covered.unknown_comprehension_required(_KNOWN_REQUIRED)
        if unknown:
            return self._reject(
                message, addr, 420, DROP_UNKNOWN_ATTRIBUTE, authenticated=True, unknown=unknown
            )
        try:
            covered.priority  # noqa: B018  (validates its length; lite agents ignore it)
            covered.ice_controlling  # noqa: B018
            controlled = covered.ice_controlled
        except ParseError:
            return self._reject(message, addr, 400, DROP_BAD_REQUEST, authenticated=True)
        if controlled is not None:
            # RFC 8445 §7.3.1.1: both sides claim the controlled role. A lite agent cannot
            # take the controlling role (§6.1.1), so it always answers 487.
            return self._reject(message, addr, 487, DROP_ROLE_CONFLICT, authenticated=True)
        try:
            response = binding_success(message, (addr[0], addr[1]), self._local.key)
        except ValueError:
            return IceResult(drop_reason=DROP_UNANSWERABLE)
        events = self._on_valid_check(addr, covered.use_candidate, now)
        return IceResult(response, addr, events)

    def _reject(
        self,
        message: StunMessage,
        addr: Address,
        code: int,
        reason: str,
        *,
        authenticated: bool,
        unknown: list[int] | None = None,
    ) -> IceResult:
        key = self._local.key if authenticated else None
        response = binding_error(message, code, key=key, unknown=unknown or ())
        return IceResult(response, addr, (), reason)

    def _on_valid_check(
        self, addr: Address, use_candidate: bool, now: float
    ) -> tuple[IceEvent, ...]:
        key = _addr_key(addr)
        # Every valid check refreshes consent for its address (RFC 7675 §5.1).
        self._validated[key] = (addr, now)
        self._validated.move_to_end(key)
        events: list[IceEvent] = []
        previous = self._selected
        if use_candidate:
            # RFC 8445 §7.3.1.5: a lite agent selects the pair the controlling agent
            # nominates; the most recent nomination wins, which lets a client move.
            self._nominated = True
            if previous is None or _addr_key(previous) != key:
                self._selected = addr
                events.append(SelectedPairChanged(addr, previous))
        elif previous is None:
            # Tentative selection until a nomination arrives.
            self._selected = addr
            events.append(SelectedPairChanged(addr, None))
        if not self._connected and self._selected is not None:
            self._connected = True
            events.append(Connected(self._selected))
        self._evict()
        return tuple(events)

    def _evict(self) -> None:
        # Bound the state a peer can create; never forget the selected address.
        selected = None if self._selected is None else _addr_key(self._selected)
        while len(self._validated) > self._max_addresses:
            for key in self._validated:
                if key != selected:
                    del self._validated[key]
                    break
            else:  # pragma: no cover - max_addresses >= 1 guarantees a victim
                return
