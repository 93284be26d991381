"""SRTP sessions keyed by a real DTLS-SRTP handshake, cross-checked against plain pylibsrtp."""

from __future__ import annotations

import functools
import struct

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath.values import REWIND_LIMIT
from sfu.transport.certificate import Certificate
from sfu.transport.dtls import DtlsEndpoint, DtlsRole, DtlsState, SrtpKeys, SrtpProfile
from sfu.transport.srtp import SrtpError, SrtpSession

PROFILES = list(SrtpProfile)


@functools.cache
def handshake_keys(profile: SrtpProfile) -> tuple[SrtpKeys, SrtpKeys]:
    """(client keys, server keys) from an in-memory DTLS handshake forced to ``profile``."""
    a, b = Certificate.generate(), Certificate.generate()
    client = DtlsEndpoint(a, DtlsRole.CLIENT, [b.fingerprint], srtp_profiles=(profile,))
    server = DtlsEndpoint(b, DtlsRole.SERVER, [a.fingerprint])
    server.start(0.0)
    to_server = client.start(0.0)
    for _ in range(6):
        to_client = [x for d in to_server for x in server.receive(d, 0.0)]
        to_server = [x for d in to_client for x in client.receive(d, 0.0)]
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.profile is profile
    return client.srtp_keys, server.srtp_keys


def sessions(profile: SrtpProfile, **kwargs: int) -> tuple[SrtpSession, SrtpSession]:
    ck, sk = handshake_keys(profile)
    return SrtpSession(ck, **kwargs), SrtpSession(sk, **kwargs)  # type: ignore[arg-type]


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\xab" * 160, ts: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq & 0xFFFF, ts, ssrc) + payload


def rtcp_sr(ssrc: int = 0x11223344, n: int = 0) -> bytes:
    # Sender report without report blocks (RFC 3550 §6.4.1): 28 bytes, length field 6.
    return struct.pack("!BBHIIIIII", 0x80, 200, 6, ssrc, n, n + 1, n * 90, n, n * 100)


#: libsrtp's identifier of each profile, for the independent sessions below.
LIBSRTP_PROFILE = {
    SrtpProfile.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SrtpProfile.AES128_CM_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}


def independent_outbound(keys: SrtpKeys) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=keys.local_key + keys.local_salt,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=LIBSRTP_PROFILE[keys.profile],
    )
    return pylibsrtp.Session(policy=policy)


def independent_inbound(keys: SrtpKeys) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=keys.remote_key + keys.remote_salt,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
        srtp_profile=LIBSRTP_PROFILE[keys.profile],
    )
    return pylibsrtp.Session(policy=policy)


TAG = {SrtpProfile.AEAD_AES_128_GCM: 16, SrtpProfile.AES128_CM_SHA1_80: 10}


@pytest.mark.parametrize("profile", PROFILES)
def test_rtp_both_directions(profile: SrtpProfile) -> None:
    client, server = sessions(profile)
    for seq in range(1, 20):
        packet = rtp(seq, payload=bytes([seq]) * (seq * 7))
        protected = client.protect_rtp(packet)
        assert len(protected) == len(packet) + TAG[profile]
        assert protected[:12] == packet[:12] and protected[12 : -TAG[profile]] != packet[12:]
        assert server.unprotect_rtp(protected) == packet
        back = server.protect_rtp(rtp(seq, ssrc=0x55667788))
        assert client.unprotect_rtp(back) == rtp(seq, ssrc=0x55667788)


@pytest.mark.parametrize("profile", PROFILES)
def test_rtcp_both_directions(profile: SrtpProfile) -> None:
    client, server = sessions(profile)
    for n in range(5):
        packet = rtcp_sr(n=n)
        protected = client.protect_rtcp(packet)
        # RFC 3711 §3.4: E flag + 31-bit SRTCP index, then the tag.
        assert len(protected) == len(packet) + 4 + TAG[profile]
        assert server.unprotect_rtcp(protected) == packet
        assert client.unprotect_rtcp(server.protect_rtcp(packet)) == packet


