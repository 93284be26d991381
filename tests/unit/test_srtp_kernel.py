"""The SRTP kernel: RFC vectors, byte-identity with libsrtp (pylibsrtp), and compiled == reference.

Every contract test runs against the pure-Python reference and, when it is built and the run
does not set SFU_NO_EXTENSIONS=1, against the compiled kernel too.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_selection import EXPECT_COMPILED, NO_EXTENSIONS, load_compiled

import sfu._fastpath
from sfu._fastpath import _srtp_py, _srtp_shared
from sfu._fastpath._srtp_shared import SrtpError
from sfu.core.kernels import Kernels


@pytest.fixture(scope="module")
def srtp_c() -> ModuleType:
    """The compiled module (skipped or failed as the run's kernel selection says)."""
    return load_compiled("sfu._fastpath._srtp")


@pytest.fixture(scope="module", params=["python", "cython"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each module in turn: the reference, then the compiled one."""
    return _srtp_py if request.param == "python" else request.getfixturevalue("srtp_c")


CM = "SRTP_AES128_CM_SHA1_80"
GCM = "SRTP_AEAD_AES_128_GCM"
PROFILES = [CM, GCM]
SALT_LEN = {CM: 14, GCM: 12}
TAG = {CM: 10, GCM: 16}
LIBSRTP_PROFILE = {
    CM: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}

KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
SALT = {
    CM: bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacad"),
    GCM: bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babb"),
}


def context(impl: ModuleType, profile: str, *, outbound: bool, **kwargs: Any) -> Any:
    return impl.SrtpContext(profile, KEY, SALT[profile], outbound=outbound, **kwargs)


def libsrtp(profile: str, *, outbound: bool, key: bytes = KEY) -> pylibsrtp.Session:
    """libsrtp configured like our contexts: repeats allowed outbound, 128-packet windows."""
    policy = pylibsrtp.Policy(
        key=key + SALT[profile],
        ssrc_type=(
            pylibsrtp.Policy.SSRC_ANY_OUTBOUND if outbound else pylibsrtp.Policy.SSRC_ANY_INBOUND
        ),
        srtp_profile=LIBSRTP_PROFILE[profile],
    )
    policy.allow_repeat_tx = outbound
    return pylibsrtp.Session(policy=policy)


# pylibsrtp (libsrtp srtp_err_status_t) messages -> our reasons, as sfu.transport.srtp maps them.
_LIBSRTP_REASONS = {
    "authentication failure": "auth",
    "cipher failure": "auth",
    "replay check failed (bad index)": "replay",
    "replay check failed (index too old)": "replay",
}


def outcome(call: Callable[[bytes], bytes], packet: bytes) -> bytes | str:
    """The output bytes, or the failure reason (libsrtp's errors mapped to ours)."""
    try:
        return bytes(call(packet))
    except SrtpError as exc:
        return exc.reason
    except (pylibsrtp.Error, ValueError) as exc:
        return _LIBSRTP_REASONS.get(str(exc), "malformed")


def rtp(
    seq: int,
    *,
    ssrc: int = 0x11223344,
    payload: bytes = b"\xab" * 160,
    csrcs: tuple[int, ...] = (),
    ext: bytes | None = None,
    ts: int = 0,
    marker: bool = False,
) -> bytes:
    b0 = 0x80 | (0x10 if ext is not None else 0) | len(csrcs)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | 96, seq & 0xFFFF, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    return out + payload


def rtcp(ssrc: int = 0x11223344, body: bytes = bytes(20)) -> bytes:
    return struct.pack("!BBHI", 0x80, 200, (len(body) + 4) // 4, ssrc) + body


# ---------------------------------------------------------------------------------------------
# Selection


def test_selected_srtp_implementation_matches_environment(kernels: Kernels) -> None:
    """The selector exposes the compiled kernel exactly when the rewrite kernel is compiled,
    and the run's kernel bundle is of the same kind."""
    if NO_EXTENSIONS:
        assert sfu._fastpath.SrtpContext is _srtp_py.SrtpContext
        assert sfu._fastpath.derive_key is _srtp_py.derive_key
    elif EXPECT_COMPILED:
        assert sfu._fastpath.SrtpContext is load_compiled("sfu._fastpath._srtp").SrtpContext
    selected = "python" if sfu._fastpath.SrtpContext is _srtp_py.SrtpContext else "cython"
    assert selected == sfu._fastpath.IMPLEMENTATION == kernels.name
    assert sfu._fastpath.SrtpError is SrtpError


# ---------------------------------------------------------------------------------------------
# RFC test vectors

# RFC 3711 Appendix B.3 (key derivation, kdr = 0); the SRTCP labels 3-5 as published alongside.
B3_MASTER_KEY = bytes.fromhex("E1F97A0D3E018BE0D64FA32C06DE4139")
B3_MASTER_SALT = bytes.fromhex("0EC675AD498AFEEBB6960B3AABE6")
B3_DERIVED = [
    (0, 16, "C61E7A93744F39EE10734AFE3FF7A087"),  # SRTP cipher key
    (1, 20, "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4"),  # SRTP auth key (first 160 bits)
    (2, 14, "30CBBC08863D8C85D49DB34A9AE1"),  # SRTP salt
    (3, 16, "4C1AA45A81F73D61C800BBB00FBB1EAA"),  # SRTCP cipher key
    (4, 20, "8D54534FEB49AE8E7993A6BD0B844FC323A93DFD"),  # SRTCP auth key
    (5, 14, "9581C7AD87B3E530BF3E4454A8B3"),  # SRTCP salt
]


@pytest.mark.parametrize("label,length,expected", B3_DERIVED)
def test_rfc3711_b3_key_derivation(
    impl: ModuleType, label: int, length: int, expected: str
) -> None:
    assert impl.derive_key(B3_MASTER_KEY, B3_MASTER_SALT, label, length).hex() == expected.lower()


def test_rfc3711_b3_master_keys_protect_like_libsrtp(impl: ModuleType) -> None:
    ours = impl.SrtpContext(CM, B3_MASTER_KEY, B3_MASTER_SALT, outbound=True)
    policy = pylibsrtp.Policy(
        key=B3_MASTER_KEY + B3_MASTER_SALT,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=LIBSRTP_PROFILE[CM],
    )
    reference = pylibsrtp.Session(policy=policy)
    for seq in (1, 2, 3):
        assert ours.protect_rtp(rtp(seq)) == reference.protect(rtp(seq))


def test_rfc3711_b2_aes_cm_keystream(impl: ModuleType) -> None:
    """SSRC 0, index 0: the IV is the shifted salt and the ciphertext of zeros is the keystream."""
    key = bytes.fromhex("2B7E151628AED2A6ABF7158809CF4F3C")
    salt = bytes.fromhex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD")
    keys = (key, salt, bytes(20))
    ctx = impl.SrtpContext.from_session_keys(CM, keys, keys, outbound=True)
    protected = ctx.protect_rtp(rtp(0, ssrc=0, payload=bytes(48)))
    assert protected[12:60].hex() == (
        "e03ead0935c95e80e166b16dd92b4eb4"
        "d23513162b02d0f72a43a2fe4a5f97ab"
        "41e95b3bb0a2e8dd477901e4fca894c0"
    )


# RFC 7714 §16 and §17 (session keys given directly; salt "Quid pro quo").
V7714_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
V7714_SALT = bytes.fromhex("517569642070726f2071756f")
V7714_RTP = bytes.fromhex(
    "8040f17b8041f8d35501a0b2"
    "47616c6c696120657374206f6d6e69732064697669736120696e207061727465732074726573"
)
V7714_SRTP = bytes.fromhex(
    "8040f17b8041f8d35501a0b2"
    "f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a51c7d19b36de3adf8833"
    "899d7f27beb16a9152cf765ee4390cce"
)
# §17: the packet the subsections encrypt (SSRC "Mars"), at SRTCP index 0x5d4.
V7714_RTCP = bytes.fromhex(
    "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61"
    "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef"
)
V7714_SRTCP = bytes.fromhex(
    "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6f"
    "da4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4"
)


def gcm_vector_context(impl: ModuleType, *, outbound: bool) -> Any:
    keys = (V7714_KEY, V7714_SALT, b"")
    return impl.SrtpContext.from_session_keys(GCM, keys, keys, outbound=outbound)


def test_rfc7714_16_1_srtp_gcm(impl: ModuleType) -> None:
    assert gcm_vector_context(impl, outbound=True).protect_rtp(V7714_RTP) == V7714_SRTP
    assert gcm_vector_context(impl, outbound=False).unprotect_rtp(V7714_SRTP) == V7714_RTP


def test_rfc7714_17_1_srtcp_gcm(impl: ModuleType) -> None:
    assert gcm_vector_context(impl, outbound=False).unprotect_rtcp(V7714_SRTCP) == V7714_RTCP
    sender = gcm_vector_context(impl, outbound=True)
    for _ in range(0x5D4 - 1):  # a sender's SRTCP index counts from 1
        sender.protect_rtcp(V7714_RTCP)
    assert sender.protect_rtcp(V7714_RTCP) == V7714_SRTCP


def test_rfc7714_17_3_unencrypted_srtcp(impl: ModuleType) -> None:
    """§17.3 authenticates SRTCP without encrypting it (E = 0): accepted with GCM, as libsrtp
    does; with AES-CM libsrtp's encrypting policy refuses E = 0 and so do we."""
    tag_only = bytes.fromhex(V7714_RTCP.hex() + "841dd9683dd78ec92ae58790125f62b3000005d4")
    assert gcm_vector_context(impl, outbound=False).unprotect_rtcp(tag_only) == V7714_RTCP
    forged = bytearray(tag_only)
    forged[20] ^= 1
    with pytest.raises(SrtpError) as info:
        gcm_vector_context(impl, outbound=False).unprotect_rtcp(bytes(forged))
    assert info.value.reason == "auth"
    srtcp = bytearray(context(impl, CM, outbound=True).protect_rtcp(rtcp()))
    srtcp[-TAG[CM] - 4] &= 0x7F
    rx = context(impl, CM, outbound=False)
    with pytest.raises(SrtpError) as info:
        rx.unprotect_rtcp(bytes(srtcp))
    assert info.value.reason == "malformed"
    assert outcome(libsrtp(CM, outbound=False).unprotect_rtcp, bytes(srtcp)) == "malformed"


# ---------------------------------------------------------------------------------------------
# Behaviour, against libsrtp where it has an opinion


@pytest.mark.parametrize("profile", PROFILES)
def test_rtp_and_rtcp_match_libsrtp_both_ways(impl: ModuleType, profile: str) -> None:
    ours_tx, ours_rx = context(impl, profile, outbound=True), context(impl, profile, outbound=False)
    lib_tx, lib_rx = libsrtp(profile, outbound=True), libsrtp(profile, outbound=False)
    ext = bytes([0x10, 0xAA, 0x21, 0xBB, 0xCC, 0, 0, 0])
    for seq in range(1000, 1030):
        packet = rtp(
            seq,
            csrcs=(1, 2)[: seq % 3],
            ext=ext if seq % 2 else None,
            payload=bytes(range(seq % 97)),
        )
        protected = ours_tx.protect_rtp(packet)
        assert len(protected) == len(packet) + TAG[profile]
        assert protected == lib_tx.protect(packet)
        assert lib_rx.unprotect(protected) == packet
        assert ours_rx.unprotect_rtp(lib_tx.protect(rtp(seq, ssrc=7))) == rtp(seq, ssrc=7)
    for i in range(10):
        packet = rtcp(body=bytes([i]) * (4 * i))
        protected = ours_tx.protect_rtcp(packet)
        assert len(protected) == len(packet) + 4 + TAG[profile]
        assert protected == lib_tx.protect_rtcp(packet)
        assert lib_rx.unprotect_rtcp(protected) == packet
        assert ours_rx.unprotect_rtcp(lib_tx.protect_rtcp(rtcp(9))) == rtcp(9)
    assert ours_tx.stream_count == 1 and ours_rx.stream_count == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_rollover_counter_across_the_wrap(impl: ModuleType, profile: str) -> None:
    ours_tx, ours_rx = context(impl, profile, outbound=True), context(impl, profile, outbound=False)
    lib_tx, lib_rx = libsrtp(profile, outbound=True), libsrtp(profile, outbound=False)
    # Two wraps, with a reordered pair across the first one (65535 after 0).
    seqs = [*range(65520, 65535), 0, 65535, *range(1, 40), *range(40, 65536, 1000), *range(0, 5)]
    for seq in seqs:
        packet = rtp(seq, payload=struct.pack("!H", seq) * 20)
        protected = ours_tx.protect_rtp(packet)
        assert protected == lib_tx.protect(packet), seq
        assert lib_rx.unprotect(protected) == packet
        assert ours_rx.unprotect_rtp(protected) == packet
    # A receiver that never saw the wraps assumes ROC 0 and cannot authenticate.
    with pytest.raises(SrtpError) as info:
        context(impl, profile, outbound=False).unprotect_rtp(ours_tx.protect_rtp(rtp(5)))
    assert info.value.reason == "auth"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("where", ["header", "payload", "tag"])
def test_tampered_packets_fail_auth(impl: ModuleType, profile: str, where: str) -> None:
    tx, rx = context(impl, profile, outbound=True), context(impl, profile, outbound=False)
    protected = bytearray(tx.protect_rtp(rtp(7)))
    protected[{"header": 1, "payload": 20, "tag": len(protected) - 1}[where]] ^= 0x01
    with pytest.raises(SrtpError) as info:
        rx.unprotect_rtp(bytes(protected))
    assert info.value.reason == "auth"
    srtcp = bytearray(tx.protect_rtcp(rtcp()))
    srtcp[{"header": 5, "payload": 12, "tag": len(srtcp) - 1}[where]] ^= 0x80
    with pytest.raises(SrtpError) as info:
        rx.unprotect_rtcp(bytes(srtcp))
    assert info.value.reason == "auth"
    # A forgery leaves no state behind: no stream, no window movement.
    assert rx.stream_count == 0
    assert rx.unprotect_rtp(tx.protect_rtp(rtp(8))) == rtp(8)
    assert rx.failures["auth"] == 2


@pytest.mark.parametrize("profile", PROFILES)
def test_wrong_keys_fail_auth(impl: ModuleType, profile: str) -> None:
    tx = context(impl, profile, outbound=True)
    other = impl.SrtpContext(profile, bytes(16), SALT[profile], outbound=False)
    with pytest.raises(SrtpError) as info:
        other.unprotect_rtp(tx.protect_rtp(rtp(1)))
    assert info.value.reason == "auth"


@pytest.mark.parametrize("profile", PROFILES)
def test_replays_and_old_packets_are_refused(impl: ModuleType, profile: str) -> None:
    tx, rx = context(impl, profile, outbound=True), context(impl, profile, outbound=False)
    packets = {seq: tx.protect_rtp(rtp(seq)) for seq in range(1000, 1200)}
    assert rx.unprotect_rtp(packets[1199]) == rtp(1199)
    assert rx.unprotect_rtp(packets[1199 - 127]) == rtp(1199 - 127)  # in the window, unseen
    for seq in (1199, 1199 - 127, 1199 - 128, 1000):  # seen, seen, too old, too old
        with pytest.raises(SrtpError) as info:
            rx.unprotect_rtp(packets[seq])
        assert info.value.reason == "replay"
    srtcp = [tx.protect_rtcp(rtcp()) for _ in range(300)]  # indexes 1..300
    for packet in srtcp:
        rx.unprotect_rtcp(packet)
    for i in (299, 172, 171, 0):  # seen in the window (index 300, 173), then before it
        with pytest.raises(SrtpError) as info:
            rx.unprotect_rtcp(srtcp[i])
        assert info.value.reason == "replay"
    assert rx.failures == {
        "auth": 0,
        "replay": 8,
        "malformed": 0,
        "streams": 0,
        "no_room": 0,
        "direction": 0,
    }


def test_replay_window_is_configurable(impl: ModuleType) -> None:
    tx = context(impl, GCM, outbound=True)
    rx = context(impl, GCM, outbound=False, replay_window=1024)
    packets = {seq: tx.protect_rtp(rtp(seq)) for seq in range(0, 3000, 7)}
    rx.unprotect_rtp(packets[2996])
    assert rx.unprotect_rtp(packets[2996 - 1022]) == rtp(2996 - 1022)
    with pytest.raises(SrtpError):
        rx.unprotect_rtp(packets[2996 - 1029])


@pytest.mark.parametrize("profile", PROFILES)
def test_outbound_repeats_a_sequence_number_but_not_an_old_one(
    impl: ModuleType, profile: str
) -> None:
    tx, lib_tx = context(impl, profile, outbound=True), libsrtp(profile, outbound=True)
    first = tx.protect_rtp(rtp(1000))
    assert tx.protect_rtp(rtp(1000)) == first == lib_tx.protect(rtp(1000))
    for seq in range(1001, 1200):
        tx.protect_rtp(rtp(seq))
    assert tx.protect_rtp(rtp(1199 - 127)) == lib_tx.protect(rtp(1199 - 127))
    with pytest.raises(SrtpError) as info:
        tx.protect_rtp(rtp(1000))
    assert info.value.reason == "replay"
    strict = context(impl, profile, outbound=True, allow_repeat_tx=False)
    assert strict.protect_rtp(rtp(5)) == first_of(profile, 5)
    with pytest.raises(SrtpError) as info:
        strict.protect_rtp(rtp(5))
    assert info.value.reason == "replay"


def first_of(profile: str, seq: int) -> bytes:
    return bytes(libsrtp(profile, outbound=True).protect(rtp(seq)))


@pytest.mark.parametrize("profile", PROFILES)
def test_truncated_and_malformed_packets(impl: ModuleType, profile: str) -> None:
    tx, rx = context(impl, profile, outbound=True), context(impl, profile, outbound=False)
    protected = tx.protect_rtp(rtp(1, csrcs=(5, 6)))
    bad_plain = [
        b"",
        b"\x80" * 11,  # shorter than the fixed header
        bytes([0x8F]) + bytes(20),  # 15 CSRCs announced, 20 bytes present
        bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x05",  # extension longer than the packet
    ]
    for packet in bad_plain:
        with pytest.raises(SrtpError) as info:
            tx.protect_rtp(packet)
        assert info.value.reason == "malformed"
    for packet in [*bad_plain, protected[: 20 + TAG[profile] - 1], protected[:12]]:
        with pytest.raises(SrtpError) as info:
            rx.unprotect_rtp(packet)
        assert info.value.reason == "malformed"
    with pytest.raises(SrtpError) as info:
        tx.protect_rtcp(bytes(7))
    assert info.value.reason == "malformed"
    for packet in (bytes(7), tx.protect_rtcp(rtcp(body=b""))[:-1]):
        with pytest.raises(SrtpError) as info:
            rx.unprotect_rtcp(packet)
        assert info.value.reason == "malformed"
    assert rx.stream_count == 0
    # Shortest valid packets: a bare RTP header, a bare RTCP header.
    assert rx.unprotect_rtp(tx.protect_rtp(rtp(2, payload=b""))) == rtp(2, payload=b"")
    assert rx.unprotect_rtcp(tx.protect_rtcp(bytes(8))) == bytes(8)


def test_stream_limit(impl: ModuleType) -> None:
    tx = context(impl, GCM, outbound=True, max_streams=3)
    rx = context(impl, GCM, outbound=False, max_streams=3)
    for ssrc in (1, 2, 3):
        rx.unprotect_rtp(tx.protect_rtp(rtp(1, ssrc=ssrc)))
    for call, packet in (
        (tx.protect_rtp, rtp(1, ssrc=4)),
        (tx.protect_rtcp, rtcp(ssrc=4)),
        (rx.unprotect_rtp, context(impl, GCM, outbound=True).protect_rtp(rtp(1, ssrc=4))),
    ):
        with pytest.raises(SrtpError) as info:
            call(packet)
        assert info.value.reason == "streams"
    assert tx.stream_count == rx.stream_count == 3
    # Known SSRCs carry on; forgetting one makes room for another.
    assert rx.unprotect_rtp(tx.protect_rtp(rtp(2, ssrc=2))) == rtp(2, ssrc=2)
    assert tx.remove_stream(1) and not tx.remove_stream(1)
    assert tx.protect_rtcp(rtcp(ssrc=4))
    assert tx.stream_count == 3


def test_many_streams_come_and_go(impl: ModuleType) -> None:
    """Tables grow as SSRCs arrive and keep every stream's state through removals."""
    tx = context(impl, CM, outbound=True, max_streams=300)
    rx = context(impl, CM, outbound=False, max_streams=300)
    ssrcs = [0x1000 + 7 * i for i in range(300)]
    for seq in (65534, 65535, 0):  # every stream wraps its ROC
        for ssrc in ssrcs:
            assert rx.unprotect_rtp(tx.protect_rtp(rtp(seq, ssrc=ssrc))) == rtp(seq, ssrc=ssrc)
    assert tx.stream_count == rx.stream_count == 300
    for ssrc in ssrcs[::3]:
        assert tx.remove_stream(ssrc) and rx.remove_stream(ssrc)
    assert tx.stream_count == rx.stream_count == 200
    for ssrc in ssrcs:
        if ssrc in ssrcs[::3]:
            continue
        assert rx.unprotect_rtp(tx.protect_rtp(rtp(1, ssrc=ssrc))) == rtp(1, ssrc=ssrc)
        with pytest.raises(SrtpError):  # the window survived the moves
            rx.unprotect_rtp(tx.protect_rtp(rtp(0, ssrc=ssrc)))


def test_direction_and_argument_errors(impl: ModuleType) -> None:
    tx, rx = context(impl, GCM, outbound=True), context(impl, GCM, outbound=False)
    for call in (rx.protect_rtp, rx.protect_rtcp, tx.unprotect_rtp, tx.unprotect_rtcp):
        with pytest.raises(RuntimeError):
            call(rtp(1))
    with pytest.raises(RuntimeError):
        rx.protect_rtp_batch(bytearray(100), array("i", [12]), 100)
    with pytest.raises(ValueError):
        impl.SrtpContext("SRTP_NULL_NULL", KEY, SALT[GCM], outbound=True)
    with pytest.raises(ValueError):
        impl.SrtpContext(GCM, KEY, SALT[CM], outbound=True)  # a 14-byte salt for GCM
    with pytest.raises(ValueError):
        impl.SrtpContext(CM, KEY[:15], SALT[CM], outbound=True)
    with pytest.raises(TypeError):
        impl.SrtpContext(CM, bytearray(KEY), SALT[CM], outbound=True)
    for window in (63, 1025):
        with pytest.raises(ValueError):
            context(impl, CM, outbound=False, replay_window=window)
    with pytest.raises(ValueError):
        context(impl, CM, outbound=False, max_streams=0)
    with pytest.raises(ValueError):
        impl.derive_key(KEY, bytes(13), 0, 16)
    with pytest.raises(TypeError):
        tx.protect_rtp("not bytes")
    assert (tx.profile, tx.outbound, tx.tag_len) == (GCM, True, 16)


@pytest.mark.parametrize("profile", PROFILES)
def test_batches_in_place(impl: ModuleType, profile: str) -> None:
    stride = 256
    tx, rx = context(impl, profile, outbound=True), context(impl, profile, outbound=False)
    reference = context(impl, profile, outbound=True)
    packets = [rtp(seq, payload=bytes([seq]) * (seq * 10)) for seq in range(1, 9)]
    packets[3] = b"\x80" * 5  # malformed
    buffer = bytearray(stride * (len(packets) + 1))
    lengths = array("i", [len(p) for p in packets] + [-1])  # the last slot is skipped
    for i, packet in enumerate(packets):
        buffer[i * stride : i * stride + len(packet)] = packet
    assert tx.protect_rtp_batch(buffer, lengths, stride) == len(packets) - 1
    assert lengths[3] == _srtp_shared.ERR_MALFORMED and lengths[-1] == -1
    for i, packet in enumerate(packets):
        if i != 3:
            expected = reference.protect_rtp(packet)
            assert bytes(buffer[i * stride : i * stride + lengths[i]]) == expected
    lengths[0] = -1  # e.g. dropped earlier in the loop
    assert rx.unprotect_rtp_batch(memoryview(buffer), lengths, stride) == len(packets) - 2
    for i, packet in enumerate(packets):
        if i not in (0, 3):
            assert bytes(buffer[i * stride : i * stride + lengths[i]]) == packet
    # A packet that leaves no room for its tag.
    small = bytearray(rtp(9, payload=bytes(10)))
    one = array("i", [len(small)])
    assert tx.protect_rtp_batch(small, one, len(small)) == 0
    assert one[0] == _srtp_shared.ERR_NO_ROOM and tx.failures["no_room"] == 1


def test_batch_argument_errors(impl: ModuleType) -> None:
    tx = context(impl, GCM, outbound=True)
    with pytest.raises(BufferError):
        tx.protect_rtp_batch(bytes(100), array("i", [12]), 100)
    with pytest.raises(BufferError):
        tx.protect_rtp_batch(bytearray(100), b"\0\0\0\0", 100)
    with pytest.raises(ValueError):
        tx.protect_rtp_batch(bytearray(100), array("q", [12]), 100)
    with pytest.raises(ValueError):
        tx.protect_rtp_batch(bytearray(100), array("i", [12]), 0)
    with pytest.raises(ValueError):
        tx.protect_rtp_batch(bytearray(100), array("i", [12, 12]), 60)
    with pytest.raises(ValueError):
        tx.protect_rtp_batch(bytearray(100), array("i", [101]), 100)
    with pytest.raises(TypeError):
        tx.protect_rtp_batch(bytearray(100), [12], 100)
    assert tx.stream_count == 0


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("prefix", [(), (0xFFF0, 0x0005)], ids=["roc0", "roc1"])
def test_index_estimate_edges_match_libsrtp(
    impl: ModuleType, profile: str, prefix: tuple[int, ...]
) -> None:
    """Every pair of edge sequence numbers, after ROC 0 or ROC 1 history, both directions."""
    values = [0, 1, 2, 0x4000, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0x8002, 0xC000, 0xFFFE, 0xFFFF]
    for first in values:
        for second in values:
            for third in (second + 1, first + 0x8000, second + 0x7FFF):
                seqs = (*prefix, first, second, third & 0xFFFF)
                tx, lib_tx = context(impl, profile, outbound=True), libsrtp(profile, outbound=True)
                rx, lib_rx = (
                    context(impl, profile, outbound=False),
                    libsrtp(profile, outbound=False),
                )
                for seq in seqs:
                    packet = rtp(seq)
                    protected = outcome(lib_tx.protect, packet)
                    assert outcome(tx.protect_rtp, packet) == protected, seqs
                    if isinstance(protected, bytes):
                        assert outcome(rx.unprotect_rtp, protected) == outcome(
                            lib_rx.unprotect, protected
                        ), seqs


# ---------------------------------------------------------------------------------------------
# Property tests: random traffic against libsrtp, and compiled against reference

_payloads = st.binary(max_size=300)
_rtp_packets = st.builds(
    lambda ssrc, csrcs, ext, payload, marker: (ssrc, csrcs, ext, payload, marker),
    ssrc=st.sampled_from([0x11111111, 0x22222222, 0xFFFFFFFF]),
    csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=3).map(tuple),
    ext=st.one_of(st.none(), st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))),
    payload=_payloads,
    marker=st.booleans(),
)
# Around the places where the index estimate changes its mind (RFC 3711 Appendix A).
_EDGES = [0, 1, 2, 0x7FFE, 0x7FFF, 0x8000, 0x8001, 0x8002, 0xFFFD, 0xFFFE, 0xFFFF]
_starts = st.one_of(st.integers(0, 0xFFFF), st.sampled_from(_EDGES))
# Sequence number steps: mostly forward by one, with reordering, repeats and jumps both ways.
_steps = st.one_of(
    st.just(1),
    st.integers(-3, 3),
    st.integers(-200, 200),
    st.integers(-40000, 40000),
    st.sampled_from([0x7FFF, 0x8000, 0x8001, 0x8002, -0x7FFF, -0x8000, -0x8001, -0x8002]),
)


@st.composite
def _rtp_traffic(draw: st.DrawFn) -> list[bytes]:
    seqs = dict.fromkeys((0x11111111, 0x22222222, 0xFFFFFFFF), draw(_starts))
    out = []
    for ssrc, csrcs, ext, payload, marker in draw(st.lists(_rtp_packets, min_size=1, max_size=40)):
        seqs[ssrc] = (seqs[ssrc] + draw(_steps)) & 0xFFFF
        out.append(rtp(seqs[ssrc], ssrc=ssrc, csrcs=csrcs, ext=ext, payload=payload, marker=marker))
    return out


@st.composite
def _deliveries(draw: st.DrawFn, count: int) -> list[int]:
    """Which protected packets arrive, in which order: a random walk over them that mostly
    moves on by one and sometimes skips, repeats or goes back, near or far (past the window)."""
    step = st.one_of(st.just(1), st.integers(-5, 5), st.integers(-300, 300))
    position, order = 0, [0]
    for _ in range(min(2 * count, 400)):
        position = min(max(position + draw(step), 0), count - 1)
        order.append(position)
    return order


@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=40)
@given(data=st.data())
def test_rtp_traffic_is_byte_identical_to_libsrtp(
    impl: ModuleType, profile: str, data: st.DataObject
) -> None:
    packets = data.draw(_rtp_traffic())
    ours_tx, lib_tx = context(impl, profile, outbound=True), libsrtp(profile, outbound=True)
    protected = []
    for packet in packets:
        ours = outcome(ours_tx.protect_rtp, packet)
        assert ours == outcome(lib_tx.protect, packet)
        if isinstance(ours, bytes):
            protected.append(ours)
    if not protected:
        return
    ours_rx, lib_rx = context(impl, profile, outbound=False), libsrtp(profile, outbound=False)
    for i in data.draw(_deliveries(len(protected))):
        packet = protected[i]
        if data.draw(st.integers(0, 9)) == 0:  # now and then, a damaged packet
            damaged = bytearray(packet)
            damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= 1 << data.draw(
                st.integers(0, 7)
            )
            packet = bytes(damaged)
        assert outcome(ours_rx.unprotect_rtp, packet) == outcome(lib_rx.unprotect, packet)


@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=30)
@given(data=st.data())
def test_rtcp_traffic_is_byte_identical_to_libsrtp(
    impl: ModuleType, profile: str, data: st.DataObject
) -> None:
    packets = data.draw(
        st.lists(
            st.builds(
                rtcp,
                ssrc=st.sampled_from([1, 2, 0xFFFFFFFF]),
                body=st.binary(max_size=80).map(lambda b: b + bytes(-len(b) % 4)),
            ),
            min_size=1,
            max_size=8,
        )
    )
    # Enough packets for the SRTCP window (128 indexes) to slide.
    packets = (packets * data.draw(st.integers(1, 300 // len(packets) + 1)))[:300]
    ours_tx, lib_tx = context(impl, profile, outbound=True), libsrtp(profile, outbound=True)
    protected = []
    for packet in packets:
        ours = ours_tx.protect_rtcp(packet)
        assert ours == lib_tx.protect_rtcp(packet)
        protected.append(ours)
    ours_rx, lib_rx = context(impl, profile, outbound=False), libsrtp(profile, outbound=False)
    for i in data.draw(_deliveries(len(protected))):
        packet = protected[i]
        if data.draw(st.integers(0, 9)) == 0:
            damaged = bytearray(packet)
            damaged[data.draw(st.integers(0, len(damaged) - 1))] ^= 1 << data.draw(
                st.integers(0, 7)
            )
            packet = bytes(damaged)
        assert outcome(ours_rx.unprotect_rtcp, packet) == outcome(lib_rx.unprotect_rtcp, packet)


@pytest.mark.parametrize("profile", PROFILES)
@settings(max_examples=60)
@given(data=st.data())
def test_compiled_and_reference_agree(
    srtp_c: ModuleType, profile: str, data: st.DataObject
) -> None:
    """Same bytes, same codes, same failure counts, for random traffic including garbage."""
    window = data.draw(st.sampled_from([64, 128, 1000]))
    impls = (_srtp_py, srtp_c)
    tx = [context(m, profile, outbound=True, max_streams=2) for m in impls]
    rx = [context(m, profile, outbound=False, max_streams=2, replay_window=window) for m in impls]
    garbage = st.binary(max_size=64)
    protected: list[bytes] = []
    for _ in range(data.draw(st.integers(1, 30))):
        kind = data.draw(st.sampled_from(["rtp", "rtcp", "garbage", "replay", "batch"]))
        if kind == "batch":
            packets = data.draw(
                st.lists(
                    st.one_of(_rtp_traffic().map(lambda p: p[0]), garbage), min_size=1, max_size=4
                )
            )
            stride = data.draw(st.integers(12, 400))
            results = []
            for ctx in tx:
                buffer = bytearray(stride * len(packets))
                lengths = array("i", [min(len(p), stride) for p in packets])
                for i, p in enumerate(packets):
                    buffer[i * stride : i * stride + lengths[i]] = p[:stride]
                done = ctx.protect_rtp_batch(buffer, lengths, stride)
                results.append(
                    (
                        done,
                        list(lengths),
                        [
                            bytes(buffer[i * stride : i * stride + n])
                            for i, n in enumerate(lengths)
                            if n >= 0
                        ],
                    )
                )
            assert results[0] == results[1]
            protected += results[0][2]
            continue
        if kind == "rtp":
            packet = data.draw(_rtp_traffic())[0]
            outs = [outcome(ctx.protect_rtp, packet) for ctx in tx]
        elif kind == "rtcp":
            packet = rtcp(data.draw(st.sampled_from([1, 2, 3])), data.draw(garbage))
            outs = [outcome(ctx.protect_rtcp, packet) for ctx in tx]
        else:
            packet = (
                data.draw(garbage)
                if kind == "garbage" or not protected
                else data.draw(st.sampled_from(protected))
            )
            outs = [outcome(ctx.unprotect_rtp, packet) for ctx in rx]
            assert outs[0] == outs[1]
            outs = [outcome(ctx.unprotect_rtcp, packet) for ctx in rx]
        assert outs[0] == outs[1]
        if isinstance(outs[0], bytes) and kind in ("rtp", "rtcp"):
            protected.append(outs[0])
    for packet in data.draw(st.permutations(protected)):
        outs = [outcome(ctx.unprotect_rtp, packet) for ctx in rx]
        assert outs[0] == outs[1]
        outs = [outcome(ctx.unprotect_rtcp, packet) for ctx in rx]
        assert outs[0] == outs[1]
    assert tx[0].failures == tx[1].failures
    assert rx[0].failures == rx[1].failures
    assert rx[0].stream_count == rx[1].stream_count
