"""STUN messages (RFC 8489) with the attributes ICE (RFC 8445) needs.

Parsing is lossless: attribute order, unknown attributes and the actual padding bytes are
kept, so ``StunMessage.parse(x).serialize() == x`` for every valid ``x``. Attribute values
are stored raw and decoded lazily by typed accessors, which raise :class:`ParseError` on a
malformed value (the ICE layer turns that into a 400 Bad Request). Integrity and
fingerprint checks work on the raw datagram bytes, because that is what was signed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from sfu.packet.errors import ParseError

__all__ = [
    "ALTERNATE_SERVER",
    "BINDING",
    "ERROR_CODE",
    "FINGERPRINT",
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "ICE_CONTROLLED",
    "ICE_CONTROLLING",
    "MAGIC_COOKIE",
    "MAPPED_ADDRESS",
    "MESSAGE_INTEGRITY",
    "MESSAGE_INTEGRITY_SHA256",
    "NONCE",
    "PRIORITY",
    "REALM",
    "SOFTWARE",
    "UNKNOWN_ATTRIBUTES",
    "USERNAME",
    "USE_CANDIDATE",
    "XOR_MAPPED_ADDRESS",
    "StunAttribute",
    "StunClass",
    "StunMessage",
    "binding_error",
    "binding_request",
    "binding_success",
    "decode_address",
    "decode_error_code",
    "decode_xor_address",
    "encode_address",
    "encode_error_code",
    "encode_xor_address",
    "is_stun",
    "long_term_key",
    "verify_fingerprint",
    "verify_message_integrity",
    "verify_message_integrity_sha256",
]

HEADER_LENGTH = 20
MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
# §14.7: the CRC-32 is XORed with this so a STUN FINGERPRINT never matches a CRC that
# another protocol multiplexed on the same port happens to carry.
FINGERPRINT_XOR = 0x5354554E
_MAX_BODY = 0xFFFF

# Methods (RFC 8489 §18.2). Only Binding matters for ICE.
BINDING = 0x001

# Attribute types (RFC 8489 §18.3, RFC 8445 §16.1).
MAPPED_ADDRESS = 0x0001
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
UNKNOWN_ATTRIBUTES = 0x000A
REALM = 0x0014
NONCE = 0x0015
MESSAGE_INTEGRITY_SHA256 = 0x001C
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
USE_CANDIDATE = 0x0025
SOFTWARE = 0x8022
ALTERNATE_SERVER = 0x8023
FINGERPRINT = 0x8028
ICE_CONTROLLED = 0x8029
ICE_CONTROLLING = 0x802A

_HDR = struct.Struct(">HHI12s")
_ATTR_HDR = struct.Struct(">HH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02

_DEFAULT_REASONS = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    420: "Unknown Attribute",
    438: "Stale Nonce",
    487: "Role Conflict",
    500: "Server Error",
}


class StunClass(IntEnum):
    """The two class bits of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


def _encode_type(method: int, cls: StunClass) -> int:
    # §5: the 12 method bits M11..M0 are split around the class bits C1 (bit 8) and
    # C0 (bit 4): M11-M7 | C1 | M6-M4 | C0 | M3-M0.
    c = int(cls)
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((c & 0b01) << 4)
        | ((c & 0b10) << 7)
    )


def _decode_type(msg_type: int) -> tuple[int, StunClass]:
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = ((msg_type & 0x0010) >> 4) | ((msg_type & 0x0100) >> 7)
    return method, StunClass(cls)


def _pad_len(n: int) -> int:
    return -n & 3


@dataclass(frozen=True, slots=True)
class StunAttribute:
    """One TLV attribute with its raw value.

    ``padding`` holds the bytes that followed the value up to the next 4-byte boundary
    (§14: their content is arbitrary and must be ignored, but some stacks send spaces, as
    in RFC 5769). Empty means zeros; all-zero padding is normalised to empty so that
    equality does not depend on how an attribute was obtained.
    """

    type: int
    value: bytes = b""
    padding: bytes = b""

    def __post_init__(self) -> None:
        if not 0 <= self.type <= 0xFFFF:
            raise ValueError(f"attribute type out of range: {self.type}")
        if len(self.value) > _MAX_BODY:
            raise ValueError("attribute value longer than 65535 bytes")
        if self.padding:
            if len(self.padding) != _pad_len(len(self.value)):
                raise ValueError("padding must fill the value to a 4-byte boundary")
            if not any(self.padding):
                object.__setattr__(self, "padding", b"")

    @property
    def comprehension_required(self) -> bool:
        """True for types 0x0000-0x7FFF, which an agent must understand (§14)."""
        return self.type < 0x8000

    def wire_length(self) -> int:
        """Bytes this attribute occupies on the wire: header, value and padding."""
        return 4 + len(self.value) + _pad_len(len(self.value))

    def _write(self, out: bytearray) -> None:
        out += _ATTR_HDR.pack(self.type, len(self.value))
        out += self.value
        pad = _pad_len(len(self.value))
        if pad:
            out += self.padding or bytes(pad)


