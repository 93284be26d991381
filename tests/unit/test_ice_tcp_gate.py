"""ICE-TCP without sockets: RFC 4571 framing (hypothesis), the gate's limits and timeouts
with a fake clock, passive TCP candidates in the answer, and TCP addresses in the port."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.negotiation.answer import TCP_TYPE_PREFERENCE, _host_candidates
from sfu.packet.stun import binding_request
from sfu.transport.ice import address_key, is_tcp, tcp_address
from sfu.transport.tcp import (
    DEFAULT_MAX_FRAME,
    MAX_UNAUTHENTICATED_FRAMES,
    FrameDecoder,
    FramingError,
    IceTcpGate,
    frame,
)

PEER = tcp_address("192.0.2.7", 50123)
STUN = binding_request(os.urandom(12), "a:b", b"k" * 22, 1, controlling=True, tie_breaker=1)


@given(
    st.lists(st.binary(min_size=1, max_size=DEFAULT_MAX_FRAME), max_size=8),
    st.lists(st.integers(min_value=1, max_value=4000), max_size=20),
)
def test_frames_survive_any_segmentation(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frame(p) for p in payloads)
    decoder = FrameDecoder()
    out: list[bytes] = []
    pos = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[pos : pos + cut]))
        pos += cut
        assert decoder.buffered <= DEFAULT_MAX_FRAME + 2
    out.extend(decoder.feed(stream[pos:]))
    assert out == payloads and decoder.buffered == 0


@given(st.binary(max_size=300))
def test_decoder_never_raises_anything_but_framing_errors(data: bytes) -> None:
    decoder = FrameDecoder(max_frame=256)
    try:
        for payload in decoder.feed(data):
            assert 1 <= len(payload) <= 256
    except FramingError as exc:
        assert exc.reason in ("empty_frame", "oversized_frame")
    assert decoder.buffered <= 258


def test_frame_refuses_what_rfc4571_cannot_carry() -> None:
    with pytest.raises(ValueError):
        frame(b"")
    with pytest.raises(ValueError):
        frame(b"x" * 65536)


class _Auth:
    def __init__(self) -> None:
        self.ok: set[object] = set()

    def __call__(self, addr: tuple[object, ...]) -> bool:
        return address_key(addr) in self.ok


def test_unauthenticated_connections_send_stun_only_and_are_capped() -> None:
    auth = _Auth()
    gate = IceTcpGate(auth, max_unauthenticated=2, handshake_timeout=5.0)
    delivered: list[bytes] = []
    assert gate.open(PEER, 0.0)
    assert gate.received(PEER, frame(STUN), 0.1, delivered.append) is None
    assert delivered == [STUN]
    assert gate.received(PEER, frame(b"\x80" * 20), 0.2, delivered.append) == "not_stun"
    assert gate.connection_count == 0 and gate.closed["not_stun"] == 1
    a, b, c = (tcp_address("192.0.2.7", p) for p in (1, 2, 3))
    assert gate.open(a, 0.0) and gate.open(b, 0.0) and not gate.open(c, 0.0)
    assert gate.closed["refused_capacity"] == 1
    # Silence past the handshake timeout closes both; nothing is left.
    assert gate.next_timer() == 5.0
    assert sorted(r for _, r in gate.expire(5.0)) == ["handshake_timeout"] * 2
    assert gate.connection_count == 0 and gate.next_timer() is None


def test_a_check_authenticates_and_then_idle_time_counts() -> None:
    auth = _Auth()
    gate = IceTcpGate(auth, handshake_timeout=5.0, idle_timeout=30.0)
    delivered: list[bytes] = []
    gate.open(PEER, 0.0)

    def deliver(payload: bytes) -> None:
        delivered.append(payload)
        auth.ok.add(address_key(PEER))  # the port accepted the check

    assert gate.received(PEER, frame(STUN) + frame(b"\x16" + b"d" * 40), 1.0, deliver) is None
    assert len(delivered) == 2 and gate.unauthenticated_count == 0
    assert gate.expire(10.0) == []  # past the handshake timeout, but authenticated
    assert gate.expire(31.0) == [(address_key(PEER), "idle_timeout")]


def test_too_many_unauthenticated_frames_close_the_connection() -> None:
    gate = IceTcpGate(_Auth())
    gate.open(PEER, 0.0)
    stream = frame(STUN) * (MAX_UNAUTHENTICATED_FRAMES + 1)
    assert gate.received(PEER, stream, 0.0, lambda _p: None) == "too_many_frames"


def test_oversized_and_empty_frames_close_the_connection() -> None:
    gate = IceTcpGate(_Auth(), max_frame=1500)
    gate.open(PEER, 0.0)
    assert gate.received(PEER, b"\x05\xdd", 0.0, lambda _p: None) == "oversized_frame"
    gate.open(PEER, 0.0)
    assert gate.received(PEER, b"\x00\x00", 0.0, lambda _p: None) == "empty_frame"
    assert gate.connection_count == 0


def test_tcp_addresses_never_equal_udp_ones() -> None:
    udp = ("192.0.2.7", 50123)
    assert is_tcp(PEER) and not is_tcp(udp) and not is_tcp(("::1", 5, 0, 0))
    assert address_key(PEER) != address_key(udp)


def test_answer_announces_passive_tcp_below_udp() -> None:
    cands = _host_candidates([("203.0.113.5", 40000), ("203.0.113.5", 443, "tcp")])
    udp, tcp = cands
    assert (udp.transport, tcp.transport) == ("udp", "tcp")
    assert tcp.tcptype == "passive" and tcp.port == 443
    assert tcp.priority < udp.priority and tcp.priority >> 24 == TCP_TYPE_PREFERENCE
    assert "tcptype passive" in tcp.to_value()
    with pytest.raises(ValueError):
        _host_candidates([("203.0.113.5", 1, "sctp")])
