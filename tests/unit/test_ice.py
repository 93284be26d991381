"""ICE-lite agent: check validation, responses, nomination, consent, restart, bounds."""

from __future__ import annotations

import ipaddress
import struct
import zlib

import pytest
from fixture_files import hex_captures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.stun import (
    BINDING,
    FINGERPRINT_XOR,
    MESSAGE_INTEGRITY,
    USE_CANDIDATE,
    StunAttribute,
    StunClass,
    StunMessage,
    binding_request,
    verify_fingerprint,
    verify_message_integrity,
)
from sfu.transport.ice import (
    DROP_BAD_FINGERPRINT,
    DROP_BAD_INTEGRITY,
    DROP_BAD_REQUEST,
    DROP_NOT_BINDING_REQUEST,
    DROP_ROLE_CONFLICT,
    DROP_UNKNOWN_ATTRIBUTE,
    DROP_WRONG_USERNAME,
    ICE_CHARS,
    Address,
    Connected,
    IceCredentials,
    IceLiteAgent,
    IceResult,
    SelectedPairChanged,
    ufrag_of_request,
)

LOCAL = IceCredentials("srvUfrag", "serverPassword0123456789")
REMOTE_UFRAG = "cli1"
A = ("192.0.2.10", 50000)
B = ("198.51.100.7", 40000)
V6 = ("2001:db8::1", 6000)


def tid(n: int) -> bytes:
    return n.to_bytes(12, "big")


def request(
    n: int = 1,
    *,
    creds: IceCredentials = LOCAL,
    remote: str = REMOTE_UFRAG,
    use_candidate: bool = False,
    controlling: bool = True,
    pwd: str | None = None,
) -> tuple[StunMessage, bytes]:
    """A client check to the server: USERNAME '<server ufrag>:<client ufrag>', server pwd."""
    data = binding_request(
        tid(n),
        f"{creds.ufrag}:{remote}",
        (pwd if pwd is not None else creds.pwd).encode(),
        0x6E7E1EFF,
        controlling=controlling,
        tie_breaker=0x1234,
        use_candidate=use_candidate,
    )
    return StunMessage.parse(data), data


def agent(
    now: float = 0.0, *, consent_timeout: float = 30.0, connect_timeout: float = 30.0
) -> IceLiteAgent:
    return IceLiteAgent(
        LOCAL,
        REMOTE_UFRAG,
        now=now,
        consent_timeout=consent_timeout,
        connect_timeout=connect_timeout,
    )


def check(
    ag: IceLiteAgent,
    addr: Address,
    now: float = 0.0,
    *,
    creds: IceCredentials = LOCAL,
    remote: str = REMOTE_UFRAG,
    use_candidate: bool = False,
    controlling: bool = True,
    pwd: str | None = None,
) -> IceResult:
    msg, data = request(
        creds=creds, remote=remote, use_candidate=use_candidate, controlling=controlling, pwd=pwd
    )
    return ag.handle_stun(msg, data, addr, now)


def with_fingerprint(data: bytes) -> bytes:
    """Recompute a trailing FINGERPRINT so a mutated message passes the CRC check."""
    crc = zlib.crc32(data[:-8]) ^ FINGERPRINT_XOR
    return data[:-4] + struct.pack(">I", crc)


def append_after_integrity(data: bytes, attr: bytes) -> bytes:
    """Insert ``attr`` between MESSAGE-INTEGRITY and FINGERPRINT (not covered by the HMAC)."""
    body = data[20:-8] + attr
    head = data[:2] + struct.pack(">H", len(body) + 8) + data[4:20]
    return with_fingerprint(head + body + data[-8:])


def parse_response(result: IceResult) -> StunMessage:
    assert result.response is not None
    assert verify_fingerprint(result.response)
    return StunMessage.parse(result.response)


# --------------------------------------------------------------------- credentials