@pytest.mark.parametrize("profile", PROFILES)
def test_wrong_direction_keys_fail_auth(profile: SrtpProfile) -> None:
    client, _ = sessions(profile)
    other, _ = sessions(profile)
    # A session never accepts its own output: inbound uses the peer's keys.
    with pytest.raises(SrtpError) as info:
        other.unprotect_rtp(client.protect_rtp(rtp(1)))
    assert info.value.reason == "auth"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("where", ["header", "payload", "tag"])
def test_tampered_packet_is_auth_failure(profile: SrtpProfile, where: str) -> None:
    client, server = sessions(profile)
    protected = bytearray(client.protect_rtp(rtp(7)))
    pos = {"header": 3, "payload": 20, "tag": len(protected) - 1}[where]
    protected[pos] ^= 0x01
    with pytest.raises(SrtpError) as info:
        server.unprotect_rtp(bytes(protected))
    assert info.value.reason == "auth"
    assert server.counters.auth == 1 and server.counters.replay == 0
    # The untampered packet still goes through: a forgery does not advance the window.
    assert server.unprotect_rtp(client.protect_rtp(rtp(8))) == rtp(8)


@pytest.mark.parametrize("profile", PROFILES)
def test_tampered_rtcp_is_auth_failure(profile: SrtpProfile) -> None:
    client, server = sessions(profile)
    protected = bytearray(client.protect_rtcp(rtcp_sr()))
    protected[10] ^= 0x80
    with pytest.raises(SrtpError) as info:
        server.unprotect_rtcp(bytes(protected))
    assert info.value.reason == "auth"
    assert server.counters.auth == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_replayed_packet_is_rejected(profile: SrtpProfile) -> None:
    client, server = sessions(profile)
    protected = client.protect_rtp(rtp(100))
    assert server.unprotect_rtp(protected) == rtp(100)
    with pytest.raises(SrtpError) as info:
        server.unprotect_rtp(protected)
    assert info.value.reason == "replay"
    rtcp = client.protect_rtcp(rtcp_sr())
    server.unprotect_rtcp(rtcp)
    with pytest.raises(SrtpError) as info:
        server.unprotect_rtcp(rtcp)
    assert info.value.reason == "replay"
    assert server.counters.replay == 2 and server.counters.auth == 0


def test_replay_window_size() -> None:
    client, server = sessions(SrtpProfile.AEAD_AES_128_GCM, replay_window=64)
    packets = {seq: client.protect_rtp(rtp(seq)) for seq in range(1000, 1101)}
    server.unprotect_rtp(packets[1100])
    # Inside the 64-packet window and unseen: accepted, even out of order.
    assert server.unprotect_rtp(packets[1050]) == rtp(1050)
    # Older than the window: rejected as a replay (RFC 3711 §3.3.2).
    with pytest.raises(SrtpError) as info:
        server.unprotect_rtp(packets[1000])
    assert info.value.reason == "replay"


def test_replay_window_is_validated() -> None:
    keys, _ = handshake_keys(SrtpProfile.AEAD_AES_128_GCM)
    for bad in (0, 63, 0x8000):
        with pytest.raises(ValueError):
            SrtpSession(keys, replay_window=bad)


@pytest.mark.parametrize("profile", PROFILES)
def test_rollover_counter_follows_wrap(profile: SrtpProfile) -> None:
    client, server = sessions(profile)
    ck, _ = handshake_keys(profile)
    reference = independent_outbound(ck)
    late_joiner = SrtpSession(handshake_keys(profile)[1])
    seqs = [*range(65500, 65536), *range(0, 40)]
    for i, seq in enumerate(seqs):
        packet = rtp(seq, ts=i * 3000)
        protected = client.protect_rtp(packet)
        assert protected == reference.protect(packet)
        assert server.unprotect_rtp(protected) == packet
    # After the wrap the ROC is 1: a receiver that never saw the wrap assumes ROC 0 and fails.
    after_wrap = client.protect_rtp(rtp(40))
    assert server.unprotect_rtp(after_wrap) == rtp(40)
    with pytest.raises(SrtpError) as info:
        late_joiner.unprotect_rtp(after_wrap)
    assert info.value.reason == "auth"


