"""Tests for sfu.packet.stun: RFC 5769 vectors, builders, integrity and fuzzing."""

from __future__ import annotations

import contextlib
import hashlib
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.stun import (
    BINDING,
    ERROR_CODE,
    FINGERPRINT,
    ICE_CONTROLLED,
    ICE_CONTROLLING,
    MESSAGE_INTEGRITY,
    MESSAGE_INTEGRITY_SHA256,
    NONCE,
    PRIORITY,
    REALM,
    SOFTWARE,
    UNKNOWN_ATTRIBUTES,
    USE_CANDIDATE,
    USERNAME,
    XOR_MAPPED_ADDRESS,
    StunAttribute,
    StunClass,
    StunMessage,
    binding_error,
    binding_request,
    binding_success,
    decode_address,
    decode_error_code,
    decode_xor_address,
    encode_address,
    encode_error_code,
    encode_xor_address,
    is_stun,
    long_term_key,
    verify_fingerprint,
    verify_message_integrity,
    verify_message_integrity_sha256,
)


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --------------------------------------------------------------------- RFC 5769 vectors

PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TID = _hex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")

# §2.1 Sample Request (note the USERNAME padding is three spaces, not zeros).
RFC5769_REQUEST = _hex(
    """
    00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
    00 24 00 04 6e 00 01 ff
    80 29 00 08 93 2f f9 b1 51 26 3b 36
    00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
    00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
    80 28 00 04 e5 7a 3b cf
    """
)

# §2.2 Sample IPv4 Response.
RFC5769_RESPONSE_V4 = _hex(
    """
    01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 08 00 01 a1 47 e1 12 a6 43
    00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
    80 28 00 04 c0 7d 4c 96
    """
)

# §2.3 Sample IPv6 Response.
RFC5769_RESPONSE_V6 = _hex(
    """
    01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
    80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
    00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
    00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
    80 28 00 04 c8 fb 0b 4c
    """
)

# §2.4 Sample Request with Long-Term Authentication (no FINGERPRINT).
RFC5769_LONG_TERM = _hex(
    """
    00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
    00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
    00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46
                53 54 76 79 36 34 73 41
    00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
    00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66
    """
)
LT_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"  # "matrix" in katakana
# The RFC's password is "The<U+00AD>M<U+00AA>tr<U+2168>"; SASLprep drops the soft
# hyphen and NFKC-maps the feminine ordinal to "a" and ROMAN NUMERAL NINE to "IX".
LT_PASSWORD = "TheMatrIX"
LT_REALM = "example.org"

ALL_VECTORS = [RFC5769_REQUEST, RFC5769_RESPONSE_V4, RFC5769_RESPONSE_V6, RFC5769_LONG_TERM]


@pytest.mark.parametrize("data", ALL_VECTORS)
def test_vectors_round_trip_byte_exact(data: bytes) -> None:
    assert is_stun(data)
    msg = StunMessage.parse(data)
    assert msg.serialize() == data


def test_rfc5769_sample_request() -> None:
    msg = StunMessage.parse(RFC5769_REQUEST)
    assert msg.method == BINDING
    assert msg.msg_class is StunClass.REQUEST
    assert msg.transaction_id == TID
    assert [a.type for a in msg.attributes] == [
        SOFTWARE,
        PRIORITY,
        ICE_CONTROLLED,
        USERNAME,
        MESSAGE_INTEGRITY,
        FINGERPRINT,
    ]
    assert msg.software == "STUN test client"
    assert msg.priority == 0x6E0001FF
    assert msg.ice_controlled == 0x932FF9B151263B36
    assert msg.ice_controlling is None
    assert msg.use_candidate is False
    assert msg.username == "evtj:h6vY"
    user = msg.attribute(USERNAME)
    assert user is not None and user.padding == b"   "
    assert msg.fingerprint == 0xE57A3BCF
    assert verify_message_integrity(RFC5769_REQUEST, PASSWORD)
    assert verify_fingerprint(RFC5769_REQUEST)
    # Rebuilding integrity and fingerprint with the builder reproduces the vector.
    assert msg.serialize(integrity_key=PASSWORD, fingerprint=True) == RFC5769_REQUEST