def test_generated_credentials_meet_rfc_minimums_and_differ() -> None:
    seen = set()
    for _ in range(50):
        creds = IceCredentials.generate()
        assert len(creds.ufrag) == 8 and len(creds.pwd) >= 24
        assert set(creds.ufrag) <= set(ICE_CHARS) and set(creds.pwd) <= set(ICE_CHARS)
        seen.add((creds.ufrag, creds.pwd))
    assert len(seen) == 50


def test_credentials_repr_hides_password() -> None:
    creds = IceCredentials.generate()
    assert creds.pwd not in repr(creds)
    assert creds.ufrag in repr(creds)
    assert creds.key == creds.pwd.encode()


@pytest.mark.parametrize(
    ("ufrag", "pwd"),
    [
        ("abc", "a" * 22),  # ufrag below 4 chars
        ("abcd", "a" * 21),  # pwd below 22 chars
        ("ab:d", "a" * 22),  # ':' is not an ice-char
        ("abcd", "a" * 21 + " "),
        ("a" * 257, "a" * 22),
    ],
)
def test_invalid_credentials_rejected(ufrag: str, pwd: str) -> None:
    with pytest.raises(ValueError):
        IceCredentials(ufrag, pwd)


# --------------------------------------------------------------------- success responses


@pytest.mark.parametrize("addr", [A, V6, ("::1", 7000, 0, 0), ("127.0.0.1", 1)])
def test_success_response_is_signed_and_maps_source(addr: tuple[str, int]) -> None:
    ag = agent()
    msg, data = request(7)
    result = ag.handle_stun(msg, data, addr, 0.0)
    assert result.accepted and result.drop_reason is None
    assert result.destination == addr
    resp = parse_response(result)
    assert resp.msg_class == StunClass.SUCCESS and resp.method == BINDING
    assert resp.transaction_id == msg.transaction_id
    assert verify_message_integrity(result.response or b"", LOCAL.key)
    assert resp.xor_mapped_address == (addr[0], addr[1])
    assert ag.is_validated(addr)


