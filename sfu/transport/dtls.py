"""Sans-I/O DTLS 1.2 (RFC 6347) endpoint with the DTLS-SRTP extension (RFC 5764).

pyOpenSSL runs the handshake over memory BIOs: datagrams go in through :meth:`DtlsEndpoint.receive`
and come out as return values; nothing here touches a socket or reads a clock. The peer is
authenticated by comparing its certificate with the ``a=fingerprint`` lines of its SDP (RFC 8122
§5, RFC 8827 §6.5), never by a CA chain. On success the endpoint exports SRTP master keys
(RFC 5764 §4.2) for :class:`sfu.transport.srtp.SrtpSession`.

Timers: OpenSSL's DTLS retransmission timer (RFC 6347 §4.2.4) reads the real clock internally.
:meth:`DtlsEndpoint.next_timer` reports ``now + DTLSv1_get_timeout()`` as of the last call, and
:meth:`DtlsEndpoint.handle_timer` only retransmits when OpenSSL's own timer agrees that it has
expired. The overall handshake timeout is ours and runs on the ``now`` we are given.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from OpenSSL import SSL, crypto

from sfu.transport.certificate import HASH_ALGORITHMS, Certificate

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_SRTP_PROFILES",
    "DtlsEndpoint",
    "DtlsFailure",
    "DtlsRole",
    "DtlsState",
    "SrtpKeys",
    "SrtpProfile",
]

#: Largest datagram we emit: fits any real path once IP/UDP/TURN overhead is added.
DEFAULT_MTU = 1200

#: Bytes asked of OpenSSL per read: more than a DTLS record (2**14 plus overhead, RFC 6347
#: §4.1) or a UDP datagram holds, so one read never splits either.
_READ_CHUNK = 65536
#: Most application data records held between two :meth:`DtlsEndpoint.take_application_data`
#: calls: one datagram holds a few, the transport takes them at once; a flood beyond is dropped.
MAX_APP_INBOX: Final = 64
# RFC 5764 §4.2 exporter label.
_EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
# pyOpenSSL does not export the constant; 0xFEFD is DTLS 1.2 on the wire (RFC 6347 §4.1).
_DTLS1_2_VERSION: int = getattr(SSL, "DTLS1_2_VERSION", 0xFEFD)
# ECDSA certificate, so only ECDHE-ECDSA suites can be chosen; AEAD first (RFC 7525 §4.2), then the
# CBC suites older stacks still offer. Key exchange groups are OpenSSL's defaults (X25519, P-256..).
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
)
_RECORD_HEADER = 13  # RFC 6347 §4.1: type, version, epoch, sequence_number, length


class DtlsRole(enum.Enum):
    """Which side starts the handshake (RFC 5763 §5: SDP ``a=setup``)."""

    CLIENT = "active"  # a=setup:active, sends the ClientHello
    SERVER = "passive"  # a=setup:passive, waits for it


class DtlsState(enum.Enum):
    """Lifecycle of one DTLS association."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class DtlsFailure(enum.Enum):
    """Why a handshake failed, as a fixed code (the text in ``failure_reason`` is for logs)."""

    TIMEOUT = "timeout"
    FINGERPRINT_MISMATCH = "fingerprint_mismatch"
    NO_SRTP_PROFILE = "no_srtp_profile"
    #: Anything else OpenSSL reported (a protocol error, an alert, a failed key export).
    ERROR = "error"


class SrtpProfile(enum.Enum):
    """DTLS-SRTP protection profiles we negotiate (RFC 5764 §4.1.2, RFC 7714 §14.2)."""

    AEAD_AES_128_GCM = "SRTP_AEAD_AES_128_GCM"
    AES128_CM_SHA1_80 = "SRTP_AES128_CM_SHA1_80"

    @property
    def openssl_name(self) -> bytes:
        """Name for ``SSL_CTX_set_tlsext_use_srtp``."""
        return self.value.encode("ascii")

    @property
    def key_length(self) -> int:
        """SRTP master key length in bytes."""
        return 16

    @property
    def salt_length(self) -> int:
        """SRTP master salt length in bytes (RFC 7714 §12 uses 96-bit salts for GCM)."""
        return 12 if self is SrtpProfile.AEAD_AES_128_GCM else 14


#: Our preference order: GCM first (cheaper per packet, one pass for encryption and auth).
DEFAULT_SRTP_PROFILES: tuple[SrtpProfile, ...] = (
    SrtpProfile.AEAD_AES_128_GCM,
    SrtpProfile.AES128_CM_SHA1_80,
)
_PROFILE_BY_NAME = {p.openssl_name: p for p in SrtpProfile}


