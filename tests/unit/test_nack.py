"""NackGenerator (RFC 4585 §6.2.1 receiver side) and build_nacks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.core.nack import MAX_PAIRS_PER_NACK, NackGenerator, build_nacks
from sfu.packet.rtcp import Nack, parse_compound
from sfu.packet.seqnum import SequenceUnwrapper

BASE = 1 << 16  # SequenceUnwrapper places the first packet here or above


def _feed(gen: NackGenerator, seqs: list[int], now: float) -> None:
    for s in seqs:
        gen.on_packet(s, now)


def test_in_order_stream_never_nacks() -> None:
    gen = NackGenerator()
    for i in range(500):
        gen.on_packet(BASE + i, now=i * 0.001)
    assert gen.next_timer() is None
    assert gen.poll(10.0, rtt=0.05) == []
    assert gen.outstanding == 0 and gen.requested == 0


def test_gap_is_requested_after_reorder_delay() -> None:
    gen = NackGenerator(reorder_delay=0.01)
    _feed(gen, [BASE + 1, BASE + 2, BASE + 5], now=1.0)
    assert gen.missing() == [BASE + 3, BASE + 4]
    assert gen.next_timer() == pytest.approx(1.01)
    assert gen.poll(1.005, rtt=0.05) == []  # still within the reorder delay
    assert gen.poll(1.01, rtt=0.05) == [3, 4]
    assert gen.requested == 2


def test_zero_reorder_delay_requests_immediately() -> None:
    gen = NackGenerator(reorder_delay=0.0)
    _feed(gen, [BASE, BASE + 2], now=3.0)
    assert gen.next_timer() == 3.0
    assert gen.poll(3.0, rtt=0.1) == [1]


def test_reordered_packet_within_delay_is_never_requested() -> None:
    gen = NackGenerator(reorder_delay=0.01)
    gen.on_packet(BASE + 10, now=0.0)
    gen.on_packet(BASE + 12, now=0.001)
    gen.on_packet(BASE + 11, now=0.004)  # only reordered
    assert gen.outstanding == 0
    assert gen.next_timer() is None
    assert gen.poll(1.0, rtt=0.05) == []
    assert gen.recovered == 1


def test_retries_spaced_by_rtt_with_floor_and_limited() -> None:
    gen = NackGenerator(reorder_delay=0.0, min_interval=0.02, max_requests=10)
    _feed(gen, [BASE, BASE + 2], now=0.0)
    rtt = 0.005  # below the 20 ms floor
    times: list[float] = []
    now = 0.0
    while now < 2.0:
        if gen.poll(now, rtt) == [1]:
            times.append(now)
        now = round(now + 0.001, 6)
    assert len(times) == 10
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.02 - 1e-9 for g in gaps)
    assert all(g <= 0.021 + 1e-9 for g in gaps)  # re-requested as soon as allowed
    assert gen.outstanding == 0
    assert gen.given_up == 1
    assert gen.next_timer() is None


def test_retry_interval_follows_rtt_when_larger() -> None:
    gen = NackGenerator(reorder_delay=0.0)
    _feed(gen, [BASE, BASE + 2], now=0.0)
    assert gen.poll(0.0, rtt=0.15) == [1]
    assert gen.next_timer() == pytest.approx(0.15)
    assert gen.poll(0.149, rtt=0.15) == []
    assert gen.poll(0.15, rtt=0.15) == [1]


def test_gives_up_one_interval_after_last_request() -> None:
    gen = NackGenerator(reorder_delay=0.0, max_requests=2)
    rtt = 0.125  # binary-exact times keep the deadline comparisons exact
    _feed(gen, [BASE, BASE + 2], now=0.0)
    assert gen.poll(0.0, rtt) == [1]
    assert gen.poll(0.125, rtt) == [1]
    assert gen.outstanding == 1  # the last request still has a round trip to be answered
    gen.on_packet(BASE + 1, now=0.1875, is_rtx=True)
    assert gen.outstanding == 0 and gen.recovered == 1 and gen.given_up == 0
    _feed(gen, [BASE + 4], now=0.25)
    assert gen.poll(0.25, rtt) == [3]
    assert gen.poll(0.375, rtt) == [3]
    assert gen.outstanding == 1
    assert gen.poll(0.5, rtt) == []
    assert gen.given_up == 1 and gen.outstanding == 0


def test_rtx_fills_hole_and_rtx_ahead_prevents_one() -> None:
    gen = NackGenerator(reorder_delay=0.0)
    _feed(gen, [BASE, BASE + 3], now=0.0)
    gen.on_packet(BASE + 1, now=0.001, is_rtx=True)
    assert gen.missing() == [BASE + 2]
    gen.on_packet(BASE + 6, now=0.002, is_rtx=True)  # RTX ahead of the newest original
    assert gen.newest == BASE + 3
    gen.on_packet(BASE + 8, now=0.003)
    assert gen.missing() == [BASE + 2, BASE + 4, BASE + 5, BASE + 7]


def test_duplicates_and_old_packets_do_nothing() -> None:
    gen = NackGenerator(reorder_delay=0.0)
    _feed(gen, [BASE + 100, BASE + 102, BASE + 102, BASE + 50], now=0.0)
    assert gen.missing() == [BASE + 101]
    assert gen.newest == BASE + 102
    assert gen.recovered == 0


def test_first_packet_rtx_is_ignored() -> None:
    gen = NackGenerator()
    gen.on_packet(BASE + 9, now=0.0, is_rtx=True)
    assert gen.newest is None
    gen.on_packet(BASE + 20, now=0.0)
    assert gen.newest == BASE + 20 and gen.outstanding == 0


def test_huge_jump_resets_and_asks_for_keyframe() -> None:
    gen = NackGenerator(reorder_delay=0.0)
    _feed(gen, [BASE, BASE + 3], now=0.0)
    assert gen.outstanding == 2
    assert not gen.take_keyframe_request()
    gen.on_packet(BASE + 3 + 1002, now=0.1)  # 1001 missing: more than can be tracked
    assert gen.outstanding == 0
    assert gen.resets == 1 and gen.keyframe_requests == 1
    assert gen.newest == BASE + 1005
    assert gen.take_keyframe_request()
    assert not gen.take_keyframe_request()  # reported once
    assert gen.next_timer() is None
    gen.on_packet(BASE + 1007, now=0.2)  # tracking resumes from the new position
    assert gen.missing() == [BASE + 1006]


def test_gap_of_exactly_the_bound_is_tracked() -> None:
    gen = NackGenerator(reorder_delay=0.0, max_outstanding=1000)
    _feed(gen, [BASE, BASE + 1001], now=0.0)
    assert gen.outstanding == 1000 and gen.resets == 0


def test_outstanding_bounded_by_dropping_oldest() -> None:
    gen = NackGenerator(reorder_delay=0.0, max_outstanding=1000)
    _feed(gen, [BASE, BASE + 901], now=0.0)  # 900 missing
    _feed(gen, [BASE + 1102], now=0.01)  # 200 more: the 100 oldest are given up
    missing = gen.missing()
    assert len(missing) == 1000
    assert missing[0] == BASE + 101 and missing[-1] == BASE + 1101
    assert gen.given_up == 100 and gen.resets == 0
    assert BASE + 901 not in missing


def test_wrap_around_of_wire_seqs() -> None:
    gen = NackGenerator(reorder_delay=0.0)
    unwrap = SequenceUnwrapper()
    for wire in (65532, 65533, 65534, 1, 2):  # 65535 and 0 lost
        gen.on_packet(unwrap.unwrap(wire), now=0.0)
    assert gen.poll(0.0, rtt=0.05) == [65535, 0]
    gen.on_packet(unwrap.unwrap(0), now=0.01, is_rtx=True)
    assert gen.poll(0.05, rtt=0.05) == [65535]


def test_reset_forgets_the_stream() -> None:
    gen = NackGenerator()
    _feed(gen, [BASE, BASE + 5], now=0.0)
    gen.reset()
    assert gen.newest is None and gen.outstanding == 0 and gen.next_timer() is None
    _feed(gen, [BASE + 10, BASE + 12], now=1.0)
    assert gen.missing() == [BASE + 11]


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        NackGenerator(reorder_delay=-1.0)
    with pytest.raises(ValueError):
        NackGenerator(min_interval=0.0)
    with pytest.raises(ValueError):
        NackGenerator(max_requests=0)
    with pytest.raises(ValueError):
        build_nacks(1, 2, [1], max_pairs=0)


@st.composite
def _lossy_reordered_stream(draw: st.DrawFn) -> tuple[int, list[int], set[int]]:
    """(first wire seq, arrival order of wire seqs, lost wire seqs)."""
    start = draw(st.integers(0, 0xFFFF))
    n = draw(st.integers(2, 300))
    lost_idx = draw(st.sets(st.integers(1, n - 2), max_size=n - 2)) if n > 2 else set()
    jitter = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    kept = [i for i in range(n) if i not in lost_idx]
    # Packet 0 arrives first (it anchors the stream); the rest are locally reordered.
    order = [0, *sorted(kept[1:], key=lambda i: (i + jitter[i], i))]
    wire = [(start + i) & 0xFFFF for i in order]
    return start, wire, {(start + i) & 0xFFFF for i in lost_idx}


@settings(max_examples=200, deadline=None)
@given(
    stream=_lossy_reordered_stream(),
    reorder_delay=st.sampled_from([0.0, 0.002, 0.02]),
    rtt=st.floats(0.0, 0.2),
)
def test_every_lost_packet_requested_nothing_received_requested(
    stream: tuple[int, list[int], set[int]], reorder_delay: float, rtt: float
) -> None:
    _start, arrivals, lost = stream
    gen = NackGenerator(reorder_delay=reorder_delay)
    unwrap = SequenceUnwrapper()
    received: set[int] = set()
    requests: dict[int, list[float]] = {}
    now = 0.0
    for wire in arrivals:
        gen.on_packet(unwrap.unwrap(wire), now)
        received.add(wire)
        now += 0.001
        for seq in gen.poll(now, rtt):
            assert seq not in received
            requests.setdefault(seq, []).append(now)
    # Nothing more arrives: drive the timers until every hole is given up.
    for _ in range(1000):
        deadline = gen.next_timer()
        if deadline is None:
            break
        now = max(now + 0.005, deadline)  # coalesce nearby deadlines to bound the steps
        for seq in gen.poll(now, rtt):
            assert seq not in received
            requests.setdefault(seq, []).append(now)
    assert gen.next_timer() is None
    # Every lost packet was requested; anything else requested was only reordered (it
    # arrived, later than its request, which the in-loop assertion checked).
    assert lost <= set(requests)
    assert set(requests) - lost <= received
    if reorder_delay >= 0.02:  # longer than any reordering generated (<= ~12 ms)
        assert set(requests) == lost
    interval = max(rtt, 0.02)
    for times in requests.values():
        assert len(times) <= 10
        assert all(b - a >= interval - 1e-9 for a, b in itertools.pairwise(times))
    assert all(len(requests[seq]) == 10 for seq in lost)  # retried to the limit, then dropped
    assert gen.given_up == len(lost)
    assert gen.outstanding == 0


def test_build_nacks_round_trip_through_parse_compound() -> None:
    seqs = [65530, 65531, 65535, 0, 3, 40, 41, 1000]
    packets = build_nacks(0x11111111, 0x22222222, seqs)
    assert len(packets) == 1
    parsed = parse_compound(packets[0])
    assert len(parsed) == 1
    nack = parsed[0]
    assert isinstance(nack, Nack)
    assert (nack.sender_ssrc, nack.media_ssrc) == (0x11111111, 0x22222222)
    assert sorted(nack.lost_seqs()) == sorted(seqs)


def test_build_nacks_empty_gives_no_packets() -> None:
    assert build_nacks(1, 2, []) == []


@settings(max_examples=200, deadline=None)
@given(
    start=st.integers(0, 0xFFFF),
    offsets=st.sets(st.integers(0, 999), min_size=1, max_size=1000),
    max_pairs=st.integers(1, MAX_PAIRS_PER_NACK),
)
def test_build_nacks_splits_and_round_trips(start: int, offsets: set[int], max_pairs: int) -> None:
    seqs = [(start + o) & 0xFFFF for o in offsets]
    packets = build_nacks(7, 9, seqs, max_pairs=max_pairs)
    assert all(len(p) <= 12 + 4 * max_pairs for p in packets)
    parsed = parse_compound(b"".join(packets))
    assert len(parsed) == len(packets)
    got: list[int] = []
    for p in parsed:
        assert isinstance(p, Nack)
        assert (p.sender_ssrc, p.media_ssrc) == (7, 9)
        got.extend(p.lost_seqs())
    assert sorted(got) == sorted(seqs)  # each seq exactly once across the packets