@given(
    ip=st.ip_addresses(),
    port=st.integers(0, 65535),
)
@settings(max_examples=200)
def test_xor_mapped_address_is_source_for_any_address(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    ag = agent()
    addr = (str(ip), port)
    result = check(ag, addr)
    assert result.destination == addr
    assert parse_response(result).xor_mapped_address == addr


def test_error_responses_go_to_source_address() -> None:
    ag = agent()
    for result in (
        check(ag, B, pwd="x" * 22),
        check(ag, B, remote="zzzz"),
        check(ag, B, controlling=False),
    ):
        assert not result.accepted
        assert result.destination == B
        assert parse_response(result).msg_class == StunClass.ERROR


# --------------------------------------------------------------------- rejections


def test_wrong_password_is_401_without_state_change() -> None:
    ag = agent()
    check(ag, A, use_candidate=True)
    before = ag.validated_addresses
    result = check(ag, B, 5.0, use_candidate=True, pwd="wrongPassword0123456789")
    assert result.drop_reason == DROP_BAD_INTEGRITY
    resp = parse_response(result)
    assert resp.error_code == (401, "Unauthorized")
    assert resp.message_integrity is None  # RFC 8489 §9.2.4: no key to sign with
    assert result.events == ()
    assert ag.validated_addresses == before
    assert not ag.is_validated(B)
    assert ag.selected_address == A


@pytest.mark.parametrize(
    ("creds", "remote"),
    [
        (IceCredentials("otherUfr", LOCAL.pwd), REMOTE_UFRAG),  # wrong local part
        (LOCAL, "nope"),  # wrong remote part (known remote ufrag)
    ],
)
def test_wrong_username_is_401(creds: IceCredentials, remote: str) -> None:
    ag = agent()
    msg, data = request(creds=creds, remote=remote)
    result = ag.handle_stun(msg, data, A, 0.0)
    assert result.drop_reason == DROP_WRONG_USERNAME
    assert parse_response(result).error_code == (401, "Unauthorized")
    assert not ag.is_validated(A) and ag.selected_address is None


def test_username_without_colon_is_401() -> None:
    ag = agent()
    data = binding_request(tid(1), LOCAL.ufrag, LOCAL.key, 1, controlling=True, tie_breaker=1)
    result = ag.handle_stun(StunMessage.parse(data), data, A, 0.0)
    assert result.drop_reason == DROP_WRONG_USERNAME


def test_remote_ufrag_unknown_accepts_any_remote_part() -> None:
    ag = IceLiteAgent(LOCAL, None, now=0.0)
    msg, data = request(remote="anything")
    assert ag.handle_stun(msg, data, A, 0.0).accepted
    ag.remote_ufrag = "cli1"
    msg, data = request(2, remote="anything")
    assert ag.handle_stun(msg, data, A, 0.0).drop_reason == DROP_WRONG_USERNAME


def test_missing_fingerprint_is_dropped_silently() -> None:
    msg, _ = request()
    data = msg.serialize(integrity_key=LOCAL.key, fingerprint=False)
    result = agent().handle_stun(StunMessage.parse(data), data, A, 0.0)
    assert result.drop_reason == DROP_BAD_FINGERPRINT
    assert result.response is None


def test_corrupt_fingerprint_is_dropped_silently() -> None:
    _, data = request()
    bad = data[:-1] + bytes([data[-1] ^ 1])
    result = agent().handle_stun(StunMessage.parse(bad), bad, A, 0.0)
    assert result.drop_reason == DROP_BAD_FINGERPRINT and result.response is None


def test_missing_integrity_is_400_unsigned() -> None:
    msg, _ = request()
    stripped = StunMessage(
        msg.method,
        msg.msg_class,
        msg.transaction_id,
        tuple(a for a in msg.attributes if a.type != MESSAGE_INTEGRITY),
    )
    data = stripped.serialize(fingerprint=True)
    ag = agent()
    result = ag.handle_stun(stripped, data, A, 0.0)
    assert result.drop_reason == DROP_BAD_REQUEST
    resp = parse_response(result)
    assert resp.error_code == (400, "Bad Request") and resp.message_integrity is None
    assert not ag.is_validated(A)


def test_missing_username_is_400() -> None:
    msg = StunMessage(BINDING, StunClass.REQUEST, tid(3), (StunMessage.priority_attr(5),))
    data = msg.serialize(integrity_key=LOCAL.key, fingerprint=True)
    result = agent().handle_stun(StunMessage.parse(data), data, A, 0.0)
    assert result.drop_reason == DROP_BAD_REQUEST
    assert parse_response(result).error_code == (400, "Bad Request")


@pytest.mark.parametrize(
    "msg",
    [
        StunMessage(BINDING, StunClass.INDICATION, tid(1)),
        StunMessage(BINDING, StunClass.SUCCESS, tid(1)),
        StunMessage(BINDING, StunClass.ERROR, tid(1)),
        StunMessage(0x003, StunClass.REQUEST, tid(1)),
    ],
)
def test_non_binding_requests_are_dropped(msg: StunMessage) -> None:
    data = msg.serialize(integrity_key=LOCAL.key, fingerprint=True)
    result = agent().handle_stun(StunMessage.parse(data), data, A, 0.0)
    assert result.drop_reason == DROP_NOT_BINDING_REQUEST and result.response is None


def test_role_conflict_is_487_signed() -> None:
    ag = agent()
    result = check(ag, A, controlling=False, use_candidate=True)
    assert result.drop_reason == DROP_ROLE_CONFLICT
    resp = parse_response(result)
    assert resp.error_code == (487, "Role Conflict")
    assert verify_message_integrity(result.response or b"", LOCAL.key)
    assert ag.selected_address is None and not ag.is_validated(A)


def test_unknown_comprehension_required_attribute_is_420() -> None:
    attrs = (
        StunMessage.username_attr(f"{LOCAL.ufrag}:{REMOTE_UFRAG}"),
        StunAttribute(0x7777, b"x"),
    )
    base = StunMessage(BINDING, StunClass.REQUEST, tid(4), attrs)
    data = base.serialize(integrity_key=LOCAL.key, fingerprint=True)
    ag = agent()
    result = ag.handle_stun(StunMessage.parse(data), data, A, 0.0)
    assert result.drop_reason == DROP_UNKNOWN_ATTRIBUTE
    resp = parse_response(result)
    assert resp.error_code is not None and resp.error_code[0] == 420
    assert resp.unknown_attributes == [0x7777]
    assert verify_message_integrity(result.response or b"", LOCAL.key)
    assert not ag.is_validated(A)


def test_malformed_priority_after_authentication_is_signed_400() -> None:
    attrs = (
        StunMessage.username_attr(f"{LOCAL.ufrag}:{REMOTE_UFRAG}"),
        StunAttribute(0x0024, b"\x00\x01\x02"),
    )
    msg = StunMessage(BINDING, StunClass.REQUEST, tid(9), attrs)
    data = msg.serialize(integrity_key=LOCAL.key, fingerprint=True)
    result = agent().handle_stun(StunMessage.parse(data), data, A, 0.0)
    assert result.drop_reason == DROP_BAD_REQUEST
    assert parse_response(result).error_code == (400, "Bad Request")
    assert verify_message_integrity(result.response or b"", LOCAL.key)


def test_use_candidate_after_integrity_is_ignored() -> None:
    ag = agent()
    check(ag, A, use_candidate=True)
    _, data = request(2)
    forged = append_after_integrity(data, struct.pack(">HH", USE_CANDIDATE, 0))
    msg = StunMessage.parse(forged)
    assert msg.use_candidate and verify_message_integrity(forged, LOCAL.key)
    result = ag.handle_stun(msg, forged, B, 1.0)
    assert result.accepted  # the genuine, signed part is a valid check
    assert result.events == ()
    assert ag.selected_address == A


# --------------------------------------------------------------------- nomination


def test_use_candidate_selects_and_connects() -> None:
    ag = agent()
    result = check(ag, A, use_candidate=True)
    assert result.events == (SelectedPairChanged(A, None), Connected(A))
    assert ag.selected_address == A and ag.nominated and ag.connected
    assert check(ag, A, 1.0, use_candidate=True).events == ()


def test_first_check_without_nomination_selects_tentatively() -> None:
    ag = agent()
    assert check(ag, A).events == (SelectedPairChanged(A, None), Connected(A))
    assert not ag.nominated
    assert check(ag, B, 1.0).events == ()  # later un-nominated checks do not steal it
    assert ag.selected_address == A and ag.is_validated(B)
    assert check(ag, B, 2.0, use_candidate=True).events == (SelectedPairChanged(B, A),)
    assert ag.selected_address == B and ag.nominated


def test_client_move_switches_selected_pair() -> None:
    ag = agent()
    check(ag, A, use_candidate=True)
    result = check(ag, V6, 3.0, use_candidate=True)
    assert result.events == (SelectedPairChanged(V6, A),)
    assert ag.selected_address == V6
    assert ag.is_validated(A) and ag.is_validated(V6)
    assert check(ag, A, 4.0, use_candidate=True).events == (SelectedPairChanged(A, V6),)


def test_ipv6_four_tuple_matches_two_tuple() -> None:
    ag = agent()
    four = ("2001:db8::2", 9000, 0, 0)
    check(ag, four, use_candidate=True)
    assert ag.is_validated(("2001:db8::2", 9000))
    assert ag.selected_address == four
    assert check(ag, ("2001:db8::2", 9000), 1.0, use_candidate=True).events == ()


def test_validated_set_is_bounded() -> None:
    ag = agent()
    check(ag, A, use_candidate=True)
    for i in range(5000):
        addr = (str(ipaddress.IPv4Address(0x0A000000 + i)), 1000 + i % 60000)
        assert check(ag, addr, i * 0.001).accepted
        assert len(ag.validated_addresses) <= 8
    assert ag.selected_address == A and ag.is_validated(A)  # the selected one is pinned
    assert not ag.is_validated(("10.0.0.0", 1000))  # early ones were forgotten
    assert ag.is_validated(("10.0.19.135", 1000 + 4999))


# --------------------------------------------------------------------- consent & timers


def test_consent_expires_after_30_seconds_without_checks() -> None:
    ag = agent(now=100.0)
    check(ag, A, 100.0, use_candidate=True)
    assert ag.next_timer() == pytest.approx(130.0)
    assert not ag.consent_expired(129.0)
    assert ag.consent_expired(131.0)


def test_checks_refresh_consent() -> None:
    ag = agent(now=0.0)
    check(ag, A, 0.0, use_candidate=True)
    check(ag, A, 20.0)
    assert not ag.consent_expired(49.0)
    assert ag.consent_expired(51.0)
    assert ag.next_timer() == pytest.approx(50.0)


def test_checks_on_other_addresses_do_not_refresh_selected_consent() -> None:
    ag = agent()
    check(ag, A, 0.0, use_candidate=True)
    check(ag, B, 25.0)  # valid but not nominated: A stays selected
    assert ag.selected_address == A
    assert ag.consent_expired(31.0)


def test_failed_checks_do_not_refresh_consent() -> None:
    ag = agent()
    check(ag, A, 0.0, use_candidate=True)
    check(ag, A, 25.0, pwd="wrongPassword0123456789")
    assert ag.consent_expired(31.0)


def test_custom_consent_timeout() -> None:
    ag = agent(consent_timeout=5.0)
    check(ag, A, 10.0)
    assert not ag.consent_expired(14.9) and ag.consent_expired(15.1)


def test_pending_agent_expires_after_connect_timeout() -> None:
    ag = agent(now=50.0, connect_timeout=30.0)
    assert ag.next_timer() == pytest.approx(80.0)
    assert not ag.consent_expired(79.0)
    assert ag.consent_expired(81.0)
    check(ag, A, 70.0, pwd="wrongPassword0123456789")  # a failed check keeps it pending
    assert ag.consent_expired(81.0) and not ag.connected


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError):
        IceLiteAgent(LOCAL, None, now=0.0, consent_timeout=0.0)
    with pytest.raises(ValueError):
        IceLiteAgent(LOCAL, None, now=0.0, max_addresses=0)