@pytest.mark.parametrize(
    ("data", "address"),
    [
        (RFC5769_RESPONSE_V4, ("192.0.2.1", 32853)),
        (RFC5769_RESPONSE_V6, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses(data: bytes, address: tuple[str, int]) -> None:
    msg = StunMessage.parse(data)
    assert msg.method == BINDING
    assert msg.msg_class is StunClass.SUCCESS
    assert msg.transaction_id == TID
    assert msg.software == "test vector"
    assert msg.xor_mapped_address == address
    assert verify_message_integrity(data, PASSWORD)
    assert verify_fingerprint(data)
    # The SOFTWARE padding is a space; the builder keeps it and reproduces the MAC.
    assert msg.serialize(integrity_key=PASSWORD, fingerprint=True) == data
    # Encoding the address afresh gives the same attribute bytes.
    rebuilt = msg.xor_mapped_address_attr(address)
    assert rebuilt == msg.attribute(XOR_MAPPED_ADDRESS)


def test_rfc5769_long_term_request() -> None:
    msg = StunMessage.parse(RFC5769_LONG_TERM)
    assert msg.transaction_id == _hex("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")
    assert msg.username == LT_USERNAME
    assert msg.nonce == b"f//499k954d6OL34oL9FSTvy64sA"
    assert msg.realm == b"example.org"
    key = long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD)
    assert key == hashlib.md5(f"{LT_USERNAME}:{LT_REALM}:{LT_PASSWORD}".encode()).digest()
    assert verify_message_integrity(RFC5769_LONG_TERM, key)
    assert not verify_message_integrity(RFC5769_LONG_TERM, PASSWORD)
    assert not verify_fingerprint(RFC5769_LONG_TERM)  # the vector has none
    assert msg.fingerprint is None
    assert msg.serialize(integrity_key=key) == RFC5769_LONG_TERM


@pytest.mark.parametrize("data", ALL_VECTORS[:3])
def test_vectors_wrong_key_fails(data: bytes) -> None:
    assert not verify_message_integrity(data, b"VOkJxbRl1RmTxUk/WvJxBu")
    assert not verify_message_integrity(data, b"")


@pytest.mark.parametrize("data", ALL_VECTORS)
def test_every_single_bit_flip_breaks_integrity(data: bytes) -> None:
    key = (
        long_term_key(LT_USERNAME, LT_REALM, LT_PASSWORD) if data is RFC5769_LONG_TERM else PASSWORD
    )
    has_fp = data is not RFC5769_LONG_TERM
    covered = len(data) - (8 if has_fp else 0)  # FINGERPRINT follows the MAC
    for i in range(covered):
        for bit in (0x01, 0x80):
            mutated = bytearray(data)
            mutated[i] ^= bit
            assert not verify_message_integrity(bytes(mutated), key), (i, bit)
            if has_fp:
                assert not verify_fingerprint(bytes(mutated)), (i, bit)


def test_fingerprint_bit_flip_in_fingerprint_itself() -> None:
    mutated = bytearray(RFC5769_REQUEST)
    mutated[-1] ^= 1
    assert not verify_fingerprint(bytes(mutated))
    # Integrity does not cover FINGERPRINT, so it still verifies (§14.5).
    assert verify_message_integrity(bytes(mutated), PASSWORD)


# --------------------------------------------------------------------- header / type bits


@pytest.mark.parametrize(
    ("method", "cls", "wire"),
    [
        (0x001, StunClass.REQUEST, 0x0001),
        (0x001, StunClass.INDICATION, 0x0011),
        (0x001, StunClass.SUCCESS, 0x0101),
        (0x001, StunClass.ERROR, 0x0111),
        (0x003, StunClass.REQUEST, 0x0003),  # TURN Allocate
        (0xFFF, StunClass.ERROR, 0x3FFF),
        (0x080, StunClass.REQUEST, 0x0200),
        (0x010, StunClass.REQUEST, 0x0020),
    ],
)
def test_message_type_bit_layout(method: int, cls: StunClass, wire: int) -> None:
    data = StunMessage(method, cls, bytes(12)).serialize()
    assert struct.unpack_from(">H", data)[0] == wire
    parsed = StunMessage.parse(data)
    assert (parsed.method, parsed.msg_class) == (method, cls)


def test_is_stun_rejects_non_stun() -> None:
    good = StunMessage(BINDING, StunClass.REQUEST, bytes(12)).serialize()
    assert is_stun(good)
    assert not is_stun(good[:19])
    assert not is_stun(b"")
    assert not is_stun(b"\x80" + good[1:])  # RTP/RTCP first byte
    assert not is_stun(b"\x16" + bytes(30))  # DTLS handshake
    bad_cookie = bytearray(good)
    bad_cookie[7] ^= 1
    assert not is_stun(bytes(bad_cookie))
    assert not is_stun(good + b"\x00\x00\x00\x00")  # length field inconsistent
    odd = bytearray(good + b"\x00\x00")
    odd[3] = 2
    assert not is_stun(bytes(odd))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(19),
        b"\x40" + RFC5769_REQUEST[1:],
        RFC5769_REQUEST[:4] + b"\x21\x12\xa4\x43" + RFC5769_REQUEST[8:],
        RFC5769_REQUEST[:-1],
        RFC5769_REQUEST + b"\x00\x00\x00\x00",
        # Length field says 4 but the attribute header claims 8 bytes of value.
        b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x08",
        # Length field 2: not a multiple of 4.
        b"\x00\x01\x00\x02\x21\x12\xa4\x42" + bytes(12) + b"\x00\x00",
        # Value fits but its padding does not.
        b"\x00\x01\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\x00\x05abcd",
    ],
)
def test_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ParseError):
        StunMessage.parse(data)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        StunMessage(BINDING, StunClass.REQUEST, bytes(11))
    with pytest.raises(ValueError):
        StunMessage(0x1000, StunClass.REQUEST, bytes(12))
    with pytest.raises(ValueError):
        StunAttribute(0x10000, b"")
    with pytest.raises(ValueError):
        StunAttribute(USERNAME, b"abc", b"\x00\x00")
    assert StunAttribute(USERNAME, b"abc", b"\x00") == StunAttribute(USERNAME, b"abc")
    big = StunAttribute(0x7777, bytes(0xFFFC - 4))
    with pytest.raises(ValueError):
        StunMessage(BINDING, StunClass.REQUEST, bytes(12), (big,)).serialize(fingerprint=True)
    assert (
        len(StunMessage(BINDING, StunClass.REQUEST, bytes(12), (big,)).serialize()) == 0xFFFC + 20
    )