@dataclass(frozen=True, slots=True)
class SrtpKeys:
    """SRTP master keys from the handshake: local protects what we send, remote what we receive."""

    profile: SrtpProfile
    local_key: bytes = field(repr=False)
    local_salt: bytes = field(repr=False)
    remote_key: bytes = field(repr=False)
    remote_salt: bytes = field(repr=False)


# One SSL.Context per (certificate, role, profiles): building one costs more than a handshake.
_ContextKey = tuple[DtlsRole, tuple[SrtpProfile, ...]]
_CONTEXTS: weakref.WeakKeyDictionary[Certificate, dict[_ContextKey, SSL.Context]] = (
    weakref.WeakKeyDictionary()
)


def _context_for(
    certificate: Certificate, role: DtlsRole, profiles: tuple[SrtpProfile, ...]
) -> SSL.Context:
    per_cert = _CONTEXTS.setdefault(certificate, {})
    key = (role, profiles)
    ctx = per_cert.get(key)
    if ctx is None:
        ctx = _build_context(certificate, profiles)
        per_cert[key] = ctx
    return ctx


def _build_context(certificate: Certificate, profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(_DTLS1_2_VERSION)
    ctx.set_max_proto_version(_DTLS1_2_VERSION)
    # We fix the MTU ourselves; no tickets or renegotiation are needed for DTLS-SRTP.
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
    ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    ctx.use_certificate(certificate.certificate)
    ctx.use_privatekey(certificate.private_key)
    ctx.check_privatekey()
    ctx.set_cipher_list(_CIPHERS)
    ctx.set_tlsext_use_srtp(b":".join(p.openssl_name for p in profiles))
    # Both sides must present a certificate (RFC 5763 §5); it is checked by fingerprint.
    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_peer)
    return ctx


def _verify_peer(
    conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, preverify_ok: int
) -> bool:
    """Accept self-signed peers, but abort early when the leaf misses every SDP fingerprint."""
    if depth != 0:
        return True
    ref = conn.get_app_data()
    endpoint = ref() if isinstance(ref, weakref.ref) else None
    if not isinstance(endpoint, DtlsEndpoint):
        return False
    if endpoint._fingerprint_matches(_der(cert)):
        return True
    endpoint._fingerprint_mismatch = True
    return False


def _der(cert: crypto.X509) -> bytes:
    """The certificate's DER as OpenSSL holds it: what a fingerprint hashes (RFC 8122 §5).

    Not re-encoded through ``cryptography``, whose stricter ASN.1 parser raises on malformed
    certificates that a hostile peer may send; such a certificate just fails to match.
    """
    return crypto.dump_certificate(crypto.FILETYPE_ASN1, cert)


def _parse_fingerprints(remote: Sequence[tuple[str, str]]) -> list[tuple[str, bytes]]:
    """SDP fingerprints as (hashlib name, digest); unknown algorithms and bad hex are dropped."""
    parsed: list[tuple[str, bytes]] = []
    for algorithm, value in remote:
        name = HASH_ALGORITHMS.get(algorithm.strip().lower())
        if name is None:
            continue
        try:
            digest = bytes.fromhex(value.strip().replace(":", ""))
        except ValueError:
            continue
        if len(digest) == hashlib.new(name).digest_size:
            parsed.append((name, digest))
    return parsed


def _error_reason(exc: SSL.Error) -> str:
    """A short, secret-free reason from an OpenSSL error queue entry."""
    errors = exc.args[0] if exc.args else None
    if isinstance(errors, list) and errors:
        first = errors[0]
        if isinstance(first, tuple) and len(first) >= 3 and first[2]:
            return f"dtls error: {first[2]}"
    return f"dtls error: {type(exc).__name__}"


def _pack_records(data: bytes, mtu: int) -> list[bytes]:
    """Split BIO output into whole DTLS records and pack them into datagrams of at most ``mtu``.

    The memory BIO is a byte stream, so record boundaries must be recovered here (RFC 6347 §4.1.1:
    a record never spans datagrams).
    """
    datagrams: list[bytes] = []
    current = bytearray()
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < _RECORD_HEADER:
            record_end = end
        else:
            record_end = min(end, pos + _RECORD_HEADER + int.from_bytes(data[pos + 11 : pos + 13]))
        record = data[pos:record_end]
        pos = record_end
        if current and len(current) + len(record) > mtu:
            datagrams.append(bytes(current))
            current.clear()
        current += record
    if current:
        datagrams.append(bytes(current))
    return datagrams


