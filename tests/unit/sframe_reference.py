"""The E2EE frame format of docs/e2ee.md, written from the document, independently of the JS.

Tests decrypt what the browser code produces with these functions: if both agree, the browser
code follows the document (RFC 9605 SFrame, AES_128_GCM_SHA256_128, PBKDF2 passphrase keys).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
import unicodedata
from collections import Counter

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PBKDF2_ITERATIONS = 600_000
SALT_PREFIX = b"sfu e2ee v1 passphrase salt\x00"
CIPHER_SUITE = 0x0004  # RFC 9605 AES_128_GCM_SHA256_128
VP8_KEYFRAME_START_CODE = b"\x9d\x01\x2a"


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with an empty salt (HKDF-Extract("", ikm), then Expand), SHA-256."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def base_key(passphrase: str, room: str) -> bytes:
    """PBKDF2-HMAC-SHA256 of the NFC passphrase, salted per room."""
    salt = hashlib.sha256(SALT_PREFIX + room.encode()).digest()
    secret = unicodedata.normalize("NFC", passphrase).encode()
    return hashlib.pbkdf2_hmac("sha256", secret, salt, PBKDF2_ITERATIONS, 32)


def sframe_key(base: bytes, kid: int) -> tuple[bytes, bytes]:
    """RFC 9605 §4.4.2: (sframe_key, sframe_salt) for one KID."""
    suffix = kid.to_bytes(8, "big") + CIPHER_SUITE.to_bytes(2, "big")
    return (
        _hkdf(base, b"SFrame 1.0 Secret key " + suffix, 16),
        _hkdf(base, b"SFrame 1.0 Secret salt " + suffix, 12),
    )


def parse_header(frame: bytes, at: int) -> tuple[int, int, int]:
    """(KID, CTR, header length) of the SFrame header at ``frame[at]`` (RFC 9605 §4.3)."""
    config = frame[at]
    pos = at + 1
    if config & 0x80:
        n = ((config >> 4) & 7) + 1
        kid = int.from_bytes(frame[pos : pos + n], "big")
        pos += n
    else:
        kid = (config >> 4) & 7
    if config & 0x08:
        n = (config & 7) + 1
        ctr = int.from_bytes(frame[pos : pos + n], "big")
        pos += n
    else:
        ctr = config & 7
    return kid, ctr, pos - at


def clear_bytes(frame: bytes, kind: str) -> int:
    """What stays in clear: nothing of Opus; VP8's payload header (10 bytes on keyframes)."""
    if kind == "audio" or not frame:
        return 0
    return min(len(frame), 10 if frame[0] & 1 == 0 else 3)


@dataclasses.dataclass
class Opened:
    kid: int
    ctr: int
    clear: bytes
    plaintext: bytes  # what follows the clear prefix, decrypted
    wire: bytes  # what follows the clear prefix on the wire: header, ciphertext, tag


def open_frame(frame: bytes, kind: str, bases: dict[int, bytes]) -> Opened:
    """Decrypt one frame; raises ``cryptography.exceptions.InvalidTag`` if it does not
    authenticate under ``bases[key id]``."""
    n = clear_bytes(frame, kind)
    kid, ctr, size = parse_header(frame, n)
    key, salt = sframe_key(bases[kid & 0xFF], kid)
    nonce = bytes(a ^ b for a, b in zip(salt, ctr.to_bytes(12, "big"), strict=True))
    header, clear = frame[n : n + size], frame[:n]
    plaintext = AESGCM(key).decrypt(nonce, frame[n + size :], header + clear)
    return Opened(kid, ctr, clear, plaintext, frame[n:])


def entropy_bits_per_byte(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())