# --------------------------------------------------------------------- typed attributes


def test_xor_address_codec_ipv4_ipv6() -> None:
    tid = bytes(range(12))
    for addr in [("10.0.0.1", 5000), ("::1", 1), ("fe80::1234:5678", 65535), ("0.0.0.0", 0)]:
        value = encode_xor_address(addr, tid)
        assert decode_xor_address(value, tid) == addr
        assert decode_address(encode_address(addr)) == addr
    v4 = encode_xor_address(("192.0.2.1", 32853), TID)
    assert v4 == _hex("00 01 a1 47 e1 12 a6 43")
    assert encode_address(("192.0.2.1", 32853)) == _hex("00 01 80 55 c0 00 02 01")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\x01\x00",
        b"\x00\x03\x00\x00" + bytes(4),
        b"\x00\x01\x00\x00" + bytes(16),
        b"\x00\x02\x00\x00" + bytes(4),
        b"\x00\x01\x00\x00" + bytes(5),
    ],
)
def test_address_decode_rejects_malformed(value: bytes) -> None:
    with pytest.raises(ParseError):
        decode_address(value)
    with pytest.raises(ParseError):
        decode_xor_address(value, bytes(12))


def test_address_builder_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        encode_address(("not-an-ip", 1))
    with pytest.raises(ValueError):
        encode_address(("1.2.3.4", 70000))


def test_error_code_codec() -> None:
    value = encode_error_code(487, "Role Conflict")
    assert value == b"\x00\x00\x04\x57Role Conflict"
    assert decode_error_code(value) == (487, "Role Conflict")
    assert decode_error_code(encode_error_code(300, "")) == (300, "")
    assert decode_error_code(encode_error_code(699, "é")) == (699, "é")
    for bad in (
        b"\x00\x00\x04",
        b"\x00\x00\x02\x00",
        b"\x00\x00\x07\x00",
        b"\x00\x00\x04\x64",
        b"\x00\x00\x04\x00\xff",
    ):
        with pytest.raises(ParseError):
            decode_error_code(bad)
    for code in (299, 700, -1):
        with pytest.raises(ValueError):
            encode_error_code(code, "")
    with pytest.raises(ValueError):
        encode_error_code(400, "x" * 764)