class DtlsEndpoint:
    """One DTLS-SRTP association, driven by datagrams and ``now`` (seconds, monotonic)."""

    def __init__(
        self,
        certificate: Certificate,
        role: DtlsRole,
        remote_fingerprints: Sequence[tuple[str, str]],
        *,
        handshake_timeout: float = 10.0,
        srtp_profiles: Sequence[SrtpProfile] = DEFAULT_SRTP_PROFILES,
        mtu: int = DEFAULT_MTU,
    ) -> None:
        profiles = tuple(srtp_profiles)
        if not profiles:
            raise ValueError("at least one SRTP profile is required")
        self.role = role
        self.state = DtlsState.NEW
        self.failure_reason: str | None = None
        #: Set with ``failure_reason`` when the handshake fails (state FAILED).
        self.failure: DtlsFailure | None = None
        self.srtp_keys: SrtpKeys | None = None
        #: Application data records read after the handshake: discarded unless
        #: ``deliver_application_data`` (data channels: SCTP packets, RFC 8261) is set.
        self.app_data_records = 0
        self.app_data_bytes = 0
        self.deliver_application_data = False
        #: Records read and not yet taken with :meth:`take_application_data`, bounded.
        self._app_inbox: list[bytes] = []
        self.app_data_overflow = 0
        self._fingerprints = _parse_fingerprints(remote_fingerprints)
        self._fingerprint_mismatch = False
        self._handshake_timeout = handshake_timeout
        self._handshake_deadline: float | None = None
        self._retransmit_deadline: float | None = None
        self._mtu = mtu
        self._conn = SSL.Connection(_context_for(certificate, role, profiles), None)
        self._conn.set_app_data(weakref.ref(self))
        self._conn.set_ciphertext_mtu(mtu)
        if role is DtlsRole.CLIENT:
            self._conn.set_connect_state()
        else:
            self._conn.set_accept_state()

    # -- public API ------------------------------------------------------------------------

    def start(self, now: float) -> list[bytes]:
        """Begin the handshake: the client returns its ClientHello, the server nothing."""
        if self.state is not DtlsState.NEW:
            return []
        self.state = DtlsState.CONNECTING
        self._handshake_deadline = now + self._handshake_timeout
        if self.role is DtlsRole.CLIENT:
            return self._handshake(now)
        return []

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Feed one DTLS datagram; return datagrams to send. Never raises on bad input."""
        out: list[bytes] = []
        if self.state is DtlsState.NEW:
            out = self.start(now)
        if not data or self.state not in (DtlsState.CONNECTING, DtlsState.CONNECTED):
            return out
        try:
            self._conn.bio_write(data)
        except SSL.Error:
            return out  # the memory BIO refused it: drop the datagram
        if self.state is DtlsState.CONNECTING:
            out += self._handshake(now)
            if not self._connected():
                return out
            # Application data may follow the Finished message in the same datagram.
        return out + self._read_application_data()

    def handle_timer(self, now: float) -> list[bytes]:
        """Fail on handshake timeout, or retransmit the last flight if OpenSSL's timer expired."""
        if self.state is not DtlsState.CONNECTING:
            return []
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._fail("handshake timeout", DtlsFailure.TIMEOUT)
            return []
        if self._retransmit_deadline is None or now < self._retransmit_deadline:
            return []
        try:
            self._conn.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            out = self._flush()
            self._fail(_error_reason(exc))
            return out
        out = self._flush()
        self._update_retransmit_deadline(now)
        return out

    def take_application_data(self) -> list[bytes]:
        """The application data records read since the last call (SCTP packets)."""
        out, self._app_inbox = self._app_inbox, []
        return out

    def send_application_data(self, data: bytes) -> list[bytes]:
        """Encrypt one application data record (an SCTP packet); datagrams to send."""
        if self.state is not DtlsState.CONNECTED:
            return []
        try:
            self._conn.send(data)
        except SSL.Error:
            return []  # a record OpenSSL refuses is lost like a datagram; SCTP retransmits
        return self._flush()

    def next_timer(self) -> float | None:
        """Earliest deadline for :meth:`handle_timer`, or None when no handshake is running."""
        if self.state is not DtlsState.CONNECTING:
            return None
        deadlines = [
            d for d in (self._retransmit_deadline, self._handshake_deadline) if d is not None
        ]
        return min(deadlines) if deadlines else None

    def close(self) -> list[bytes]:
        """Send close_notify when connected (RFC 5246 §7.2.1) and move to CLOSED."""
        out: list[bytes] = []
        if self.state is DtlsState.CONNECTED:
            with contextlib.suppress(SSL.Error):
                self._conn.shutdown()
            out = self._flush()
        if self.state in (DtlsState.NEW, DtlsState.CONNECTING, DtlsState.CONNECTED):
            self.state = DtlsState.CLOSED
        self._retransmit_deadline = None
        return out

    # -- internals -------------------------------------------------------------------------

    def _connected(self) -> bool:
        """State check as a call, so type narrowing does not outlive the calls that change it."""
        return self.state is DtlsState.CONNECTED

    def _fingerprint_matches(self, der: bytes) -> bool:
        """True when ``der`` hashes to one of the remote SDP fingerprints (constant time)."""
        matched = False
        for name, expected in self._fingerprints:
            actual = hashlib.new(name, der).digest()
            matched |= hmac.compare_digest(actual, expected)
        return matched

    def _handshake(self, now: float) -> list[bytes]:
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            out = self._flush()
            self._update_retransmit_deadline(now)
            return out
        except SSL.Error as exc:
            out = self._flush()  # the alert OpenSSL queued, if any
            if self._fingerprint_mismatch:
                self._fail("fingerprint mismatch", DtlsFailure.FINGERPRINT_MISMATCH)
            else:
                self._fail(_error_reason(exc))
            return out
        out = self._flush()
        self._complete()
        return out

    def _complete(self) -> None:
        """Check the peer's certificate once more, then export SRTP keys (RFC 5764 §4.2)."""
        peer = self._conn.get_peer_certificate()
        if peer is None or not self._fingerprint_matches(_der(peer)):
            self._fail("fingerprint mismatch", DtlsFailure.FINGERPRINT_MISMATCH)
            return
        profile = _PROFILE_BY_NAME.get(self._conn.get_selected_srtp_profile())
        if profile is None:
            self._fail("no srtp profile negotiated", DtlsFailure.NO_SRTP_PROFILE)
            return
        key_len, salt_len = profile.key_length, profile.salt_length
        try:
            material = self._conn.export_keying_material(_EXPORTER_LABEL, 2 * (key_len + salt_len))
        except SSL.Error as exc:
            self._fail(_error_reason(exc))
            return
        # client_key | server_key | client_salt | server_salt
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        if self.role is DtlsRole.CLIENT:
            keys = SrtpKeys(profile, client_key, client_salt, server_key, server_salt)
        else:
            keys = SrtpKeys(profile, server_key, server_salt, client_key, client_salt)
        self.srtp_keys = keys
        self.state = DtlsState.CONNECTED
        self._retransmit_deadline = None
        self._handshake_deadline = None

    def _read_application_data(self) -> list[bytes]:
        """Drain decrypted records: count and drop data, follow close_notify and alerts."""
        while True:
            try:
                data = self._conn.recv(_READ_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # Peer sent close_notify: answer with ours (RFC 5246 §7.2.1) and close.
                with contextlib.suppress(SSL.Error):
                    self._conn.shutdown()
                self.state = DtlsState.CLOSED
                break
            except SSL.Error as exc:
                reason = _error_reason(exc)
                if "alert" in reason:
                    self.state = DtlsState.CLOSED
                    self.failure_reason = reason
                else:
                    self._fail(reason)
                break
            self.app_data_records += 1
            self.app_data_bytes += len(data)
            if self.deliver_application_data:
                if len(self._app_inbox) < MAX_APP_INBOX:
                    self._app_inbox.append(data)
                else:
                    self.app_data_overflow += 1
        return self._flush()

    def _flush(self) -> list[bytes]:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._conn.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if not chunks:
            return []
        return _pack_records(b"".join(chunks), self._mtu)

    def _update_retransmit_deadline(self, now: float) -> None:
        timeout = self._conn.DTLSv1_get_timeout()
        self._retransmit_deadline = None if timeout is None else now + timeout

    def _fail(self, reason: str, failure: DtlsFailure = DtlsFailure.ERROR) -> None:
        self.state = DtlsState.FAILED
        self.failure_reason = reason
        self.failure = failure
        self.srtp_keys = None
        self._retransmit_deadline = None
        self._handshake_deadline = None
