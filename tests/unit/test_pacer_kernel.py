"""The egress pacer kernel: behaviour, and compiled == reference.

Examples run on both implementations (``each_kernels``); hypothesis drives the reference and
the compiled twin with the same random pushes, rate changes and pops and requires identical
results, down to the last bit of every deadline and delay.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath._bwe_py import WITHDRAWN
from sfu._fastpath._pacer_py import (
    AUDIO,
    BURST_TIME,
    CATCH_UP,
    MAX_QUEUE_TIME,
    PROBE,
    RETRANSMISSION,
    VIDEO,
)
from sfu.core.kernels import REFERENCE, Kernels


def _drain(
    pacer: Any, start: float, until: float, history: Any = None
) -> list[tuple[float, bytes, int]]:
    """Pop at every deadline the pacer gives from ``start`` until ``until``."""
    out: list[tuple[float, bytes, int]] = []
    now = start
    for _ in range(100000):
        out.extend((now, packet, tag) for packet, tag in pacer.pop(now, history))
        deadline = pacer.next_deadline(now)
        if deadline is None or deadline > until:
            break
        assert deadline >= now
        now = deadline
    return out


def test_unpaced_releases_everything_at_once(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    for i in range(10):
        assert pacer.push(bytes(1200), VIDEO, i, 1.0)
    assert pacer.next_deadline(1.0) == 1.0
    assert [tag for _, tag in pacer.pop(1.0)] == list(range(10))
    assert pacer.next_deadline(1.0) is None
    assert pacer.sent_packets == 10 and pacer.sent_bytes == 12000


def test_keyframe_burst_leaves_at_the_pacing_rate(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(1_600_000.0, 0.0)  # 200 kB/s
    for i in range(50):  # a 60 kB keyframe arriving at once
        pacer.push(bytes(1200), VIDEO, i, 1.0)
    sent = _drain(pacer, 1.0, 3.0)
    assert [tag for _, _, tag in sent] == list(range(50))
    span = sent[-1][0] - sent[0][0]
    # 60 kB at 200 kB/s less the 5 ms burst allowance: about 0.3 s, never at once.
    assert 0.27 < span < 0.31
    # Within any 50 ms, about 5 kB of allowance plus 5 kB of rate: never the whole burst.
    for t, _, _ in sent:
        window = sum(len(p) for s, p, _ in sent if t <= s < t + 0.05)
        assert window <= 200_000 * (0.05 + BURST_TIME) + 2 * 1200


def test_a_backlogged_pacer_woken_late_still_sends_at_its_rate(each_kernels: Kernels) -> None:
    """Released only every 20 ms (the owner's timer grid) instead of at its deadlines, a
    pacer that sent BURST_TIME of rate per wakeup carried about half its rate, and a layer
    below the rate queued until it expired. What a late wakeup owes is sent (CATCH_UP)."""
    pacer = each_kernels.Pacer()
    pacer.set_rate(1_600_000.0, 0.0)  # 200 kB/s
    sent = 0
    tag = 0
    now = 1.0
    for step in range(100):  # 2 s of a 150 kB/s layer: 125 packets of 1200 B a second
        now = 1.0 + step * 0.02
        for _ in range(2 if step % 2 else 3):
            assert pacer.push(bytes(1200), VIDEO, tag, now)
            tag += 1
        sent += sum(len(packet) for packet, _ in pacer.pop(now))
    assert pacer.expired == 0 and pacer.dropped == 0
    assert pacer.queued_bytes <= 200_000 * (CATCH_UP + BURST_TIME) + 2 * 1200
    assert sent >= 0.97 * 1200 * tag - pacer.queued_bytes
    # Idle time is not owed: after a pause the first wakeup sends no more than the burst.
    pacer.pop(now + 1.0)
    for _ in range(20):
        pacer.push(bytes(1200), VIDEO, 0, now + 2.0)
    burst = pacer.pop(now + 2.0)
    assert 1200 * len(burst) <= 200_000 * BURST_TIME + 1200 + 1


def test_video_past_the_queue_time_limit_expires_audio_goes_on(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(80_000.0, 0.0)  # 10 kB/s: 100 kB would take 10 s
    for i in range(80):
        pacer.push(bytes(1250), VIDEO, i, 1.0)
    pacer.push(bytes(100), AUDIO, 1000, 1.0)
    sent = _drain(pacer, 1.0, 20.0)
    # What the rate allowed within the limit went, then the stale video expired until what
    # remained could leave within the limit (half a second of rate: 5 kB), and the audio
    # queued behind it followed them (not 10 s later).
    video = [s for s in sent if s[2] < 1000]
    assert 6 <= len(video) <= 10 and pacer.expired == 80 - len(video)
    assert [s[2] for s in video[-3:]] == [77, 78, 79]
    assert sent[-1][2] == 1000 and sent[-1][0] - 1.0 <= 2 * MAX_QUEUE_TIME + 0.001
    assert pacer.queued_packets == 0 and pacer.next_deadline(2.0) is None
    count, total, longest = pacer.take_delays()
    assert count == len(sent) and longest == sent[-1][0] - 1.0 and 0 < total <= count * longest
    assert pacer.take_delays() == (0, 0.0, 0.0)


def test_packets_leave_in_order_audio_and_probes_without_budget(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(400_000.0, 0.0)
    pacer.push(bytes(1200), VIDEO, 0, 1.0)
    pacer.push(bytes(1200), VIDEO, 1, 1.0)
    pacer.push(bytes(100), AUDIO, 2, 1.0)
    pacer.push(bytes(255), PROBE, 3, 1.0)
    pacer.push(bytes(255), PROBE, 4, 1.0)
    pacer.push(bytes(1100), RETRANSMISSION, 5, 1.0)
    # The first video packet goes; the second waits for the budget, and so does the audio
    # behind it (overtaking would reorder transport-wide numbers: loss to the receiver).
    assert [tag for _, tag in pacer.pop(1.0)] == [0]
    deadline = pacer.next_deadline(1.0)
    assert deadline is not None and deadline > 1.0
    # Then audio and the probes at once (no budget needed at the head), and the
    # retransmission waits for the budget again.
    assert [tag for _, tag in pacer.pop(deadline)] == [1, 2, 3, 4]
    later = pacer.next_deadline(deadline)
    assert later is not None and later > deadline
    assert [tag for _, tag in pacer.pop(later)] == [5]


def test_audio_and_probes_at_the_head_need_no_budget(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(80_000.0, 0.0)
    pacer.push(bytes(1200), VIDEO, 0, 1.0)
    assert len(pacer.pop(1.0)) == 1  # deep in debt now
    pacer.push(bytes(100), AUDIO, 1, 1.0)
    pacer.push(bytes(255), PROBE, 2, 1.0)
    assert pacer.next_deadline(1.0) == 1.0
    assert [tag for _, tag in pacer.pop(1.0)] == [1, 2]


def test_probes_add_no_debt(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(400_000.0, 0.0)
    for i in range(20):
        pacer.push(bytes(255), PROBE, i, 1.0)
    assert len(pacer.pop(1.0)) == 20
    pacer.push(bytes(1200), VIDEO, 99, 1.0)
    assert pacer.next_deadline(1.0) == 1.0


def test_overflow_evicts_the_newest_lower_class_packet(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer(max_packets=4, max_bytes=100_000)
    pacer.set_rate(100_000.0, 0.0)
    pacer.pop(0.0)
    for i in range(4):
        assert pacer.push(bytes(1000), VIDEO, i, 1.0)
    assert not pacer.push(bytes(1000), VIDEO, 4, 1.0)  # no lower class: the newcomer goes
    assert pacer.dropped == 1 and pacer.evicted == 0
    assert pacer.push(bytes(1000), RETRANSMISSION, 10, 1.0)  # evicts video 3
    assert pacer.push(bytes(100), AUDIO, 20, 1.0)  # evicts video 2
    assert pacer.evicted == 2 and pacer.queued_packets == 4
    assert [tag for _, tag in _pop_all(pacer)] == [0, 1, 10, 20]


def test_a_queue_that_leaves_within_the_limit_never_expires(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(400_000.0, 0.0)  # 50 kB/s: half a second is 25 kB
    for i in range(18):  # a 21.6 kB keyframe
        pacer.push(bytes(1200), VIDEO, i, 1.0)
    sent = _drain(pacer, 1.0, 5.0)
    assert [s[2] for s in sent] == list(range(18)) and pacer.expired == 0


def test_byte_bound_and_oversized_packets(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer(max_packets=100, max_bytes=3000)
    pacer.set_rate(100_000.0, 0.0)
    assert not pacer.push(bytes(3001), AUDIO, 0, 1.0)
    assert pacer.push(bytes(1500), VIDEO, 1, 1.0)
    assert pacer.push(bytes(1500), VIDEO, 2, 1.0)
    assert not pacer.push(bytes(1), VIDEO, 3, 1.0)
    assert pacer.dropped == 2 and pacer.queued_bytes == 3000
    assert pacer.clear() == 2 and pacer.queued_bytes == 0 and pacer.next_deadline(1.0) is None


def test_clearing_from_a_class_keeps_the_higher_ones_in_order(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(8_000.0, 0.0)  # 1 kB/s: nothing below leaves on its own
    for tag, cls in enumerate((VIDEO, AUDIO, RETRANSMISSION, PROBE, VIDEO, AUDIO)):
        assert pacer.push(bytes(100 + tag), cls, tag, 0.0)
    assert pacer.clear(RETRANSMISSION) == 3
    assert pacer.queued_packets == 3 and pacer.queued_bytes == 101 + 103 + 105
    assert [tag for _, tag in pacer.pop(0.0)] == [1, 3, 5]
    with pytest.raises(ValueError):
        pacer.clear(4)


def test_queued_sequence_numbers_per_ssrc_in_queue_order(each_kernels: Kernels) -> None:
    pacer = each_kernels.Pacer()
    pacer.set_rate(8_000.0, 0.0)

    def rtp(ssrc: int, seq: int) -> bytes:
        return bytes([0x80, 96]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big")

    for data, cls in (
        (rtp(7, 0xFFFF), VIDEO),
        (rtp(9, 5), AUDIO),
        (rtp(7, 0), VIDEO),
        (rtp(8, 40), RETRANSMISSION),
        (bytes(11), VIDEO),  # too short for an RTP header: not listed
        (rtp(7, 1), VIDEO),
    ):
        assert pacer.push(data, cls, -1, 0.0)
    assert pacer.queued_seqs(VIDEO) == {7: [0xFFFF, 0, 1]}
    assert pacer.queued_seqs(RETRANSMISSION) == {7: [0xFFFF, 0, 1], 8: [40]}
    assert pacer.queued_seqs() == {7: [0xFFFF, 0, 1], 8: [40], 9: [5]}
    with pytest.raises(ValueError):
        pacer.queued_seqs(4)


def test_rejects_bad_arguments(each_kernels: Kernels) -> None:
    with pytest.raises(ValueError):
        each_kernels.Pacer(max_packets=0)
    with pytest.raises(ValueError):
        each_kernels.Pacer(max_bytes=0)
    with pytest.raises(ValueError):
        each_kernels.Pacer().push(b"x", 4, 0, 0.0)


def test_release_restamps_the_send_history(each_kernels: Kernels) -> None:
    history = each_kernels.SendHistory(16)
    pacer = each_kernels.Pacer()
    pacer.set_rate(80_000.0, 0.0)  # 10 kB/s
    for _ in range(3):
        seq = history.record(1000, 1.0, -1)
        pacer.push(bytes(1000), VIDEO, seq, 1.0)
    pacer.push(bytes(10), AUDIO, -1, 1.0)  # no sequence number: nothing restamped
    sent = _drain(pacer, 1.0, 2.0, history)
    assert len(sent) == 4
    for t, _, seq in sent:
        if seq >= 0:
            pacer_time = history.lookup(seq)
            assert pacer_time is not None and pacer_time[0] == t
    assert sent[-1][0] > 1.0  # the third waited for the budget
    assert not history.restamp(5, 1.0)  # never sent


def test_discarded_numbered_packets_are_withdrawn_from_the_history(
    each_kernels: Kernels,
) -> None:
    """Dropped, evicted, expired and cleared packets were numbered when queued but never
    left: the next pop with the history marks them withdrawn (unnumbered ones need not)."""
    history = each_kernels.SendHistory(64)
    pacer = each_kernels.Pacer(max_packets=4)
    pacer.set_rate(8_000.0, 0.0)  # 1 kB/s
    seqs = [history.record(500, 0.0, -1) for _ in range(6)]
    for seq in seqs[:4]:
        assert pacer.push(bytes(500), VIDEO, seq, 0.0)
    assert pacer.push(bytes(100), AUDIO, -1, 0.0)  # evicts the newest video (seqs[3])
    assert not pacer.push(bytes(500), VIDEO, seqs[4], 0.0)  # full of no lower class: dropped
    assert pacer.withdrawn_pending == 2 and history.withdrawn == 0
    released = pacer.pop(0.0, history)  # the first video spends the budget
    assert [tag for _, tag in released] == [seqs[0]]
    assert pacer.withdrawn_pending == 0 and history.withdrawn == 2
    assert [history.lookup(s)[2] for s in seqs[3:5]] == [WITHDRAWN, WITHDRAWN]  # type: ignore[index]
    assert pacer.clear(VIDEO) == 2  # seqs[1] and seqs[2]
    assert pacer.push(bytes(600), VIDEO, seqs[5], 0.0)
    audio = pacer.pop(0.0)  # the audio, now at the head; without a history nothing is withdrawn
    assert [tag for _, tag in audio] == [-1] and pacer.withdrawn_pending == 2
    pacer.pop(1.0, history)  # seqs[5] expired (1 s in the queue, more than the rate sends)
    assert pacer.expired == 1 and history.withdrawn == 5
    assert history.lookup(seqs[0])[2] == -1  # type: ignore[index]
    assert not history.withdraw(seqs[0] + 100)  # never numbered


def _pop_all(pacer: Any) -> list[tuple[bytes, int]]:
    pacer.set_rate(0.0, 1.1)  # unpaced: everything goes (nothing has expired yet)
    out: list[tuple[bytes, int]] = pacer.pop(1.1)
    return out


_op = st.one_of(
    st.tuples(
        st.just("push"),
        st.integers(0, 1600),
        st.integers(0, 3),
        st.one_of(st.integers(-3, 5), st.integers(-(2**40), 2**40)),
        st.floats(0.0, 0.02),
    ),
    st.tuples(st.just("rate"), st.floats(-1e5, 5e6), st.floats(0.0, 0.05)),
    st.tuples(st.just("pop"), st.floats(0.0, 0.05)),
    st.tuples(st.just("deadline"), st.floats(0.0, 0.01)),
    st.tuples(st.just("delays")),
    st.tuples(st.just("clear"), st.integers(0, 3)),
    st.tuples(st.just("seqs"), st.integers(0, 3)),
)


def _run(pacer: Any, history: Any, ops: list[tuple[Any, ...]]) -> list[Any]:
    for _ in range(4):
        history.record(100, 0.5, -1)
    now = 1.0
    trace: list[Any] = []
    for op in ops:
        if op[0] == "push":
            now += op[4]
            trace.append(pacer.push(bytes([op[1] & 0xFF]) * op[1], op[2], op[3], now))
        elif op[0] == "rate":
            now += op[2]
            pacer.set_rate(op[1], now)
        elif op[0] == "pop":
            now += op[1]
            trace.append(pacer.pop(now, history))
            trace.append([history.lookup(seq) for seq in range(4)])
        elif op[0] == "deadline":
            now += op[1]
            deadline = pacer.next_deadline(now)
            trace.append(deadline)
            if deadline is not None:
                now = deadline
                trace.append(pacer.pop(now))
        elif op[0] == "delays":
            trace.append(pacer.take_delays())
        elif op[0] == "seqs":
            trace.append(pacer.queued_seqs(op[1]))
        else:
            trace.append(pacer.clear(op[1]))
        trace.append(
            (
                pacer.queued_packets,
                pacer.queued_bytes,
                pacer.sent_packets,
                pacer.sent_bytes,
                pacer.dropped,
                pacer.evicted,
                pacer.expired,
                pacer.rate_bps,
                pacer.withdrawn_pending,
                history.withdrawn,
            )
        )
    return trace


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(_op, max_size=120),
    bounds=st.sampled_from([(512, 393216), (8, 100_000), (64, 5000)]),
)
def test_compiled_equals_reference(
    compiled_kernels: Kernels, ops: list[tuple[Any, ...]], bounds: tuple[int, int]
) -> None:
    reference = _run(REFERENCE.Pacer(*bounds), REFERENCE.SendHistory(16), ops)
    compiled = _run(compiled_kernels.Pacer(*bounds), compiled_kernels.SendHistory(16), ops)
    assert compiled == reference