def test_accessors_reject_malformed_values() -> None:
    bad = StunMessage(
        BINDING,
        StunClass.REQUEST,
        bytes(12),
        (
            StunAttribute(PRIORITY, b"\x00\x00\x01"),
            StunAttribute(ICE_CONTROLLING, bytes(7)),
            StunAttribute(ICE_CONTROLLED, bytes(9)),
            StunAttribute(USERNAME, b"\xff\xfe"),
            StunAttribute(SOFTWARE, b"\xc3"),
            StunAttribute(FINGERPRINT, b"\x00"),
            StunAttribute(UNKNOWN_ATTRIBUTES, b"\x00"),
            StunAttribute(ERROR_CODE, b"\x00"),
            StunAttribute(XOR_MAPPED_ADDRESS, b"\x00\x09"),
        ),
    )
    parsed = StunMessage.parse(bad.serialize())
    assert parsed == bad
    for name in (
        "priority",
        "ice_controlling",
        "ice_controlled",
        "username",
        "software",
        "fingerprint",
        "unknown_attributes",
        "error_code",
        "xor_mapped_address",
    ):
        with pytest.raises(ParseError):
            getattr(parsed, name)


def test_absent_accessors_return_none() -> None:
    msg = StunMessage(BINDING, StunClass.REQUEST, bytes(12))
    assert msg.username is None
    assert msg.software is None
    assert msg.realm is None
    assert msg.nonce is None
    assert msg.priority is None
    assert msg.ice_controlling is None
    assert msg.ice_controlled is None
    assert msg.error_code is None
    assert msg.mapped_address is None
    assert msg.xor_mapped_address is None
    assert msg.unknown_attributes is None
    assert msg.message_integrity is None
    assert msg.fingerprint is None
    assert msg.use_candidate is False


def test_builders_and_accessors_agree() -> None:
    tid = b"abcdefghijkl"
    base = StunMessage(BINDING, StunClass.REQUEST, tid)
    attrs = (
        StunMessage.username_attr("remote:local"),
        StunMessage.software_attr("sfu"),
        StunMessage.realm_attr(b"example.org"),
        StunMessage.nonce_attr(b"n0nce"),
        StunMessage.priority_attr(0xFFFFFFFF),
        StunMessage.use_candidate_attr(),
        StunMessage.ice_controlling_attr(2**64 - 1),
        StunMessage.error_code_attr(401),
        StunMessage.unknown_attributes_attr([0x0031, 0x7FFF]),
        StunMessage.mapped_address_attr(("198.51.100.7", 9)),
        base.xor_mapped_address_attr(("2001:db8::1", 443)),
    )
    msg = StunMessage.parse(StunMessage(BINDING, StunClass.REQUEST, tid, attrs).serialize())
    assert msg.username == "remote:local"
    assert msg.software == "sfu"
    assert msg.realm == b"example.org"
    assert msg.nonce == b"n0nce"
    assert msg.priority == 0xFFFFFFFF
    assert msg.use_candidate is True
    assert msg.ice_controlling == 2**64 - 1
    assert msg.error_code == (401, "Unauthorized")
    assert msg.unknown_attributes == [0x0031, 0x7FFF]
    assert msg.mapped_address == ("198.51.100.7", 9)
    assert msg.xor_mapped_address == ("2001:db8::1", 443)
    assert msg.has(NONCE) and not msg.has(0x0003)
    assert msg.attributes_of(REALM) == [StunAttribute(REALM, b"example.org")]
    assert msg.unknown_comprehension_required({USERNAME, PRIORITY}) == [
        REALM,
        NONCE,
        USE_CANDIDATE,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        0x0001,
        XOR_MAPPED_ADDRESS,
    ]
    with pytest.raises(ValueError):
        StunMessage.username_attr("x" * 509)
    with pytest.raises(ValueError):
        StunMessage.software_attr("x" * 128)


def test_unknown_comprehension_required_dedups_in_order() -> None:
    msg = StunMessage(
        BINDING,
        StunClass.REQUEST,
        bytes(12),
        (
            StunAttribute(0x7001),
            StunAttribute(USERNAME, b"a:b"),
            StunAttribute(0x8001),  # comprehension-optional: never reported
            StunAttribute(0x0031),
            StunAttribute(0x7001),
        ),
    )
    assert msg.unknown_comprehension_required([USERNAME]) == [0x7001, 0x0031]
    assert msg.unknown_comprehension_required([USERNAME, 0x7001, 0x0031]) == []


# --------------------------------------------------------------------- integrity semantics