# --------------------------------------------------------------------- restart


def test_restart_swaps_credentials_and_keeps_selection() -> None:
    ag = agent()
    check(ag, A, 0.0, use_candidate=True)
    new = IceCredentials("newUfrag", "newPassword0123456789xyz")
    ag.restart(new, "cli2")
    assert ag.local_credentials == new and ag.remote_ufrag == "cli2"
    old = check(ag, A, 1.0, use_candidate=True)
    assert old.drop_reason == DROP_WRONG_USERNAME
    assert ag.selected_address == A and not ag.consent_expired(29.0)
    ok = check(ag, A, 10.0, creds=new, remote="cli2", use_candidate=True)
    assert ok.accepted and ok.events == ()
    assert verify_message_integrity(ok.response or b"", new.key)
    assert not verify_message_integrity(ok.response or b"", LOCAL.key)
    assert not ag.consent_expired(39.0)
    moved = check(ag, B, 11.0, creds=new, remote="cli2", use_candidate=True)
    assert moved.events == (SelectedPairChanged(B, A),)


def test_restart_with_same_ufrag_rejects_old_password() -> None:
    ag = agent()
    check(ag, A, use_candidate=True)
    ag.restart(IceCredentials(LOCAL.ufrag, "anotherPassword012345678"), REMOTE_UFRAG)
    assert check(ag, A, 1.0).drop_reason == DROP_BAD_INTEGRITY


