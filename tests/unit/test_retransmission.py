"""RetransmissionBuffer (packet cache per source stream) and RetransmissionThrottle."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath._pacer_py import RETRANSMISSION, VIDEO
from sfu.core.kernels import REFERENCE
from sfu.core.pacing import PacedSender
from sfu.core.retransmission import MIN_RTT, RetransmissionBuffer, RetransmissionThrottle
from sfu.packet.seqnum import SequenceUnwrapper


def _pkt(ext_seq: int, size: int = 100) -> bytes:
    """A distinguishable payload for ``ext_seq``: its seq bytes, then filler."""
    head = ext_seq.to_bytes(8, "big")
    return (head + bytes([ext_seq & 0xFF]) * size)[:size]


def test_put_then_get_returns_an_identical_copy() -> None:
    buf = RetransmissionBuffer()
    packet = bytearray(_pkt(70000, 1200))
    buf.put(packet, 70000, now=1.0)
    packet[0] ^= 0xFF  # mutating the caller's buffer must not change the stored copy
    got = buf.get(70000, now=1.1)
    assert got is not None
    assert bytes(got) == _pkt(70000, 1200)
    assert (buf.stored, buf.hits, buf.misses) == (1, 1, 0)
    assert buf.newest == 70000


def test_accepts_memoryview_and_bytes_like_input() -> None:
    buf = RetransmissionBuffer(capacity=8)
    buf.put(memoryview(b"abcdef")[1:4], 5, now=0.0)
    got = buf.get(5, now=0.0)
    assert got is not None and bytes(got) == b"bcd"


def test_get_of_never_stored_and_negative_seq_is_a_miss() -> None:
    buf = RetransmissionBuffer(capacity=16)
    assert buf.get(3, now=0.0) is None
    buf.put(b"x", 3, now=0.0)
    assert buf.get(3 + 16, now=0.0) is None  # same slot, different packet
    assert buf.get(-1, now=0.0) is None
    assert buf.misses == 3
    assert buf.newest == 3


def test_wire_seq_wrap_through_extended_values() -> None:
    buf = RetransmissionBuffer(capacity=64)
    unwrap = SequenceUnwrapper()
    exts = []
    for i in range(40):
        wire = (65520 + i) & 0xFFFF  # crosses 65535 -> 0
        ext = unwrap.unwrap(wire)
        exts.append(ext)
        buf.put(_pkt(ext), ext, now=0.0)
    assert exts == list(range(exts[0], exts[0] + 40))
    for ext in exts:
        got = buf.get(ext, now=0.5)
        assert got is not None and bytes(got) == _pkt(ext)
    # The same wire value one wrap earlier is another extended seq (same slot): not found.
    assert buf.get(exts[-1] - 65536, now=0.5) is None


def test_overwritten_after_capacity_packets() -> None:
    cap = 32
    buf = RetransmissionBuffer(capacity=cap)
    for s in range(1000, 1000 + 3 * cap):
        buf.put(_pkt(s), s, now=0.0)
    for s in range(1000, 1000 + 2 * cap):
        assert buf.get(s, now=0.0) is None
    for s in range(1000 + 2 * cap, 1000 + 3 * cap):
        got = buf.get(s, now=0.0)
        assert got is not None and bytes(got) == _pkt(s)


def test_late_packet_does_not_evict_a_newer_one() -> None:
    buf = RetransmissionBuffer(capacity=16)
    buf.put(b"new", 40, now=0.0)
    buf.put(b"old", 40 - 16, now=0.0)  # same slot, older
    assert buf.too_old == 1
    got = buf.get(40, now=0.0)
    assert got is not None and bytes(got) == b"new"
    assert buf.get(24, now=0.0) is None


def test_reput_same_seq_replaces() -> None:
    buf = RetransmissionBuffer(capacity=16)
    buf.put(b"first-version", 9, now=0.0)
    buf.put(b"second", 9, now=0.2)
    got = buf.get(9, now=1.1)  # aged from the second put, not the first
    assert got is not None and bytes(got) == b"second"


def test_max_age() -> None:
    buf = RetransmissionBuffer(max_age=0.5)
    buf.put(b"p", 100, now=10.0)
    assert buf.get(100, now=10.5) is not None  # exactly max_age is still served
    assert buf.get(100, now=10.5001) is None
    assert (buf.hits, buf.misses) == (1, 1)
    default = RetransmissionBuffer()
    default.put(b"p", 1, now=0.0)
    assert default.max_age == 1.0
    assert default.get(1, now=0.99) is not None
    assert default.get(1, now=1.01) is None


def test_too_large_is_counted_not_stored() -> None:
    buf = RetransmissionBuffer(capacity=16, max_size=100)
    buf.put(bytes(100), 1, now=0.0)
    buf.put(bytes(101), 2, now=0.0)
    assert (buf.stored, buf.too_large) == (1, 1)
    assert buf.get(1, now=0.0) is not None
    assert buf.get(2, now=0.0) is None


def test_clear_forgets_packets_but_keeps_counters() -> None:
    buf = RetransmissionBuffer(capacity=16)
    for s in range(10):
        buf.put(b"abc", s, now=0.0)
    buf.clear()
    assert all(buf.get(s, now=0.0) is None for s in range(10))
    assert buf.stored == 10
    assert buf.newest is None
    buf.put(b"z", 3, now=0.0)  # usable again after clear, even with lower seqs
    assert buf.get(3, now=0.0) is not None


def test_storage_is_preallocated_and_never_grows() -> None:
    buf = RetransmissionBuffer(capacity=64, max_size=1500)
    arrays = (buf._data, buf._lengths, buf._seqs, buf._times)
    ids = tuple(id(a) for a in arrays)
    shapes = tuple(a.shape for a in arrays)
    pointers = tuple(a.ctypes.data for a in arrays)
    assert buf.memory_bytes == 64 * 1500 + 64 * (4 + 8 + 8)
    for s in range(5000):
        buf.put(_pkt(s, 1 + s % 1500), s, now=s * 0.001)
    assert tuple(id(a) for a in arrays) == ids
    assert tuple(a.shape for a in arrays) == shapes
    assert tuple(a.ctypes.data for a in arrays) == pointers
    assert buf.memory_bytes == 64 * 1500 + 64 * 20
    assert buf.stored == 5000


def test_default_memory_cost_is_documented_size() -> None:
    buf = RetransmissionBuffer()
    assert buf.capacity == 1024 and buf.max_size == 1500
    assert buf.memory_bytes == 1024 * 1500 + 1024 * 20


@pytest.mark.parametrize("capacity", [0, 3, 1000, -8])
def test_capacity_must_be_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError):
        RetransmissionBuffer(capacity=capacity)


def test_negative_seq_rejected_on_put() -> None:
    buf = RetransmissionBuffer(capacity=8)
    with pytest.raises(ValueError):
        buf.put(b"x", -1, now=0.0)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 64)),
        min_size=1,
        max_size=200,
    )
)
def test_matches_a_model_of_the_last_packet_per_slot(ops: list[tuple[int, int]]) -> None:
    """Whatever the put order, get() returns exactly what a simple per-slot model says."""
    cap = 16
    buf = RetransmissionBuffer(capacity=cap, max_size=48)
    model: dict[int, tuple[int, bytes]] = {}  # slot -> (ext_seq, packet)
    for seq, size in ops:
        data = _pkt(seq, size)
        buf.put(data, seq, now=0.0)
        if size <= 48:
            held = model.get(seq % cap)
            if held is None or held[0] <= seq:
                model[seq % cap] = (seq, data)
    for seq in range(0, 401):
        got = buf.get(seq, now=0.0)
        held = model.get(seq % cap)
        if held is not None and held[0] == seq:
            assert got is not None and bytes(got) == held[1]
        else:
            assert got is None


def test_throttle_refuses_repeats_within_rtt() -> None:
    th = RetransmissionThrottle(rtt=0.1)
    assert th.allow(500, now=1.0)
    assert not th.allow(500, now=1.05)
    assert th.allow(501, now=1.05)  # other seqs are independent
    assert th.allow(500, now=1.1)  # a full RTT later the resend is allowed again
    assert not th.allow(500, now=1.15)  # ... and measured from that resend
    assert (th.allowed, th.throttled) == (3, 2)


def test_throttle_counts_the_pacer_queue_as_part_of_the_round_trip() -> None:
    """A resend that waits 0.3 s in an egress pacer has not left yet: repeats of the NACK
    until it could have arrived and been missed (hold + RTT) are duplicates."""
    th = RetransmissionThrottle(rtt=0.01)
    assert th.allow(7, now=1.0, hold=0.3)
    assert not th.allow(7, now=1.05)  # the receiver repeats its NACK every few ms...
    assert not th.allow(7, now=1.305)  # ... until the resend left and had its round trip
    assert th.allow(7, now=1.311)
    assert th.allow(8, now=1.0, hold=-1.0)  # a negative hold is none
    assert not th.allow(8, now=1.005) and th.allow(8, now=1.011)


def test_a_paced_senders_queue_delay_is_what_is_queued_at_its_rate() -> None:
    pacer = REFERENCE.Pacer()
    sender = PacedSender(cast(Any, None), pacer, None, RETRANSMISSION, lambda: None)
    assert sender.queue_delay() == 0.0  # unpaced
    pacer.set_rate(80_000.0, 0.0)  # 10 kB/s
    assert sender.queue_delay() == 0.0
    for _ in range(3):
        assert pacer.push(bytes(1000), VIDEO, -1, 0.0)
    assert sender.queue_delay() == pytest.approx(0.3)


def test_throttle_default_and_minimum_rtt() -> None:
    assert RetransmissionThrottle().rtt == 0.05
    th = RetransmissionThrottle(rtt=0.001)
    assert th.rtt == MIN_RTT == 0.01
    assert th.allow(1, now=0.0)
    assert not th.allow(1, now=0.009)
    assert th.allow(1, now=0.0101)
    th.update_rtt(0.2)
    assert th.rtt == 0.2
    assert not th.allow(1, now=0.2)
    th.update_rtt(0.0)
    assert th.rtt == MIN_RTT


def test_throttle_state_is_bounded_ring() -> None:
    th = RetransmissionThrottle(rtt=1.0, capacity=8)
    assert th.allow(3, now=0.0)
    assert th.allow(3 + 8, now=0.0)  # evicts the record of 3 (same slot)
    assert th.allow(3, now=0.1)  # so 3 is allowed again: bounded memory, not exactness
    for s in range(100_000):
        th.allow(s, now=0.0)
    assert len(th._seqs) == 8 and len(th._times) == 8


def test_throttle_clear() -> None:
    th = RetransmissionThrottle(rtt=1.0)
    assert th.allow(7, now=0.0)
    th.clear()
    assert th.allow(7, now=0.1)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(st.tuples(st.integers(0, 20), st.floats(0.0, 0.05)), min_size=1, max_size=100),
    rtt=st.floats(0.0, 0.2),
)
def test_throttle_never_allows_two_resends_within_rtt(
    events: list[tuple[int, float]], rtt: float
) -> None:
    th = RetransmissionThrottle(rtt=rtt)
    now = 0.0
    last_allowed: dict[int, float] = {}
    for seq, dt in events:
        now += dt
        ok = th.allow(seq, now)
        prev = last_allowed.get(seq)
        # Small seqs never collide in the ring, so the throttle is exact here.
        assert ok == (prev is None or now - prev >= th.rtt)
        if ok:
            last_allowed[seq] = now