def _iter_attributes(data: bytes) -> Iterator[tuple[int, int, int]]:
    """Yield ``(type, value_offset, value_length)`` for each attribute of a STUN message.

    The caller must have checked the header; this validates only the TLV framing.
    """
    end = len(data)
    off = HEADER_LENGTH
    while off < end:
        if end - off < 4:
            raise ParseError("truncated STUN attribute header")
        atype, alen = _ATTR_HDR.unpack_from(data, off)
        voff = off + 4
        nxt = voff + alen + _pad_len(alen)
        if nxt > end:
            raise ParseError("STUN attribute overruns the message")
        yield atype, voff, alen
        off = nxt


def _check_header(data: bytes) -> None:
    if len(data) < HEADER_LENGTH:
        raise ParseError("STUN message shorter than its 20-byte header")
    if data[0] & 0xC0:
        raise ParseError("STUN message must start with two zero bits")
    if data[4:8] != _COOKIE_BYTES:
        raise ParseError("bad STUN magic cookie")
    length = (data[2] << 8) | data[3]
    if length & 3:
        raise ParseError("STUN message length is not a multiple of 4")
    if length + HEADER_LENGTH != len(data):
        raise ParseError("STUN message length does not match the datagram size")


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 7983 §7, RFC 8489 §6): header shape and cookie only."""
    return (
        len(data) >= HEADER_LENGTH
        and not data[0] & 0xC0
        and data[4:8] == _COOKIE_BYTES
        and not data[3] & 3
        and ((data[2] << 8) | data[3]) + HEADER_LENGTH == len(data)
    )


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A STUN message: method, class, 96-bit transaction id and ordered attributes."""

    method: int
    msg_class: StunClass
    transaction_id: bytes
    attributes: tuple[StunAttribute, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.method <= 0xFFF:
            raise ValueError(f"STUN method out of range: {self.method}")
        if len(self.transaction_id) != 12:
            raise ValueError("STUN transaction id must be 12 bytes")

    # ----------------------------------------------------------------- wire format

    @classmethod
    def parse(cls, data: bytes) -> StunMessage:
        """Parse one whole datagram; raise :class:`ParseError` if it is not valid STUN."""
        data = bytes(data)
        _check_header(data)
        msg_type, _, _, tid = _HDR.unpack_from(data)
        method, msg_class = _decode_type(msg_type)
        attrs: list[StunAttribute] = []
        for atype, voff, alen in _iter_attributes(data):
            vend = voff + alen
            pad = _pad_len(alen)
            padding = data[vend : vend + pad] if pad and any(data[vend : vend + pad]) else b""
            attrs.append(StunAttribute(atype, data[voff:vend], padding))
        return cls(method, msg_class, tid, tuple(attrs))

    def serialize(self, integrity_key: bytes | None = None, fingerprint: bool = False) -> bytes:
        """Encode the message, optionally appending MESSAGE-INTEGRITY and FINGERPRINT.

        With ``integrity_key`` any existing MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT
        attributes are dropped and a fresh HMAC-SHA1 (§14.5) is appended; with
        ``fingerprint`` any existing FINGERPRINT is dropped and a new one (§14.7) is
        appended last. With neither, attributes are written exactly as held.
        """
        attrs: Iterable[StunAttribute] = self.attributes
        if integrity_key is not None:
            drop = {MESSAGE_INTEGRITY, MESSAGE_INTEGRITY_SHA256, FINGERPRINT}
            attrs = [a for a in attrs if a.type not in drop]
        elif fingerprint:
            attrs = [a for a in attrs if a.type != FINGERPRINT]
        body = bytearray()
        for attr in attrs:
            attr._write(body)
        msg_type = _encode_type(self.method, self.msg_class)
        extra = (24 if integrity_key is not None else 0) + (8 if fingerprint else 0)
        if len(body) + extra > _MAX_BODY:
            raise ValueError("STUN message body longer than 65535 bytes")
        if integrity_key is not None:
            # §14.5: the HMAC covers everything before the attribute, with the header
            # length already counting the MESSAGE-INTEGRITY attribute itself.
            head = _HDR.pack(msg_type, len(body) + 24, MAGIC_COOKIE, self.transaction_id)
            mac = hmac.new(integrity_key, head + body, hashlib.sha1).digest()
            body += _ATTR_HDR.pack(MESSAGE_INTEGRITY, 20)
            body += mac
        if fingerprint:
            # §14.7: CRC-32 over everything before FINGERPRINT, length including it.
            head = _HDR.pack(msg_type, len(body) + 8, MAGIC_COOKIE, self.transaction_id)
            crc = zlib.crc32(body, zlib.crc32(head)) ^ FINGERPRINT_XOR
            body += _ATTR_HDR.pack(FINGERPRINT, 4)
            body += _U32.pack(crc)
        head = _HDR.pack(msg_type, len(body), MAGIC_COOKIE, self.transaction_id)
        return head + bytes(body)

    # ----------------------------------------------------------------- lookup

    def attribute(self, attr_type: int) -> StunAttribute | None:
        """Return the first attribute of ``attr_type``, or None."""
        for attr in self.attributes:
            if attr.type == attr_type:
                return attr
        return None

    def attributes_of(self, attr_type: int) -> list[StunAttribute]:
        """Return every attribute of ``attr_type`` in message order."""
        return [a for a in self.attributes if a.type == attr_type]

    def has(self, attr_type: int) -> bool:
        """True if an attribute of ``attr_type`` is present."""
        return self.attribute(attr_type) is not None

    def _value(self, attr_type: int) -> bytes | None:
        attr = self.attribute(attr_type)
        return None if attr is None else attr.value

    def unknown_comprehension_required(self, known: Iterable[int]) -> list[int]:
        """Comprehension-required types not in ``known``, for a 420 response (§6.3.1)."""
        skip = set(known)
        out: list[int] = []
        for attr in self.attributes:
            if attr.comprehension_required and attr.type not in skip:
                skip.add(attr.type)
                out.append(attr.type)
        return out

    # ----------------------------------------------------------------- typed accessors

    @property
    def username(self) -> str | None:
        """USERNAME (§14.3) decoded as UTF-8; for ICE this is ``"<remote>:<local>"``."""
        return _utf8(self._value(USERNAME), "USERNAME")

    @property
    def software(self) -> str | None:
        """SOFTWARE (§14.14) decoded as UTF-8."""
        return _utf8(self._value(SOFTWARE), "SOFTWARE")

    @property
    def realm(self) -> bytes | None:
        """REALM (§14.9) raw."""
        return self._value(REALM)

    @property
    def nonce(self) -> bytes | None:
        """NONCE (§14.10) raw."""
        return self._value(NONCE)

    @property
    def priority(self) -> int | None:
        """ICE PRIORITY (RFC 8445 §7.1.1): 32-bit unsigned."""
        return _uint(self._value(PRIORITY), _U32, "PRIORITY")

    @property
    def use_candidate(self) -> bool:
        """True if the USE-CANDIDATE flag attribute (RFC 8445 §7.1.2) is present."""
        return self.has(USE_CANDIDATE)

    @property
    def ice_controlling(self) -> int | None:
        """ICE-CONTROLLING tie breaker (RFC 8445 §7.1.3): 64-bit unsigned."""
        return _uint(self._value(ICE_CONTROLLING), _U64, "ICE-CONTROLLING")

    @property
    def ice_controlled(self) -> int | None:
        """ICE-CONTROLLED tie breaker (RFC 8445 §7.1.3): 64-bit unsigned."""
        return _uint(self._value(ICE_CONTROLLED), _U64, "ICE-CONTROLLED")

    @property
    def error_code(self) -> tuple[int, str] | None:
        """ERROR-CODE (§14.8) as ``(code, reason)``, e.g. ``(487, "Role Conflict")``."""
        value = self._value(ERROR_CODE)
        return None if value is None else decode_error_code(value)

    @property
    def mapped_address(self) -> tuple[str, int] | None:
        """MAPPED-ADDRESS (§14.1) as ``(host, port)``."""
        value = self._value(MAPPED_ADDRESS)
        return None if value is None else decode_address(value)

    @property
    def xor_mapped_address(self) -> tuple[str, int] | None:
        """XOR-MAPPED-ADDRESS (§14.2) as ``(host, port)``, un-XORed."""
        value = self._value(XOR_MAPPED_ADDRESS)
        return None if value is None else decode_xor_address(value, self.transaction_id)

    @property
    def unknown_attributes(self) -> list[int] | None:
        """UNKNOWN-ATTRIBUTES (§14.13) as a list of attribute types."""
        value = self._value(UNKNOWN_ATTRIBUTES)
        if value is None:
            return None
        if len(value) & 1:
            raise ParseError("UNKNOWN-ATTRIBUTES length is odd")
        return [v for (v,) in _U16.iter_unpack(value)]

    @property
    def message_integrity(self) -> bytes | None:
        """Raw 20-byte MESSAGE-INTEGRITY value; verify with :func:`verify_message_integrity`."""
        return self._value(MESSAGE_INTEGRITY)

    @property
    def fingerprint(self) -> int | None:
        """FINGERPRINT value; verify with :func:`verify_fingerprint`."""
        return _uint(self._value(FINGERPRINT), _U32, "FINGERPRINT")

    # ----------------------------------------------------------------- attribute builders

    @staticmethod
    def username_attr(username: str) -> StunAttribute:
        """Build USERNAME; §14.3 limits it to fewer than 509 bytes of UTF-8."""
        raw = username.encode("utf-8")
        if len(raw) >= 509:
            raise ValueError("USERNAME must be shorter than 509 bytes")
        return StunAttribute(USERNAME, raw)

    @staticmethod
    def software_attr(software: str) -> StunAttribute:
        """Build SOFTWARE; §14.14 limits it to fewer than 128 characters."""
        if len(software) >= 128:
            raise ValueError("SOFTWARE must be shorter than 128 characters")
        return StunAttribute(SOFTWARE, software.encode("utf-8"))

    @staticmethod
    def realm_attr(realm: bytes) -> StunAttribute:
        """Build REALM from its raw (already SASLprep'd, UTF-8) bytes."""
        return StunAttribute(REALM, realm)

    @staticmethod
    def nonce_attr(nonce: bytes) -> StunAttribute:
        """Build NONCE from raw bytes."""
        return StunAttribute(NONCE, nonce)

    @staticmethod
    def priority_attr(priority: int) -> StunAttribute:
        """Build PRIORITY (RFC 8445 §7.1.1)."""
        return StunAttribute(PRIORITY, _U32.pack(priority))

    @staticmethod
    def use_candidate_attr() -> StunAttribute:
        """Build the empty USE-CANDIDATE flag (RFC 8445 §7.1.2)."""
        return StunAttribute(USE_CANDIDATE)

    @staticmethod
    def ice_controlling_attr(tie_breaker: int) -> StunAttribute:
        """Build ICE-CONTROLLING with a 64-bit tie breaker."""
        return StunAttribute(ICE_CONTROLLING, _U64.pack(tie_breaker))

    @staticmethod
    def ice_controlled_attr(tie_breaker: int) -> StunAttribute:
        """Build ICE-CONTROLLED with a 64-bit tie breaker."""
        return StunAttribute(ICE_CONTROLLED, _U64.pack(tie_breaker))

    @staticmethod
    def error_code_attr(code: int, reason: str | None = None) -> StunAttribute:
        """Build ERROR-CODE; ``reason`` defaults to the RFC's suggested phrase."""
        if reason is None:
            reason = _DEFAULT_REASONS.get(code, "")
        return StunAttribute(ERROR_CODE, encode_error_code(code, reason))

    @staticmethod
    def unknown_attributes_attr(types: Iterable[int]) -> StunAttribute:
        """Build UNKNOWN-ATTRIBUTES listing the given 16-bit types."""
        return StunAttribute(UNKNOWN_ATTRIBUTES, b"".join(_U16.pack(t) for t in types))

    @staticmethod
    def mapped_address_attr(address: tuple[str, int]) -> StunAttribute:
        """Build MAPPED-ADDRESS (only for RFC 3489 peers; ICE uses XOR-MAPPED-ADDRESS)."""
        return StunAttribute(MAPPED_ADDRESS, encode_address(address))

    def xor_mapped_address_attr(self, address: tuple[str, int]) -> StunAttribute:
        """Build XOR-MAPPED-ADDRESS keyed on this message's transaction id."""
        return StunAttribute(XOR_MAPPED_ADDRESS, encode_xor_address(address, self.transaction_id))


def _utf8(value: bytes | None, name: str) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(f"{name} is not valid UTF-8") from None


def _uint(value: bytes | None, fmt: struct.Struct, name: str) -> int | None:
    if value is None:
        return None
    if len(value) != fmt.size:
        raise ParseError(f"{name} must be {fmt.size} bytes, got {len(value)}")
    result: int = fmt.unpack(value)[0]
    return result


# --------------------------------------------------------------------- address codecs


def _pack_address(address: tuple[str, int], xor_key: bytes | None, port_xor: int) -> bytes:
    host, port = address
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port out of range: {port}")
    ip = ipaddress.ip_address(host)
    packed = ip.packed
    if xor_key is not None:
        packed = bytes(a ^ b for a, b in zip(packed, xor_key, strict=False))
    family = _FAMILY_IPV4 if ip.version == 4 else _FAMILY_IPV6
    return bytes((0, family)) + _U16.pack(port ^ port_xor) + packed


def _unpack_address(value: bytes, xor_key: bytes | None, port_xor: int) -> tuple[str, int]:
    if len(value) < 4:
        raise ParseError("address attribute too short")
    family = value[1]
    if family == _FAMILY_IPV4:
        size = 4
    elif family == _FAMILY_IPV6:
        size = 16
    else:
        raise ParseError(f"unknown address family {family:#x}")
    if len(value) != 4 + size:
        raise ParseError("address attribute length does not match its family")
    port = _U16.unpack_from(value, 2)[0] ^ port_xor
    packed = value[4:]
    if xor_key is not None:
        packed = bytes(a ^ b for a, b in zip(packed, xor_key, strict=False))
    return str(ipaddress.ip_address(packed)), port


def encode_address(address: tuple[str, int]) -> bytes:
    """Encode a MAPPED-ADDRESS style value (§14.1)."""
    return _pack_address(address, None, 0)


def decode_address(value: bytes) -> tuple[str, int]:
    """Decode a MAPPED-ADDRESS style value (§14.1)."""
    return _unpack_address(value, None, 0)


def encode_xor_address(address: tuple[str, int], transaction_id: bytes) -> bytes:
    """Encode an XOR-MAPPED-ADDRESS value (§14.2).

    The port is XORed with the top 16 bits of the cookie; the address with the cookie
    (IPv4) or cookie followed by the transaction id (IPv6). NATs that rewrite addresses
    found in payloads therefore leave it alone.
    """
    return _pack_address(address, _COOKIE_BYTES + transaction_id, MAGIC_COOKIE >> 16)


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """Decode an XOR-MAPPED-ADDRESS value (§14.2)."""
    return _unpack_address(value, _COOKIE_BYTES + transaction_id, MAGIC_COOKIE >> 16)


def encode_error_code(code: int, reason: str) -> bytes:
    """Encode an ERROR-CODE value (§14.8): 21 zero bits, 3-bit class, 8-bit number, reason."""
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error code out of range: {code}")
    raw = reason.encode("utf-8")
    if len(raw) > 763:
        raise ValueError("ERROR-CODE reason longer than 763 bytes")
    return bytes((0, 0, code // 100, code % 100)) + raw


def decode_error_code(value: bytes) -> tuple[int, str]:
    """Decode an ERROR-CODE value into ``(code, reason)``."""
    if len(value) < 4:
        raise ParseError("ERROR-CODE shorter than 4 bytes")
    cls = value[2] & 0x07
    number = value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise ParseError(f"invalid ERROR-CODE class {cls} / number {number}")
    try:
        reason = value[4:].decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("ERROR-CODE reason is not valid UTF-8") from None
    return cls * 100 + number, reason


# --------------------------------------------------------------------- integrity


def _find_attribute(data: bytes, attr_type: int) -> tuple[int, int] | None:
    """Return ``(attr_offset, value_length)`` of the first ``attr_type``; None if absent."""
    for atype, voff, alen in _iter_attributes(data):
        if atype == attr_type:
            return voff - 4, alen
    return None


def _verify_hmac(data: bytes, key: bytes, attr_type: int, digest: str, sizes: range) -> bool:
    try:
        _check_header(data)
        found = _find_attribute(data, attr_type)
    except ParseError:
        return False
    if found is None:
        return False
    off, alen = found
    if alen not in sizes:
        return False
    # §14.5/§14.6: HMAC over the bytes before the attribute with the header length set
    # to end right after it; whatever follows (FINGERPRINT, or anything else, which the
    # receiver must ignore) is excluded.
    head = data[0:2] + _U16.pack(off + 4 + alen - HEADER_LENGTH) + data[4:HEADER_LENGTH]
    mac = hmac.new(key, head + data[HEADER_LENGTH:off], digest).digest()
    return hmac.compare_digest(mac[:alen], data[off + 4 : off + 4 + alen])


def verify_message_integrity(data: bytes, key: bytes) -> bool:
    """Check the first MESSAGE-INTEGRITY (HMAC-SHA1, §14.5) of a raw message.

    ``key`` is the ICE password for short-term credentials (§9.1.1) or
    :func:`long_term_key` for long-term ones. False if absent, malformed or wrong.
    """
    return _verify_hmac(bytes(data), key, MESSAGE_INTEGRITY, "sha1", range(20, 21))


def verify_message_integrity_sha256(data: bytes, key: bytes) -> bool:
    """Check MESSAGE-INTEGRITY-SHA256 (§14.6): HMAC-SHA256 truncated to 16..32 bytes."""
    return _verify_hmac(bytes(data), key, MESSAGE_INTEGRITY_SHA256, "sha256", range(16, 33, 4))


def verify_fingerprint(data: bytes) -> bool:
    """Check that the last attribute is a correct FINGERPRINT (§14.7)."""
    data = bytes(data)
    try:
        _check_header(data)
        last: tuple[int, int, int] | None = None
        for item in _iter_attributes(data):  # walk the framing; only the last one matters
            last = item
    except ParseError:
        return False
    if last is None or last[0] != FINGERPRINT or last[2] != 4:
        return False
    expected = (zlib.crc32(data[:-8]) ^ FINGERPRINT_XOR).to_bytes(4, "big")
    return hmac.compare_digest(expected, data[-4:])


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key (§9.2.2): MD5("username:realm:password").

    The inputs must already be SASLprep'd / OpaqueString-prepared; this does not do it.
    """
    text = f"{username}:{realm}:{password}".encode()
    return hashlib.md5(text, usedforsecurity=False).digest()


# --------------------------------------------------------------------- ICE helpers


def binding_request(
    transaction_id: bytes,
    username: str,
    key: bytes,
    priority: int,
    *,
    controlling: bool,
    tie_breaker: int,
    use_candidate: bool = False,
) -> bytes:
    """Build an ICE connectivity check (RFC 8445 §7.1) with integrity and fingerprint."""
    attrs = [
        StunMessage.username_attr(username),
        StunMessage.priority_attr(priority),
        StunMessage.ice_controlling_attr(tie_breaker)
        if controlling
        else StunMessage.ice_controlled_attr(tie_breaker),
    ]
    if use_candidate:
        attrs.append(StunMessage.use_candidate_attr())
    msg = StunMessage(BINDING, StunClass.REQUEST, transaction_id, tuple(attrs))
    return msg.serialize(integrity_key=key, fingerprint=True)


def binding_success(
    request: StunMessage,
    mapped_address: tuple[str, int],
    key: bytes,
    *,
    software: str | None = None,
) -> bytes:
    """Build a Binding success response (RFC 8445 §7.3.1.3).

    Carries XOR-MAPPED-ADDRESS, MESSAGE-INTEGRITY (keyed with the local ICE password)
    and FINGERPRINT; SOFTWARE only if asked, since it leaks implementation details.
    """
    attrs = []
    if software is not None:
        attrs.append(StunMessage.software_attr(software))
    attrs.append(request.xor_mapped_address_attr(mapped_address))
    msg = StunMessage(request.method, StunClass.SUCCESS, request.transaction_id, tuple(attrs))
    return msg.serialize(integrity_key=key, fingerprint=True)


def binding_error(
    request: StunMessage,
    code: int,
    reason: str | None = None,
    key: bytes | None = None,
    *,
    unknown: Iterable[int] = (),
) -> bytes:
    """Build an error response such as 400, 401, 420 or 487 (RFC 8445 §7.3.1.1).

    Pass ``key=None`` when the request could not be authenticated (400/401, §9.1.3):
    the response then has no MESSAGE-INTEGRITY. FINGERPRINT is always added, as ICE
    requires. ``unknown`` fills UNKNOWN-ATTRIBUTES for a 420.
    """
    attrs = [StunMessage.error_code_attr(code, reason)]
    unknown_list = list(unknown)
    if unknown_list:
        attrs.append(StunMessage.unknown_attributes_attr(unknown_list))
    msg = StunMessage(request.method, StunClass.ERROR, request.transaction_id, tuple(attrs))
    return msg.serialize(integrity_key=key, fingerprint=True)
