"""The cluster CA and node certificates of the QUIC node links (sfu cluster-ca, sfu node-cert).

A cluster has one CA (an ECDSA P-256 key kept offline by the operator); each node holds a
certificate it signed, naming the node id as its DNS subjectAltName, usable for both TLS
server and client authentication, since every link is mutually authenticated. The same can
be done with openssl (docs/deployment.md shows the commands).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_DAYS", "NODE_DAYS", "mint_ca", "mint_node_cert", "write_pem"]

#: Validity of a cluster CA (years: it is replaced by re-minting every node's certificate).
CA_DAYS: Final = 3650
#: Validity of a node certificate: a year, so a leaked node key does not last for ever.
NODE_DAYS: Final = 365
#: Certificates start this long before "now", for clocks of nodes a little behind.
_BACKDATE: Final = datetime.timedelta(minutes=5)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def mint_ca(name: str = "sfu cluster CA", *, days: int = CA_DAYS) -> tuple[bytes, bytes]:
    """A new self-signed cluster CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def mint_node_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, node_id: str, *, days: int = NODE_DAYS
) -> tuple[bytes, bytes]:
    """A certificate for node ``node_id`` signed by the cluster CA: (certificate, key) PEM."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key must be an ECDSA key (sfu cluster-ca mints one)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_id)]), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def write_pem(path: str | os.PathLike[str], data: bytes, *, private: bool) -> None:
    """Write a PEM file; a private key is created mode 0600 and never overwritten."""
    target = Path(path)
    if private:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    else:
        target.write_bytes(data)