def test_attributes_after_integrity_are_ignored() -> None:
    # §14.5: anything after MESSAGE-INTEGRITY other than FINGERPRINT is not covered.
    signed = StunMessage(
        BINDING, StunClass.REQUEST, bytes(12), (StunMessage.username_attr("a:b"),)
    ).serialize(integrity_key=PASSWORD)
    msg = StunMessage.parse(signed)
    extended = StunMessage(
        msg.method,
        msg.msg_class,
        msg.transaction_id,
        (*msg.attributes, StunMessage.software_attr("appended"), StunAttribute(0x7F00, b"x")),
    ).serialize()
    assert verify_message_integrity(extended, PASSWORD)
    # Re-adding FINGERPRINT keeps the existing MI and covers the appended attributes.
    with_fp = StunMessage.parse(extended).serialize(fingerprint=True)
    assert verify_message_integrity(with_fp, PASSWORD)
    assert verify_fingerprint(with_fp)


def test_integrity_uses_first_message_integrity() -> None:
    signed = StunMessage(BINDING, StunClass.REQUEST, bytes(12)).serialize(integrity_key=b"k1")
    msg = StunMessage.parse(signed)
    bogus = StunAttribute(MESSAGE_INTEGRITY, bytes(20))
    doubled = StunMessage(msg.method, msg.msg_class, msg.transaction_id, (*msg.attributes, bogus))
    assert verify_message_integrity(doubled.serialize(), b"k1")
    first_bogus = StunMessage(msg.method, msg.msg_class, msg.transaction_id, (bogus,))
    assert not verify_message_integrity(first_bogus.serialize(), b"k1")


def test_integrity_edge_cases() -> None:
    unsigned = StunMessage(BINDING, StunClass.REQUEST, bytes(12)).serialize(fingerprint=True)
    assert not verify_message_integrity(unsigned, PASSWORD)  # absent
    short_mi = StunMessage(
        BINDING, StunClass.REQUEST, bytes(12), (StunAttribute(MESSAGE_INTEGRITY, bytes(16)),)
    ).serialize()
    assert not verify_message_integrity(short_mi, PASSWORD)
    assert not verify_message_integrity(b"garbage", PASSWORD)
    assert not verify_fingerprint(b"garbage")
    assert not verify_fingerprint(StunMessage(BINDING, StunClass.REQUEST, bytes(12)).serialize())
    # FINGERPRINT that is not last does not count.
    fp_then_more = StunMessage.parse(unsigned)
    moved = StunMessage(
        BINDING,
        StunClass.REQUEST,
        bytes(12),
        (*fp_then_more.attributes, StunAttribute(0x8030, b"")),
    ).serialize()
    assert not verify_fingerprint(moved)


def test_serialize_replaces_existing_integrity_and_fingerprint() -> None:
    first = StunMessage.parse(RFC5769_REQUEST)
    resigned = first.serialize(integrity_key=b"other", fingerprint=True)
    assert len(resigned) == len(RFC5769_REQUEST)
    assert verify_message_integrity(resigned, b"other")
    assert not verify_message_integrity(resigned, PASSWORD)
    assert verify_fingerprint(resigned)
    types = [a.type for a in StunMessage.parse(resigned).attributes]
    assert types.count(MESSAGE_INTEGRITY) == 1
    assert types[-2:] == [MESSAGE_INTEGRITY, FINGERPRINT]


def test_message_integrity_sha256() -> None:
    import hmac

    msg = StunMessage(BINDING, StunClass.REQUEST, bytes(12), (StunMessage.username_attr("u:v"),))
    base = msg.serialize()
    for size in (16, 20, 32):
        body_len = len(base) - 20 + 4 + size
        head = base[:2] + struct.pack(">H", body_len) + base[4:]
        mac = hmac.new(PASSWORD, head, hashlib.sha256).digest()[:size]
        signed = StunMessage(
            msg.method,
            msg.msg_class,
            msg.transaction_id,
            (*msg.attributes, StunAttribute(MESSAGE_INTEGRITY_SHA256, mac)),
        ).serialize(fingerprint=True)
        assert verify_message_integrity_sha256(signed, PASSWORD)
        assert not verify_message_integrity_sha256(signed, b"nope")
    truncated = StunMessage(
        BINDING, StunClass.REQUEST, bytes(12), (StunAttribute(MESSAGE_INTEGRITY_SHA256, bytes(12)),)
    ).serialize()
    assert not verify_message_integrity_sha256(truncated, PASSWORD)


