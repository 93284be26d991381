"""The send history and delay detector kernel: behaviour, and compiled == reference.

Examples run on both implementations (``each_kernels``); hypothesis drives the reference and
the compiled twin with the same random send/feedback sequences and requires identical
results, down to the last bit of every float.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath._bwe_py import NORMAL, OVERUSE, THRESHOLD_MAX, THRESHOLD_MIN, UNDERUSE
from sfu.core.kernels import REFERENCE, Kernels


def test_history_numbers_packets_and_wraps(each_kernels: Kernels) -> None:
    history = each_kernels.SendHistory(16)
    assert [history.record(100 + i, 1.0 + i, -1) for i in range(3)] == [0, 1, 2]
    assert history.next_seq == 3 and history.packets == 3 and history.bytes == 303
    assert history.lookup(1) == (2.0, 101, -1)
    assert history.lookup(3) is None  # not sent yet
    for _ in range(70000 - 3):
        history.record(10, 5.0, 7)
    assert history.next_seq == 70000 & 0xFFFF
    assert history.lookup((70000 - 1) & 0xFFFF) == (5.0, 10, 7)
    assert history.lookup((70000 - 17) & 0xFFFF) is None  # overwritten: the ring holds 16


def test_history_rejects_bad_capacity(each_kernels: Kernels) -> None:
    for bad in (0, 15, 24, 1 << 21):
        with pytest.raises(ValueError):
            each_kernels.SendHistory(bad)


def _drive(kernels: Kernels, queue_growth: float, n: int = 400) -> tuple[Any, Any]:
    """Groups of 3 packets every 10 ms; each group's one-way delay grows by ``queue_growth``
    seconds (negative: a queue draining). Feedback every 5 groups."""
    history = kernels.SendHistory(1024)
    detector = kernels.DelayDetector()
    delay = 0.05
    seqs: list[int] = []
    arrivals: list[int] = []
    for g in range(n):
        send = 1.0 + g * 0.010
        delay = max(0.02, delay + queue_growth)
        for k in range(3):
            seqs.append(history.record(1000, send + k * 0.0005, -1))
            arrivals.append(round((send + delay + k * 0.0006) * 1e6))
        if g % 5 == 4:
            detector.on_feedback(history, seqs, arrivals)
            seqs, arrivals = [], []
    return history, detector


def test_steady_delay_is_normal(each_kernels: Kernels) -> None:
    _, detector = _drive(each_kernels, 0.0)
    assert detector.state == NORMAL
    assert THRESHOLD_MIN <= detector.threshold <= THRESHOLD_MAX


def test_growing_delay_is_overuse(each_kernels: Kernels) -> None:
    _, detector = _drive(each_kernels, 0.001, n=60)
    assert detector.state == OVERUSE and detector.trend > 0


def test_shrinking_delay_is_underuse(each_kernels: Kernels) -> None:
    history = each_kernels.SendHistory(1024)
    detector = each_kernels.DelayDetector()
    _drive(each_kernels, 0.0)
    seqs, arrivals = [], []
    delay = 0.3
    for g in range(60):
        send = 1.0 + g * 0.010
        delay -= 0.002
        seqs.append(history.record(1000, send, -1))
        arrivals.append(round((send + delay) * 1e6))
    detector.on_feedback(history, seqs, arrivals)
    assert detector.state == UNDERUSE and detector.trend < 0


def test_feedback_sums_and_counts_each_packet_once(each_kernels: Kernels) -> None:
    history = each_kernels.SendHistory(64)
    detector = each_kernels.DelayDetector()
    for i in range(10):
        history.record(500, 1.0 + i * 0.01, 3 if i < 5 else -1)
    seqs = list(range(10))
    arrivals = [2_000_000 + i * 10_000 for i in range(10)]
    got = detector.on_feedback(history, seqs, arrivals)
    assert got == (10, 5000, 1.0, 1.09, 2.0, 2.09)
    assert detector.on_feedback(history, seqs, arrivals)[0] == 0  # already acknowledged
    packets, size, first_size, last_size, s0, s1, a0, a1 = detector.cluster(3)
    assert (packets, size, first_size, last_size) == (5, 2500, 500, 500)
    assert (s0, s1, a0, a1) == (1.0, 1.04, 2.0, 2.04)
    assert detector.cluster(4)[0] == 0 and detector.cluster(-1)[0] == 0
    # Unknown sequence numbers (never sent) are ignored.
    assert detector.on_feedback(history, [40000], [5])[0] == 0


feeds = st.lists(
    st.tuples(
        st.integers(1, 12),  # packets sent before the next feedback
        st.floats(0.0, 0.02),  # send spacing
        st.integers(-3000, 3000),  # arrival jitter (µs)
        st.integers(-5000, 8000),  # queue change per packet (µs)
        st.floats(0.0, 0.3),  # share lost
        st.booleans(),  # reorder the feedback
        st.integers(-1, 9),  # cluster id
        st.integers(50, 1300),  # size
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(feeds=feeds, seed=st.integers(0, 2**32 - 1), capacity=st.sampled_from([16, 64, 4096]))
def test_compiled_matches_reference(
    compiled_kernels: Kernels, feeds: list[tuple[Any, ...]], seed: int, capacity: int
) -> None:
    rng = random.Random(seed)
    worlds = [
        (REFERENCE.SendHistory(capacity), REFERENCE.DelayDetector()),
        (compiled_kernels.SendHistory(capacity), compiled_kernels.DelayDetector()),
    ]
    now = 100.0
    queue = 20_000
    for count, spacing, jitter, growth, lost, reorder, cluster, size in feeds:
        seqs: list[int] = []
        arrivals: list[int] = []
        for _ in range(count):
            now += spacing
            queue = max(0, queue + growth)
            results = [h.record(size, now, cluster) for h, _ in worlds]
            assert results[0] == results[1]
            if rng.random() >= lost:
                seqs.append(results[0])
                arrivals.append(round(now * 1e6) + queue + rng.randint(-abs(jitter), abs(jitter)))
        if rng.random() < 0.1:
            seqs.append(rng.randrange(0x10000))  # a sequence number from nowhere
            arrivals.append(rng.randrange(-(2**40), 2**40))
        if reorder:
            pairs = list(zip(seqs, arrivals, strict=True))
            rng.shuffle(pairs)
            seqs = [p[0] for p in pairs]
            arrivals = [p[1] for p in pairs]
        if rng.random() < 0.2:  # a pacer withdraws a number (maybe acked, or unknown)
            seq = rng.randrange(0x10000) if rng.random() < 0.3 else results[0]
            assert worlds[0][0].withdraw(seq) == worlds[1][0].withdraw(seq)
        got = [d.on_feedback(h, seqs, arrivals) for h, d in worlds]
        assert got[0] == got[1]
        ref, comp = worlds[0][1], worlds[1][1]
        assert (comp.state, comp.trend, comp.threshold) == (ref.state, ref.trend, ref.threshold)
        for c in range(-1, 10):
            assert comp.cluster(c) == ref.cluster(c)
        h_ref, h_comp = worlds[0][0], worlds[1][0]
        assert (h_comp.packets, h_comp.bytes, h_comp.next_seq, h_comp.withdrawn) == (
            h_ref.packets,
            h_ref.bytes,
            h_ref.next_seq,
            h_ref.withdrawn,
        )
        for seq in seqs[:5]:
            assert h_comp.lookup(seq) == h_ref.lookup(seq)
