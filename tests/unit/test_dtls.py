"""DTLS-SRTP endpoint: two cores driven against each other in memory with a fake clock."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.transport.certificate import Certificate, FingerprintPair, fingerprint_of
from sfu.transport.dtls import (
    DEFAULT_MTU,
    DtlsEndpoint,
    DtlsFailure,
    DtlsRole,
    DtlsState,
    SrtpKeys,
    SrtpProfile,
)

Drop = Callable[[str, bytes], bool]


@functools.cache
def cert(name: str) -> Certificate:
    """Certificates are cached per name: generation and context building are the slow part."""
    return Certificate.generate()


def make_pair(
    *,
    client_cert: str = "a",
    server_cert: str = "b",
    client_profiles: tuple[SrtpProfile, ...] | None = None,
    server_profiles: tuple[SrtpProfile, ...] | None = None,
    client_expects: list[tuple[str, str]] | None = None,
    server_expects: list[tuple[str, str]] | None = None,
    mtu: int = DEFAULT_MTU,
) -> tuple[DtlsEndpoint, DtlsEndpoint]:
    kwargs_c: dict[str, object] = {"mtu": mtu}
    kwargs_s: dict[str, object] = {"mtu": mtu}
    if client_profiles is not None:
        kwargs_c["srtp_profiles"] = client_profiles
    if server_profiles is not None:
        kwargs_s["srtp_profiles"] = server_profiles
    client = DtlsEndpoint(
        cert(client_cert),
        DtlsRole.CLIENT,
        client_expects if client_expects is not None else [cert(server_cert).fingerprint],
        **kwargs_c,  # type: ignore[arg-type]
    )
    server = DtlsEndpoint(
        cert(server_cert),
        DtlsRole.SERVER,
        server_expects if server_expects is not None else [cert(client_cert).fingerprint],
        **kwargs_s,  # type: ignore[arg-type]
    )
    return client, server


def pump(
    client: DtlsEndpoint,
    server: DtlsEndpoint,
    now: float = 0.0,
    drop: Drop | None = None,
    transcript: list[tuple[str, bytes]] | None = None,
) -> None:
    """Start both sides and pass datagrams back and forth until nobody has anything to send."""
    assert server.start(now) == []
    to_server = client.start(now)
    to_client: list[bytes] = []
    for _ in range(20):
        if not to_server and not to_client:
            return
        next_to_client: list[bytes] = []
        for d in to_server:
            if transcript is not None:
                transcript.append(("c2s", d))
            if drop is None or not drop("c2s", d):
                next_to_client += server.receive(d, now)
        next_to_server: list[bytes] = []
        for d in to_client:
            if transcript is not None:
                transcript.append(("s2c", d))
            if drop is None or not drop("s2c", d):
                next_to_server += client.receive(d, now)
        to_server, to_client = next_to_server, next_to_client
    raise AssertionError("handshake did not settle")


def state_of(endpoint: DtlsEndpoint) -> DtlsState:
    """Read the state through a call: mypy keeps narrowing ``endpoint.state`` across calls."""
    return endpoint.state


def records(datagram: bytes) -> list[tuple[int, bytes]]:
    """Split a datagram into (content type, fragment); asserts records are whole."""
    out = []
    pos = 0
    while pos < len(datagram):
        assert len(datagram) - pos >= 13
        length = int.from_bytes(datagram[pos + 11 : pos + 13])
        assert pos + 13 + length <= len(datagram)
        out.append((datagram[pos], datagram[pos + 13 : pos + 13 + length]))
        pos += 13 + length
    return out


# -- certificate ------------------------------------------------------------------------------


def test_certificate_fingerprint_is_sdp_form() -> None:
    c = Certificate.generate()
    fp = c.fingerprint
    assert isinstance(fp, tuple) and fp.algorithm == "sha-256"
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fp.value)
    expected = c.x509.to_cryptography().fingerprint(hashes.SHA256())
    assert fp.value == expected.hex(":").upper()
    assert fingerprint_of(c.der, "SHA-256") == fp.value


@pytest.mark.parametrize(
    ("algorithm", "size"), [("sha-1", 20), ("sha-256", 32), ("sha-384", 48), ("sha-512", 64)]
)
def test_fingerprint_of_algorithms(algorithm: str, size: int) -> None:
    value = fingerprint_of(b"some der", algorithm)
    assert len(bytes.fromhex(value.replace(":", ""))) == size


def test_fingerprint_of_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError):
        fingerprint_of(b"der", "md5")


def test_certificates_are_random_self_signed_p256() -> None:
    a, b = Certificate.generate(), Certificate.generate()
    ca, cb = a.x509.to_cryptography(), b.x509.to_cryptography()
    assert ca.serial_number != cb.serial_number
    assert ca.subject != cb.subject and ca.subject == ca.issuer
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert a.fingerprint != b.fingerprint


# -- handshake --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "expected"),
    [
        (None, None, SrtpProfile.AEAD_AES_128_GCM),
        ((SrtpProfile.AES128_CM_SHA1_80,), None, SrtpProfile.AES128_CM_SHA1_80),
        (None, (SrtpProfile.AES128_CM_SHA1_80,), SrtpProfile.AES128_CM_SHA1_80),
    ],
)
@pytest.mark.parametrize("swap_certs", [False, True])
def test_handshake_exports_crosswise_keys(
    client_profiles: tuple[SrtpProfile, ...] | None,
    server_profiles: tuple[SrtpProfile, ...] | None,
    expected: SrtpProfile,
    swap_certs: bool,
) -> None:
    names = ("b", "a") if swap_certs else ("a", "b")
    client, server = make_pair(
        client_cert=names[0],
        server_cert=names[1],
        client_profiles=client_profiles,
        server_profiles=server_profiles,
    )
    transcript: list[tuple[str, bytes]] = []
    pump(client, server, transcript=transcript)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    assert client.failure_reason is None and server.failure_reason is None
    assert client.failure is None and server.failure is None
    ck, sk = client.srtp_keys, server.srtp_keys
    assert ck is not None and sk is not None
    assert ck.profile is sk.profile is expected
    assert len(ck.local_key) == expected.key_length == 16
    assert len(ck.local_salt) == expected.salt_length
    assert ck.local_key == sk.remote_key and ck.local_salt == sk.remote_salt
    assert ck.remote_key == sk.local_key and ck.remote_salt == sk.local_salt
    assert ck.local_key != ck.remote_key
    assert client.next_timer() is None and server.next_timer() is None
    # Every datagram holds whole DTLS records and fits the MTU; the first is a ClientHello.
    assert transcript[0][0] == "c2s" and transcript[0][1][0] == 22
    for _, d in transcript:
        assert len(d) <= DEFAULT_MTU
        assert records(d)


def test_profile_constants() -> None:
    gcm, cm = SrtpProfile.AEAD_AES_128_GCM, SrtpProfile.AES128_CM_SHA1_80
    assert (gcm.key_length, gcm.salt_length) == (16, 12)
    assert (cm.key_length, cm.salt_length) == (16, 14)
    assert gcm.openssl_name == b"SRTP_AEAD_AES_128_GCM"
    assert cm.openssl_name == b"SRTP_AES128_CM_SHA1_80"


def test_small_mtu_fragments_flights() -> None:
    client, server = make_pair(mtu=300)
    transcript: list[tuple[str, bytes]] = []
    pump(client, server, transcript=transcript)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED
    assert all(len(d) <= 300 for _, d in transcript)
    assert sum(1 for direction, _ in transcript if direction == "s2c") >= 3


def test_no_common_srtp_profile_fails() -> None:
    client, server = make_pair(
        client_profiles=(SrtpProfile.AEAD_AES_128_GCM,),
        server_profiles=(SrtpProfile.AES128_CM_SHA1_80,),
    )
    pump(client, server)
    assert client.state is DtlsState.FAILED
    assert client.failure_reason == "no srtp profile negotiated"
    assert client.failure is DtlsFailure.NO_SRTP_PROFILE
    assert client.srtp_keys is None


def test_keys_repr_hides_secrets() -> None:
    keys = SrtpKeys(
        SrtpProfile.AEAD_AES_128_GCM, b"\x11" * 16, b"\x22" * 12, b"\x33" * 16, b"\x44" * 12
    )
    text = repr(keys)
    assert "11" not in text and "x11" not in text and "AEAD" in text


def test_context_is_shared_per_certificate_and_role() -> None:
    c1, s1 = make_pair()
    c2, s2 = make_pair()
    # White-box: the SSL.Context must be built once and reused (it is the expensive part).
    assert c1._conn.get_context() is c2._conn.get_context()
    assert s1._conn.get_context() is s2._conn.get_context()
    assert c1._conn.get_context() is not s1._conn.get_context()


def test_extra_and_lowercase_fingerprints_accepted() -> None:
    good = cert("b")
    sha512 = fingerprint_of(good.der, "sha-512").lower()
    client, server = make_pair(
        client_expects=[
            ("sha-256", cert("c").fingerprint.value),
            ("md5", "00:11"),
            ("sha-256", "zz:not:hex"),
            ("SHA-512", sha512),
        ]
    )
    pump(client, server)
    assert client.state is DtlsState.CONNECTED and server.state is DtlsState.CONNECTED


# -- authentication ---------------------------------------------------------------------------


def test_client_fails_closed_on_fingerprint_mismatch() -> None:
    client, server = make_pair(client_expects=[cert("c").fingerprint])
    pump(client, server)
    assert client.state is DtlsState.FAILED
    assert client.failure_reason == "fingerprint mismatch"
    assert client.failure is DtlsFailure.FINGERPRINT_MISMATCH
    assert client.srtp_keys is None
    assert server.state is not DtlsState.CONNECTED and server.srtp_keys is None


def test_server_fails_closed_on_fingerprint_mismatch() -> None:
    client, server = make_pair(server_expects=[cert("c").fingerprint])
    pump(client, server)
    assert server.state is DtlsState.FAILED
    assert server.failure_reason == "fingerprint mismatch"
    assert server.srtp_keys is None
    assert client.state is not DtlsState.CONNECTED and client.srtp_keys is None


def test_wrong_algorithm_label_does_not_match() -> None:
    # The right sha-256 digest announced as sha-512 must not authenticate the peer.
    fp = cert("b").fingerprint
    client, server = make_pair(client_expects=[FingerprintPair("sha-512", fp.value)])
    pump(client, server)
    assert client.state is DtlsState.FAILED and client.failure_reason == "fingerprint mismatch"


def test_no_fingerprints_fails_closed() -> None:
    client, server = make_pair(client_expects=[])
    pump(client, server)
    assert client.state is DtlsState.FAILED and client.srtp_keys is None


# -- timers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [DtlsRole.CLIENT, DtlsRole.SERVER])
def test_handshake_timeout_with_silent_peer(role: DtlsRole) -> None:
    endpoint = DtlsEndpoint(cert("a"), role, [cert("b").fingerprint], handshake_timeout=5.0)
    assert endpoint.next_timer() is None
    out = endpoint.start(100.0)
    assert bool(out) is (role is DtlsRole.CLIENT)
    deadline = endpoint.next_timer()
    assert deadline is not None and deadline <= 105.0
    endpoint.handle_timer(104.9)
    assert endpoint.state is DtlsState.CONNECTING
    assert endpoint.handle_timer(105.0) == []
    assert state_of(endpoint) is DtlsState.FAILED
    assert endpoint.failure_reason == "handshake timeout"
    assert endpoint.failure is DtlsFailure.TIMEOUT
    assert endpoint.next_timer() is None
    assert endpoint.receive(b"\x16\xfe\xfd" + bytes(10), 106.0) == []


def test_retransmission_is_scheduled_but_waits_for_openssl_timer() -> None:
    client, _ = make_pair()
    first = client.start(0.0)
    assert first and first[0][0] == 22
    deadline = client.next_timer()
    # OpenSSL's initial retransmission timeout is 1 s (RFC 6347 §4.2.4.1), well before 10 s.
    assert deadline is not None and 0.0 < deadline <= 1.0
    # OpenSSL's own (real-clock) timer has not expired yet: nothing is retransmitted, and the
    # deadline moves to what OpenSSL still wants.
    assert client.handle_timer(deadline) == []
    assert client.state is DtlsState.CONNECTING
    rescheduled = client.next_timer()
    assert rescheduled is not None and deadline < rescheduled <= deadline + 1.0


def test_lost_final_flight_recovered_by_retransmission() -> None:
    client, server = make_pair()
    server.start(0.0)
    hello = client.start(0.0)
    flight2 = [x for d in hello for x in server.receive(d, 0.0)]
    flight3 = [x for d in flight2 for x in client.receive(d, 0.0)]
    final = [x for d in flight3 for x in server.receive(d, 0.0)]
    assert server.state is DtlsState.CONNECTED and final
    # The server's ChangeCipherSpec + Finished is lost: the client's timer is armed.
    assert client.state is DtlsState.CONNECTING
    deadline = client.next_timer()
    assert deadline is not None and deadline <= 1.0
    # An identical copy of flight 3 is a DTLS replay (same record numbers): ignored.
    assert [x for d in flight3 for x in server.receive(d, 0.1)] == []
    time.sleep(1.05)  # OpenSSL's retransmission timer reads the real clock
    resent = client.handle_timer(deadline)
    assert resent, "flight 3 was not retransmitted"
    # Same handshake fragments, new record sequence numbers (RFC 6347 §4.2.4).
    assert [r[0] for d in resent for r in records(d)] == [r[0] for d in flight3 for r in records(d)]
    assert resent[0][3:11] != flight3[0][3:11]
    backoff = client.next_timer()
    assert backoff is not None and backoff - deadline > 1.0
    answer = [x for d in resent for x in server.receive(d, 1.1)]
    assert answer, "server did not answer a retransmitted flight"
    for d in answer:
        client.receive(d, 1.1)
    assert state_of(client) is DtlsState.CONNECTED
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.local_key == server.srtp_keys.remote_key


# -- close and application data ---------------------------------------------------------------


def test_close_notify_closes_peer() -> None:
    client, server = make_pair()
    pump(client, server)
    alert = client.close()
    assert client.state is DtlsState.CLOSED
    assert alert and all(r[0] == 21 for d in alert for r in records(d))
    reply = [x for d in alert for x in server.receive(d, 1.0)]
    assert server.state is DtlsState.CLOSED and server.failure_reason is None
    assert reply  # our own close_notify in answer (RFC 5246 §7.2.1)
    assert client.receive(reply[0], 1.0) == []
    assert client.close() == [] and client.state is DtlsState.CLOSED
    assert server.next_timer() is None


def test_close_before_connected() -> None:
    client, _ = make_pair()
    client.start(0.0)
    assert client.close() == []
    assert client.state is DtlsState.CLOSED and client.next_timer() is None


def test_application_data_is_counted_and_discarded() -> None:
    client, server = make_pair()
    pump(client, server)
    # White-box: write application data on the client's SSL object, as a data channel would.
    client._conn.send(b"x" * 100)
    client._conn.send(b"y" * 20)
    datagrams = client._flush()
    assert datagrams and all(r[0] == 23 for d in datagrams for r in records(d))
    out = [x for d in datagrams for x in server.receive(d, 1.0)]
    assert out == []
    assert server.app_data_records == 2 and server.app_data_bytes == 120
    assert server.state is DtlsState.CONNECTED


def test_receive_before_start_starts_server() -> None:
    client, server = make_pair()
    hello = client.start(0.0)
    out = [x for d in hello for x in server.receive(d, 0.0)]
    assert out and server.state is DtlsState.CONNECTING


# -- robustness -------------------------------------------------------------------------------


@functools.cache
def real_transcript() -> tuple[tuple[str, bytes], ...]:
    client, server = make_pair()
    transcript: list[tuple[str, bytes]] = []
    pump(client, server, transcript=transcript)
    assert client.state is DtlsState.CONNECTED
    return tuple(transcript)


@st.composite
def mutated_datagram(draw: st.DrawFn) -> tuple[str, bytes]:
    transcript = real_transcript()
    direction, datagram = transcript[draw(st.integers(0, len(transcript) - 1))]
    data = bytearray(datagram)
    kind = draw(st.sampled_from(["flip", "truncate", "splice", "random"]))
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(data) - 1))
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif kind == "splice":
        pos = draw(st.integers(0, len(data)))
        data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
    else:
        data = bytearray(draw(st.binary(max_size=300)))
    return direction, bytes(data)


def assert_sane(endpoint: DtlsEndpoint, out: list[bytes]) -> None:
    assert isinstance(out, list) and all(
        isinstance(d, bytes) and len(d) <= DEFAULT_MTU for d in out
    )
    assert endpoint.state in set(DtlsState)
    if endpoint.state is DtlsState.FAILED:
        assert isinstance(endpoint.failure_reason, str) and endpoint.srtp_keys is None
    if endpoint.state is not DtlsState.CONNECTED:
        assert endpoint.srtp_keys is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_datagram())
def test_mutations_never_raise_on_fresh_endpoint(sample: tuple[str, bytes]) -> None:
    _, data = sample
    for role in DtlsRole:
        endpoint = DtlsEndpoint(cert("a"), role, [cert("b").fingerprint])
        out = endpoint.receive(data, 0.0)
        assert_sane(endpoint, out)
        assert endpoint.state is not DtlsState.CONNECTED
        assert_sane(endpoint, endpoint.handle_timer(11.0))
        assert endpoint.state in (DtlsState.FAILED, DtlsState.CLOSED)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_datagram(), st.integers(0, 3))
def test_mutations_never_raise_mid_handshake(sample: tuple[str, bytes], steps: int) -> None:
    # Replay a prefix of a real handshake, then inject the mutated datagram into one side.
    client, server = make_pair()
    server.start(0.0)
    to_server = client.start(0.0)
    for _ in range(steps):
        to_client = [x for d in to_server for x in server.receive(d, 0.0)]
        to_server = [x for d in to_client for x in client.receive(d, 0.0)]
    direction, data = sample
    target = server if direction == "c2s" else client
    out = target.receive(data, 0.0)
    assert_sane(target, out)
    assert_sane(target, target.handle_timer(0.5))
    if target.state is DtlsState.CONNECTED:
        assert target.srtp_keys is not None


def test_certificate_that_only_openssl_can_parse_fails_closed_without_raising() -> None:
    """Found by the fuzz test above: the curve OID of the server's key re-tagged (6 -> 7).

    OpenSSL still parses that certificate and hands it to the verify callback, where
    re-encoding it through ``cryptography`` used to raise out of ``receive``.
    """
    curve_oid = bytes.fromhex("06082a8648ce3d030107")  # prime256v1 in the SubjectPublicKeyInfo
    client, server = make_pair()
    server.start(0.0)
    flight = [x for d in client.start(0.0) for x in server.receive(d, 0.0)]
    assert any(curve_oid in d for d in flight)
    tampered = [d.replace(curve_oid, b"\x07" + curve_oid[1:]) for d in flight]
    out = [x for d in tampered for x in client.receive(d, 0.0)]
    assert_sane(client, out)
    assert client.state is DtlsState.FAILED
    assert client.srtp_keys is None