# --------------------------------------------------------------------- ICE helpers


def test_ice_request_response_round_trip() -> None:
    tid = bytes.fromhex("0102030405060708090a0b0c")
    remote_pwd, local_pwd = b"remote-password-22chars", b"local-password-22chars!"
    request = binding_request(
        tid,
        "sfuu:brws",
        local_pwd,
        0x6E7F1EFF,
        controlling=True,
        tie_breaker=42,
        use_candidate=True,
    )
    assert is_stun(request)
    assert verify_message_integrity(request, local_pwd)
    assert not verify_message_integrity(request, remote_pwd)
    assert verify_fingerprint(request)
    req = StunMessage.parse(request)
    assert req.msg_class is StunClass.REQUEST and req.method == BINDING
    assert (req.username, req.priority, req.ice_controlling, req.use_candidate) == (
        "sfuu:brws",
        0x6E7F1EFF,
        42,
        True,
    )
    assert req.ice_controlled is None

    response = binding_success(req, ("203.0.113.5", 54321), local_pwd)
    assert verify_message_integrity(response, local_pwd)
    assert not verify_message_integrity(response, remote_pwd)
    assert verify_fingerprint(response)
    resp = StunMessage.parse(response)
    assert resp.msg_class is StunClass.SUCCESS
    assert resp.transaction_id == tid
    assert resp.xor_mapped_address == ("203.0.113.5", 54321)
    assert resp.software is None
    assert [a.type for a in resp.attributes] == [XOR_MAPPED_ADDRESS, MESSAGE_INTEGRITY, FINGERPRINT]

    v6 = StunMessage.parse(binding_success(req, ("2001:db8::5", 1), local_pwd, software="x"))
    assert v6.xor_mapped_address == ("2001:db8::5", 1)
    assert v6.software == "x"

    controlled = StunMessage.parse(
        binding_request(tid, "a:b", local_pwd, 1, controlling=False, tie_breaker=2**64 - 1)
    )
    assert controlled.ice_controlled == 2**64 - 1 and controlled.ice_controlling is None
    assert not controlled.use_candidate


def test_binding_errors() -> None:
    req = StunMessage.parse(RFC5769_REQUEST)
    conflict = binding_error(req, 487, key=PASSWORD)
    msg = StunMessage.parse(conflict)
    assert msg.msg_class is StunClass.ERROR
    assert msg.transaction_id == TID
    assert msg.error_code == (487, "Role Conflict")
    assert verify_message_integrity(conflict, PASSWORD)
    assert verify_fingerprint(conflict)

    unauth = binding_error(req, 401, "Unauthorized", None)
    msg = StunMessage.parse(unauth)
    assert msg.error_code == (401, "Unauthorized")
    assert msg.message_integrity is None
    assert not verify_message_integrity(unauth, PASSWORD)
    assert verify_fingerprint(unauth)

    bad = StunMessage.parse(binding_error(req, 400, "Bad Request"))
    assert bad.error_code == (400, "Bad Request")

    unknown = StunMessage.parse(binding_error(req, 420, key=PASSWORD, unknown=[0x7001, 0x0031]))
    assert unknown.error_code == (420, "Unknown Attribute")
    assert unknown.unknown_attributes == [0x7001, 0x0031]

    custom = StunMessage.parse(binding_error(req, 599, None))
    assert custom.error_code == (599, "")


# --------------------------------------------------------------------- property tests

_attr_values = st.binary(max_size=40)


@st.composite
def _attributes(draw: st.DrawFn) -> StunAttribute:
    atype = draw(st.integers(0, 0xFFFF))
    value = draw(_attr_values)
    pad = -len(value) & 3
    padding = draw(st.one_of(st.just(b""), st.binary(min_size=pad, max_size=pad)))
    return StunAttribute(atype, value, padding)


_messages = st.builds(
    StunMessage,
    method=st.integers(0, 0xFFF),
    msg_class=st.sampled_from(StunClass),
    transaction_id=st.binary(min_size=12, max_size=12),
    attributes=st.lists(_attributes(), max_size=8).map(tuple),
)


@settings(max_examples=400, deadline=None)
@given(_messages)
def test_property_object_round_trip(msg: StunMessage) -> None:
    data = msg.serialize()
    assert is_stun(data)
    parsed = StunMessage.parse(data)
    assert parsed == msg
    assert parsed.serialize() == data


