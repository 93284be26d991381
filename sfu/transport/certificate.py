"""The server's DTLS certificate and SDP fingerprints of certificates (RFC 8122 §5).

One ECDSA P-256 self-signed certificate is generated per server process; peers authenticate it by
the fingerprint we put in SDP, not by a CA chain (RFC 8827 §6.5).
"""

from __future__ import annotations

import datetime
import hashlib
import secrets
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import crypto

__all__ = ["HASH_ALGORITHMS", "Certificate", "FingerprintPair", "fingerprint_of"]

#: SDP hash-function names (RFC 8122 §5, IANA "Hash Function Textual Names") -> hashlib names.
HASH_ALGORITHMS: dict[str, str] = {
    "sha-1": "sha1",
    "sha-256": "sha256",
    "sha-384": "sha384",
    "sha-512": "sha512",
}

_VALIDITY_BEFORE = datetime.timedelta(days=1)
_VALIDITY_AFTER = datetime.timedelta(days=30)


class FingerprintPair(NamedTuple):
    """``(algorithm, value)`` as in ``a=fingerprint:sha-256 AB:CD:...``; a plain 2-tuple too."""

    algorithm: str
    value: str


def fingerprint_of(der: bytes, algorithm: str) -> str:
    """Digest a DER certificate in SDP form: upper-case hex pairs joined by colons.

    Raises ValueError for a hash function outside :data:`HASH_ALGORITHMS` (case-insensitive).
    """
    name = HASH_ALGORITHMS.get(algorithm.lower())
    if name is None:
        raise ValueError(f"unsupported fingerprint algorithm {algorithm[:20]!r}")
    return _colon_hex(hashlib.new(name, der).digest())


def _colon_hex(digest: bytes) -> str:
    return digest.hex(":").upper()


class Certificate:
    """A private key and its self-signed certificate, as cryptography, pyOpenSSL and DER."""

    __slots__ = ("__weakref__", "_fingerprint", "certificate", "der", "key", "private_key", "x509")

    def __init__(
        self, certificate: x509.Certificate, private_key: ec.EllipticCurvePrivateKey
    ) -> None:
        #: cryptography objects (what pyOpenSSL's SSL.Context takes without deprecation warnings)
        self.certificate = certificate
        self.private_key = private_key
        #: the same as pyOpenSSL objects
        self.x509 = crypto.X509.from_cryptography(certificate)
        self.key = crypto.PKey.from_cryptography_key(private_key)
        self.der: bytes = certificate.public_bytes(serialization.Encoding.DER)
        self._fingerprint = FingerprintPair("sha-256", fingerprint_of(self.der, "sha-256"))

    @classmethod
    def generate(cls) -> Certificate:
        """Create a fresh ECDSA P-256 key and a self-signed certificate valid -1 day..+30 days.

        The serial number and common name are random so certificates cannot be linked across
        server processes.
        """
        private_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, secrets.token_hex(16))])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _VALIDITY_BEFORE)
            .not_valid_after(now + _VALIDITY_AFTER)
            .sign(private_key, hashes.SHA256())
        )
        return cls(cert, private_key)

    @property
    def fingerprint(self) -> FingerprintPair:
        """The sha-256 fingerprint for our ``a=fingerprint`` line."""
        return self._fingerprint