# --------------------------------------------------------------------- ufrag routing helper


def test_ufrag_of_request() -> None:
    msg, _ = request()
    assert ufrag_of_request(msg) == LOCAL.ufrag
    no_user = StunMessage(BINDING, StunClass.REQUEST, tid(1))
    assert ufrag_of_request(no_user) is None
    for username in (b"nocolon", b":remote", b"\xff\xfe:x"):
        m = StunMessage(BINDING, StunClass.REQUEST, tid(1), (StunAttribute(0x0006, username),))
        assert ufrag_of_request(m) is None
    resp = StunMessage(BINDING, StunClass.SUCCESS, tid(1), msg.attributes)
    assert ufrag_of_request(resp) is None


# --------------------------------------------------------------------- real captures


def _capture(name: str) -> tuple[list[bytes], list[bytes]]:
    cap = next(c for c in hex_captures("stun") if c.path.stem == name)
    requests = [d for d in cap.datagrams if d[:2] == b"\x00\x01"]
    responses = [d for d in cap.datagrams if d[:2] == b"\x01\x01"]
    assert requests and responses
    return requests, responses


# From the capture comments: aiortc answered Chromium's checks with these credentials.
AIORTC = IceCredentials("Ah44", "pgLjwBhWAi5d3MW8LIaBKO")
CHROMIUM = IceCredentials("tEfi", "7rxKcyWXsjDEvr/1I4o4XAyR")