@settings(max_examples=300, deadline=None)
@given(_messages, st.binary(min_size=1, max_size=32), st.booleans())
def test_property_signed_messages_verify(msg: StunMessage, key: bytes, fp: bool) -> None:
    data = msg.serialize(integrity_key=key, fingerprint=fp)
    assert verify_message_integrity(data, key)
    assert not verify_message_integrity(data, key + b"x")
    assert verify_fingerprint(data) == fp
    parsed = StunMessage.parse(data)
    assert parsed.serialize() == data
    assert parsed.serialize(integrity_key=key, fingerprint=fp) == data


@settings(max_examples=300, deadline=None)
@given(_messages, st.integers(0, 2**32 - 1), st.sampled_from([0x01, 0x10, 0x80]))
def test_property_bit_flip_breaks_verification(msg: StunMessage, where: int, bit: int) -> None:
    data = msg.serialize(integrity_key=b"key", fingerprint=True)
    pos = where % (len(data) - 8)  # anything covered by both MI and FINGERPRINT
    mutated = bytearray(data)
    mutated[pos] ^= bit
    assert not verify_fingerprint(bytes(mutated))
    assert not verify_message_integrity(bytes(mutated), b"key")


def _parse_or_parse_error(data: bytes) -> None:
    try:
        msg = StunMessage.parse(data)
    except ParseError:
        return
    assert is_stun(data)
    assert msg.serialize() == data
    for name in (
        "username",
        "software",
        "priority",
        "ice_controlling",
        "ice_controlled",
        "error_code",
        "mapped_address",
        "xor_mapped_address",
        "unknown_attributes",
        "fingerprint",
    ):
        with contextlib.suppress(ParseError):
            getattr(msg, name)
    assert isinstance(verify_message_integrity(data, b"k"), bool)
    assert isinstance(verify_fingerprint(data), bool)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    _parse_or_parse_error(data)
    assert isinstance(verify_message_integrity(data, b"k"), bool)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100))
def test_fuzz_random_bodies_behind_valid_header(body: bytes) -> None:
    body = body[: len(body) & ~3]
    data = b"\x00\x01" + struct.pack(">H", len(body)) + b"\x21\x12\xa4\x42" + bytes(12) + body
    _parse_or_parse_error(data)


@st.composite
def _mutations(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(ALL_VECTORS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif data:
            data[pos] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=500, deadline=None)
@given(_mutations())
def test_fuzz_mutated_vectors(data: bytes) -> None:
    _parse_or_parse_error(data)


@settings(max_examples=300, deadline=None)
@given(_mutations())
def test_fuzz_mutated_vectors_with_fixed_length(data: bytes) -> None:
    # Repair the length field so mutations reach the attribute walker, not just the header.
    if len(data) >= 20 and len(data) % 4 == 0:
        data = data[:2] + struct.pack(">H", len(data) - 20) + data[4:]
    _parse_or_parse_error(data)


# --------------------------------------------------------------------- bounded allocation


def _adversarial_inputs() -> list[bytes]:
    header = b"\x00\x01\xff\xfc\x21\x12\xa4\x42" + bytes(12)
    many_empty = header + b"\x00\x25\x00\x00" * (0xFFFC // 4)
    many_small = header + b"\x00\x06\x00\x02ab\x01\x01" * (0xFFFC // 8) + b"\x00\x06\x00\x00"
    huge_claim = b"\x00\x01\x00\x04\x21\x12\xa4\x42" + bytes(12) + b"\x00\x06\xff\xff"
    return [many_empty, many_small, huge_claim, RFC5769_REQUEST]


@pytest.mark.parametrize("data", _adversarial_inputs())
def test_parse_allocation_is_bounded(data: bytes) -> None:
    assert len(data) <= 0xFFFF + 20
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            msg: StunMessage | None = StunMessage.parse(data)
        except ParseError:
            msg = None
        verify_message_integrity(data, b"k")
        verify_fingerprint(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 + 64 * len(data)
    if msg is not None:
        assert msg.serialize() == data


def test_crc_constant_matches_spec() -> None:
    # §14.7 worked by hand over the §2.2 vector.
    data = RFC5769_RESPONSE_V4
    assert zlib.crc32(data[:-8]) ^ 0x5354554E == int.from_bytes(data[-4:], "big")
