"""TwccRecorder: arrivals in, transport-wide CC feedback out, parsed back with TransportFeedback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.core.twcc_recorder import DEFAULT_MAX_FEEDBACK_BYTES, TwccRecorder
from sfu.packet.rtcp import TransportFeedback, parse_compound
from sfu.packet.twcc import (
    REFERENCE_TICK_US,
    STATUS_LARGE_DELTA,
    STATUS_SMALL_DELTA,
)

SENDER = 0x5F0
MEDIA = 0xCAFE
TOLERANCE_US = 126  # rounding to 250 µs ticks is within 125 µs, plus float slack


def _parse(packets: list[bytes]) -> list[TransportFeedback]:
    out = []
    for data in packets:
        (fb,) = parse_compound(data)
        assert isinstance(fb, TransportFeedback)
        assert len(data) % 4 == 0
        out.append(fb)
    return out


def _arrivals(feedbacks: list[TransportFeedback]) -> list[tuple[int, int | None]]:
    """(16-bit seq, arrival µs or None) for every status in every feedback, in order."""
    return [item for fb in feedbacks for item in fb.iter_arrivals()]


def _record(rec: TwccRecorder, arrivals: list[tuple[int, float]]) -> None:
    for seq, at in arrivals:
        rec.on_packet(seq, MEDIA, at)


def _check_times(got: list[tuple[int, int | None]], sent: dict[int, float], epoch: float) -> None:
    for seq, at in got:
        if at is not None:
            assert abs(at - (sent[seq] - epoch) * 1e6) <= TOLERANCE_US, seq


# --------------------------------------------------------------------------------------
# Feedback content
# --------------------------------------------------------------------------------------


def test_in_order_arrivals_round_trip() -> None:
    rec = TwccRecorder(SENDER)
    sent = {100 + i: 10.0 + i * 0.0013 for i in range(20)}
    _record(rec, list(sent.items()))
    (fb,) = _parse(rec.poll(11.0))
    assert (fb.sender_ssrc, fb.media_ssrc) == (SENDER, MEDIA)
    assert fb.base_seq == 100 and fb.status_count == 20
    assert fb.fb_count == 0
    assert fb.reference_time == 0  # the first packet defines arrival time zero
    got = _arrivals([fb])
    assert [s for s, _ in got] == list(range(100, 120))
    assert all(at is not None for _, at in got)
    _check_times(got, sent, epoch=10.0)
    assert {status for _, status, _ in fb.iter_packets()} == {STATUS_SMALL_DELTA}


def test_gap_and_wrap_are_reported() -> None:
    rec = TwccRecorder(SENDER)
    seqs = [65530, 65531, 65532, 65534, 65535, 1, 2, 4, 5]  # 65533, 0 and 3 missing
    sent = {seq: 3.0 + k * 0.002 for k, seq in enumerate(seqs)}
    _record(rec, list(sent.items()))
    (fb,) = _parse(rec.poll(4.0))
    assert fb.base_seq == 65530 and fb.status_count == 12
    got = _arrivals([fb])
    assert [s for s, _ in got] == [*range(65530, 65536), *range(6)]
    assert [s for s, at in got if at is None] == [65533, 0, 3]
    _check_times(got, sent, epoch=3.0)


def test_reordered_arrivals_give_negative_deltas() -> None:
    rec = TwccRecorder(SENDER)
    sent = {1: 0.0, 3: 0.010, 2: 0.020, 4: 0.021}
    _record(rec, list(sent.items()))
    (fb,) = _parse(rec.poll(1.0))
    statuses = [status for _, status, _ in fb.iter_packets()]
    assert statuses == [
        STATUS_SMALL_DELTA,
        STATUS_SMALL_DELTA,
        STATUS_LARGE_DELTA,
        STATUS_SMALL_DELTA,
    ]
    _check_times(_arrivals([fb]), sent, epoch=0.0)


def test_media_ssrc_is_the_latest_packets() -> None:
    rec = TwccRecorder(SENDER)
    rec.on_packet(1, 111, 0.0)
    rec.on_packet(2, 222, 0.001)
    (fb,) = _parse(rec.poll(1.0))
    assert fb.media_ssrc == 222


def test_feedback_continues_from_the_first_unreported_seq() -> None:
    rec = TwccRecorder(SENDER)
    _record(rec, [(10, 0.0), (11, 0.001), (12, 0.002)])
    first = _parse(rec.poll(0.05))
    _record(rec, [(14, 0.06), (15, 0.061)])  # 13 is missing
    second = _parse(rec.poll(0.1))
    assert [fb.fb_count for fb in first + second] == [0, 1]
    assert second[0].base_seq == 13 and second[0].status_count == 3
    assert [at is None for _, at in _arrivals(second)] == [True, False, False]


def test_late_and_duplicate_packets_are_ignored() -> None:
    rec = TwccRecorder(SENDER)
    _record(rec, [(10, 0.0), (12, 0.001), (12, 0.002)])
    assert rec.duplicates == 1 and rec.pending == 2
    _parse(rec.poll(0.05))
    rec.on_packet(11, MEDIA, 0.051)  # reported as lost already
    rec.on_packet(12, MEDIA, 0.052)
    rec.on_packet(9, MEDIA, 0.053)
    assert rec.late == 3 and rec.pending == 0
    assert rec.next_timer() is None
    assert rec.poll(1.0) == []


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def test_poll_waits_for_the_interval() -> None:
    rec = TwccRecorder(SENDER, interval=0.05)
    assert rec.next_timer() is None
    assert rec.poll(0.0) == []
    rec.on_packet(1, MEDIA, 1.0)
    assert rec.next_timer() == pytest.approx(1.05)
    assert rec.poll(1.04) == []
    assert len(rec.poll(1.05)) == 1
    assert rec.next_timer() is None
    rec.on_packet(2, MEDIA, 1.06)
    assert rec.next_timer() == pytest.approx(1.10)  # one interval after the last feedback
    assert rec.poll(1.08) == []
    assert len(rec.poll(1.10)) == 1
    rec.on_packet(3, MEDIA, 5.0)  # after a quiet spell: due at once
    assert rec.next_timer() == pytest.approx(1.15)
    assert len(rec.poll(5.0)) == 1
    assert rec.feedback_sent == 3


def test_fb_count_wraps_at_8_bits() -> None:
    rec = TwccRecorder(SENDER, interval=0.005)
    counts = []
    for i in range(260):
        rec.on_packet(i, MEDIA, i * 0.01)
        counts += [fb.fb_count for fb in _parse(rec.poll(i * 0.01 + 0.009))]
    assert counts == [i & 0xFF for i in range(260)]


def test_reference_time_is_24_bit_and_wraps() -> None:
    rec = TwccRecorder(SENDER, interval=1.0)
    rec.on_packet(0, MEDIA, 1000.0)
    _parse(rec.poll(1001.0))
    later = (1 << 23) * REFERENCE_TICK_US / 1e6 + 0.5  # just past the signed 24-bit range
    rec.on_packet(1, MEDIA, 1000.0 + later)
    (fb,) = _parse(rec.poll(1002.0 + later))
    ticks = int(later * 1e6) // REFERENCE_TICK_US
    assert fb.reference_time < 0
    assert fb.reference_time % (1 << 24) == ticks % (1 << 24)
    assert fb.base_seq == 1 and fb.status_count == 1


# --------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------


def test_delta_too_large_starts_a_new_feedback() -> None:
    rec = TwccRecorder(SENDER, interval=100.0)
    sent = {1: 0.0, 2: 0.001, 3: 9.0, 5: 9.001, 6: 0.5 + 9.001}
    # 2 -> 3 is 9 s (36000 ticks > 32767); 5 -> 6 is 0.5 s and fits a large delta.
    _record(rec, list(sent.items()))
    feedbacks = _parse(rec.poll(200.0))
    assert [(fb.base_seq, fb.status_count) for fb in feedbacks] == [(1, 2), (3, 4)]
    assert [fb.fb_count for fb in feedbacks] == [0, 1]
    got = _arrivals(feedbacks)
    assert [s for s, at in got if at is None] == [4]
    _check_times(got, sent, epoch=0.0)


def test_large_negative_delta_starts_a_new_feedback() -> None:
    rec = TwccRecorder(SENDER, interval=100.0)
    sent = {2: 0.0, 1: 10.0}  # seq 2 arrived 10 s before seq 1
    _record(rec, list(sent.items()))
    feedbacks = _parse(rec.poll(200.0))
    assert [(fb.base_seq, fb.status_count) for fb in feedbacks] == [(1, 1), (2, 1)]
    _check_times(_arrivals(feedbacks), sent, epoch=0.0)


def test_feedback_is_split_to_fit_a_datagram() -> None:
    rec = TwccRecorder(SENDER, interval=10.0)
    # Alternating long and short gaps force two-bit chunks with two-octet deltas.
    sent = {}
    at = 0.0
    for seq in range(3000):
        at += 0.07 if seq % 2 else 0.0002
        sent[seq] = at
    _record(rec, list(sent.items()))
    packets = rec.poll(at + 10.0)
    assert len(packets) > 1
    assert all(len(p) <= DEFAULT_MAX_FEEDBACK_BYTES for p in packets)
    feedbacks = _parse(packets)
    got = _arrivals(feedbacks)
    assert [s for s, _ in got] == list(range(3000))
    assert all(a is not None for _, a in got)
    _check_times(got, sent, epoch=sent[0])


def test_status_count_limit_splits_feedback() -> None:
    rec = TwccRecorder(SENDER, interval=1.0)
    rec.on_packet(0, MEDIA, 0.0)
    _parse(rec.poll(1.0))
    # Walk the sequence numbers far ahead in steps the unwrapper follows, arriving in order.
    seqs = [20_000, 40_000, 60_000, 80_000 & 0xFFFF]
    for k, seq in enumerate(seqs):
        rec.on_packet(seq, MEDIA, 1.0 + k * 0.001)
    feedbacks = _parse(rec.poll(2.0))
    assert [(fb.base_seq, fb.status_count) for fb in feedbacks] == [(1, 60_000), (60_001, 20_000)]
    got = _arrivals(feedbacks)
    assert [s for s, at in got if at is not None] == seqs
    assert sum(1 for _, at in got if at is None) == 80_000 - len(seqs)


def test_small_max_feedback_bytes_still_makes_progress() -> None:
    rec = TwccRecorder(SENDER, interval=1.0, max_feedback_bytes=64)
    _record(rec, [(seq, seq * 0.05) for seq in range(100)])
    packets = rec.poll(100.0)
    assert all(len(p) <= 64 for p in packets)
    assert [s for s, _ in _arrivals(_parse(packets))] == list(range(100))


def test_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        TwccRecorder(SENDER, interval=0.0)
    with pytest.raises(ValueError):
        TwccRecorder(SENDER, max_packets=0)
    with pytest.raises(ValueError):
        TwccRecorder(SENDER, max_feedback_bytes=20)


# --------------------------------------------------------------------------------------
# Bounded memory
# --------------------------------------------------------------------------------------


def test_pending_arrivals_are_capped_dropping_the_oldest() -> None:
    rec = TwccRecorder(SENDER, max_packets=1000)
    for i in range(100_000):
        rec.on_packet(i & 0xFFFF, MEDIA, i * 0.0001)
        assert rec.pending <= 1000
    assert rec.dropped == 99_000
    packets = rec.poll(100.0)
    got = _arrivals(_parse(packets))
    assert [s for s, _ in got] == [i & 0xFFFF for i in range(99_000, 100_000)]
    assert all(len(p) <= DEFAULT_MAX_FEEDBACK_BYTES for p in packets)


def test_long_stream_with_regular_polls() -> None:
    rec = TwccRecorder(SENDER)
    reported = 0
    for i in range(100_000):
        now = i * 0.0005
        rec.on_packet(i & 0xFFFF, MEDIA, now)
        due = rec.next_timer()
        if due is not None and now >= due:
            for fb in _parse(rec.poll(now)):
                reported += sum(1 for _, at in fb.iter_arrivals() if at is not None)
        assert rec.pending <= 101
    reported += len(_arrivals(_parse(rec.poll(1e9))))
    assert reported == 100_000
    assert rec.dropped == rec.late == rec.duplicates == 0


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

_ARRIVALS = st.lists(
    st.tuples(st.integers(0, 3000), st.floats(0.0, 0.2, allow_nan=False)),
    min_size=1,
    max_size=200,
)


@given(start=st.integers(0, 0xFFFF), arrivals=_ARRIVALS, t0=st.floats(0.0, 1e6))
def test_single_poll_reports_exactly_the_received_set(
    start: int, arrivals: list[tuple[int, float]], t0: float
) -> None:
    """Any arrival order and timing: feedback parses and reports each received seq once."""
    rec = TwccRecorder(SENDER, interval=0.05)
    first_at: dict[int, float] = {}
    now = t0
    for offset, step in arrivals:
        now += step
        seq = (start + offset) & 0xFFFF
        rec.on_packet(seq, MEDIA, now)
        first_at.setdefault(seq, now)
    packets = rec.poll(now + 1.0)
    feedbacks = _parse(packets)
    assert [fb.fb_count for fb in feedbacks] == list(range(len(feedbacks)))
    got = _arrivals(feedbacks)
    received = [s for s, at in got if at is not None]
    assert sorted(received) == sorted(first_at)
    assert len(set(s for s, _ in got)) == len(got)  # each seq appears in one status only
    offsets = [offset for offset, _ in arrivals]
    assert len(got) == max(offsets) - min(offsets) + 1  # the missing ones are reported lost
    assert all(s in first_at for s, at in got if at is not None)
    assert all(s not in first_at for s, at in got if at is None)
    _check_times(got, first_at, epoch=t0 + arrivals[0][1])
    assert all(len(p) <= DEFAULT_MAX_FEEDBACK_BYTES for p in packets)


@given(
    arrivals=_ARRIVALS,
    polls=st.lists(st.booleans(), min_size=200, max_size=200),
)
def test_repeated_polls_account_for_every_arrival(
    arrivals: list[tuple[int, float]], polls: list[bool]
) -> None:
    """Every arrival is reported once, or counted as late or duplicate; never both."""
    rec = TwccRecorder(SENDER, interval=0.05)
    now = 0.0
    first_at: dict[int, float] = {}
    seen: list[tuple[int, int | None]] = []
    for (seq, step), poll_now in zip(arrivals, polls, strict=False):
        now += step
        rec.on_packet(seq, MEDIA, now)
        first_at.setdefault(seq, now)
        if poll_now:
            seen += _arrivals(_parse(rec.poll(now)))
    seen += _arrivals(_parse(rec.poll(now + 1.0)))
    received = [s for s, at in seen if at is not None]
    assert len(received) == len(set(received))
    assert len(set(s for s, _ in seen)) == len(seen)
    assert len(received) + rec.late + rec.duplicates == len(arrivals)
    assert set(received) <= set(first_at)
    _check_times(seen, first_at, epoch=arrivals[0][1])
    assert rec.pending == 0 and rec.next_timer() is None