@pytest.mark.parametrize("profile", PROFILES)
def test_byte_identical_to_independent_pylibsrtp(profile: SrtpProfile) -> None:
    client, server = sessions(profile)
    ck, sk = handshake_keys(profile)
    ref_out = independent_outbound(ck)
    ref_in = independent_inbound(sk)
    for seq in range(300, 340):
        packet = rtp(seq, ssrc=0xCAFEBABE, payload=bytes(range(seq % 200)))
        ours = client.protect_rtp(packet)
        assert ours == ref_out.protect(packet)
        assert ref_in.unprotect(ours) == packet
        assert server.unprotect_rtp(ours) == packet
    for n in range(10):
        assert client.protect_rtcp(rtcp_sr(n=n)) == ref_out.protect_rtcp(rtcp_sr(n=n))


@pytest.mark.parametrize("profile", PROFILES)
def test_retransmission_of_same_packet(profile: SrtpProfile) -> None:
    client, _ = sessions(profile)
    first = client.protect_rtp(rtp(5))
    assert client.protect_rtp(rtp(5)) == first  # allowed by default (NACK without RTX)
    strict, _ = sessions(profile, allow_repeat_tx=False)
    strict.protect_rtp(rtp(5))
    with pytest.raises(SrtpError) as info:
        strict.protect_rtp(rtp(5))
    assert info.value.reason == "replay"
    assert strict.counters.protect_failed == 1


@pytest.mark.parametrize("profile", PROFILES)
def test_numbers_given_again_after_a_rewind_are_protected(profile: SrtpProfile) -> None:
    """``RtpMunger.rewind`` gives again up to REWIND_LIMIT numbers that a pacer dropped
    unsent: the outbound context protects them again (its window is the session's, 1024, not
    the default 128) and a receiver that never saw the first ones opens the new ones."""
    client, server = sessions(profile)
    for seq in range(1000, 1000 + REWIND_LIMIT):
        wire = client.protect_rtp(rtp(seq, payload=b"\x01" * 100))
        if seq < 1000 + 10:
            server.unprotect_rtp(wire)  # only the first ten left; the rest were dropped
    again = client.protect_rtp(rtp(1010, payload=b"\x02" * 100))
    assert server.unprotect_rtp(again) == rtp(1010, payload=b"\x02" * 100)
    assert client.counters.protect_failed == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_malformed_packets(profile: SrtpProfile) -> None:
    _, server = sessions(profile)
    for bad in (b"", b"\x80", b"\x80\x60\x00\x01", bytes(11)):
        with pytest.raises(SrtpError) as info:
            server.unprotect_rtp(bad)
        assert info.value.reason == "malformed"
    with pytest.raises(SrtpError) as info:
        server.unprotect_rtcp(b"\x80\xc8")
    assert info.value.reason == "malformed"
    with pytest.raises(SrtpError):
        server.protect_rtp(bytes([0x8F]) + bytes(20))  # 15 CSRCs announced, 20 bytes present
    assert server.counters.malformed == 5 and server.counters.protect_failed == 1


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PROFILES), st.binary(max_size=400), st.booleans())
def test_random_input_raises_only_srtp_error(
    profile: SrtpProfile, data: bytes, as_rtcp: bool
) -> None:
    _, server = sessions(profile)
    unprotect = server.unprotect_rtcp if as_rtcp else server.unprotect_rtp
    with pytest.raises(SrtpError) as info:
        unprotect(data)
    assert info.value.reason in ("auth", "replay", "malformed")
    c = server.counters
    assert c.auth + c.replay + c.malformed == 1


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(PROFILES),
    st.integers(0, 0xFFFF),
    st.binary(max_size=300),
    st.integers(0, 0xFFFFFFFF),
)
def test_random_packets_round_trip(
    profile: SrtpProfile, seq: int, payload: bytes, ssrc: int
) -> None:
    client, server = sessions(profile)
    packet = rtp(seq, ssrc=ssrc, payload=payload)
    assert server.unprotect_rtp(client.protect_rtp(packet)) == packet