def test_chromium_requests_are_answered_like_aiortc_did() -> None:
    chrome_requests, _ = _capture("chromium")
    _, aiortc_responses = _capture("aiortc")
    by_tid = {r[8:20]: r for r in aiortc_responses}
    ag = IceLiteAgent(AIORTC, CHROMIUM.ufrag, now=0.0)
    answered = 0
    for i, data in enumerate(chrome_requests):
        msg = StunMessage.parse(data)
        assert ufrag_of_request(msg) == AIORTC.ufrag
        expected = by_tid.get(msg.transaction_id)
        # The mapped address aiortc returned is where Chromium sent the check from.
        source = StunMessage.parse(expected).xor_mapped_address if expected else ("127.0.0.1", 9)
        assert source is not None
        result = ag.handle_stun(msg, data, source, float(i))
        assert result.accepted, result.drop_reason
        assert verify_message_integrity(result.response or b"", AIORTC.key)
        if expected is not None:
            assert result.response == expected
            answered += 1
    assert answered >= 5
    assert ag.nominated and ag.connected and ag.selected_address is not None


def test_aiortc_requests_are_role_conflicts_for_a_lite_agent() -> None:
    # aiortc was ICE-controlled, so its checks carry ICE-CONTROLLED: a conflict for us.
    aiortc_requests, _ = _capture("aiortc")
    ag = IceLiteAgent(CHROMIUM, AIORTC.ufrag, now=0.0)
    for data in aiortc_requests:
        result = ag.handle_stun(StunMessage.parse(data), data, A, 0.0)
        assert result.drop_reason == DROP_ROLE_CONFLICT
        assert parse_response(result).error_code == (487, "Role Conflict")
    assert not ag.connected


# --------------------------------------------------------------------- robustness


@given(
    use_candidate=st.booleans(),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=3),
    cut=st.sampled_from([0, 0, 0, 1, 2, 3, 6]),
    refix=st.booleans(),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_requests_never_raise_or_succeed_without_integrity(
    use_candidate: bool, flips: list[tuple[int, int]], cut: int, refix: bool
) -> None:
    _, data = request(use_candidate=use_candidate)
    buf = bytearray(data)
    if cut:
        # Drop whole words from the end and keep the header length consistent.
        del buf[-4 * cut :]
        buf[2:4] = struct.pack(">H", len(buf) - 20)
    for pos, xor in flips:
        buf[pos % len(buf)] ^= xor
    mutated = bytes(buf)
    if refix and len(mutated) >= 28:
        mutated = with_fingerprint(mutated)
    try:
        msg = StunMessage.parse(mutated)
    except ParseError:
        msg = StunMessage(BINDING, StunClass.REQUEST, tid(1))  # inconsistent pair: still safe
    ag = agent()
    result = ag.handle_stun(msg, mutated, A, 0.0)
    if result.response is not None:
        resp = StunMessage.parse(result.response)
        assert result.destination == A
        if resp.msg_class == StunClass.SUCCESS:
            assert verify_message_integrity(mutated, LOCAL.key)
            assert result.accepted
    if not verify_message_integrity(mutated, LOCAL.key):
        assert not result.accepted
        assert ag.validated_addresses == frozenset() and ag.selected_address is None
