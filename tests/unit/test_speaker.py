"""Active speaker detection from RFC 6464 audio levels, driven by a fake clock."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.core.speaker import ActiveSpeakerDetector

SILENT = 127
PTIME = 0.02

# A level schedule: participant id and time -> level in -dBov, or None for no packet (DTX).
Schedule = Callable[[str, float], int | None]


def run(
    det: ActiveSpeakerDetector,
    schedule: Schedule,
    participants: list[str],
    start: float,
    end: float,
    poll_every: float = 0.1,
) -> list[tuple[float, list[str]]]:
    """Feed 20 ms packets for every participant and poll; return the reported changes."""
    reports: list[tuple[float, list[str]]] = []
    steps_per_poll = round(poll_every / PTIME)
    step = 0
    now = start
    while now < end:
        for pid in participants:
            level = schedule(pid, now)
            if level is not None:
                det.observe(pid, level, level < SILENT, now)
        step += 1
        if step % steps_per_poll == 0:
            result = det.poll(now)
            if result is not None:
                reports.append((now, result))
        now = start + step * PTIME
    return reports


def test_a_speaker_becomes_active_and_silence_clears_it() -> None:
    det = ActiveSpeakerDetector()

    def schedule(pid: str, t: float) -> int:
        return 30 if t < 3.0 else SILENT

    reports = run(det, schedule, ["a"], 0.0, 6.0)
    assert [r for _, r in reports] == [["a"], []]
    started, cleared = reports[0][0], reports[1][0]
    assert started <= 0.3
    assert 3.0 < cleared <= 3.0 + 1.5 + 0.2
    assert det.active == []


def test_a_louder_speaker_wins_after_the_window() -> None:
    det = ActiveSpeakerDetector(window=1.5, switch_hysteresis=0.5)

    def schedule(pid: str, t: float) -> int:
        if pid == "a":
            return 40
        return 15 if t >= 4.0 else SILENT

    reports = run(det, schedule, ["a", "b"], 0.0, 10.0)
    lists = [r for _, r in reports]
    assert lists == [["a"], ["a", "b"], ["b", "a"]]
    joined, took_over = reports[1][0], reports[2][0]
    assert 4.0 < joined <= 4.3
    # b needs most of a window to out-score a by the margin, then must lead for the hysteresis.
    assert 4.5 < took_over <= 4.0 + 1.5 + 0.5 + 0.2
    assert det.active == ["b", "a"]


def test_hysteresis_prevents_flapping_between_two_similar_speakers() -> None:
    det = ActiveSpeakerDetector()

    def schedule(pid: str, t: float) -> int:
        # The two trade being slightly louder every 300 ms.
        loud_a = int(t / 0.3) % 2 == 0
        return (28 if loud_a else 32) if pid == "a" else (32 if loud_a else 28)

    reports = run(det, schedule, ["a", "b"], 0.0, 20.0)
    assert len(reports) == 1
    assert sorted(reports[0][1]) == ["a", "b"]


def test_without_a_margin_the_dominant_speaker_still_changes_at_most_per_hysteresis() -> None:
    det = ActiveSpeakerDetector(margin=0.0, switch_hysteresis=0.5, window=0.4)

    def schedule(pid: str, t: float) -> int:
        # Leads of 0.3 s, 0.3 s, then 1.5 s: the long one should win, the short ones not.
        phase = t % 2.1
        loud_a = phase < 0.3 or (0.6 <= phase < 2.1 and int(t / 2.1) % 2 == 0)
        return (20 if loud_a else 40) if pid == "a" else (40 if loud_a else 20)

    reports = run(det, schedule, ["a", "b"], 0.0, 21.0, poll_every=0.02)
    changes = [
        t for (t, r), (_, prev) in zip(reports[1:], reports, strict=False) if r[0] != prev[0]
    ]
    assert 3 <= len(changes) <= 10  # the long leads are noticed, the short ones are not
    assert all(later - earlier >= 0.5 for earlier, later in itertools.pairwise(changes))


def test_voice_activity_flag_and_silence_floor() -> None:
    det = ActiveSpeakerDetector(min_level=60)
    for i in range(50):
        now = i * PTIME
        det.observe("loud-but-no-voice", 10, False, now)
        det.observe("below-floor", 61, True, now)
        det.observe("at-floor", 60, None, now)
        det.observe("no-flag", 30, None, now)
    assert det.poll(1.0) == ["no-flag", "at-floor"]
    scores = det.scores(1.0)
    assert scores["loud-but-no-voice"] == (0.0, 0.0)
    assert scores["below-floor"] == (0.0, 0.0)
    speech, loudness = scores["no-flag"]
    assert speech == pytest.approx(1.0 / 1.5, rel=0.05)
    assert loudness == pytest.approx(31 * speech, rel=1e-6)


def test_packetization_and_dtx_gaps_count_the_same_speech_time() -> None:
    det = ActiveSpeakerDetector()
    for i in range(25):  # 20 ms packets for 0.5 s
        det.observe("p20", 30, True, 10.0 + i * 0.02)
    for i in range(9):  # 60 ms packets for 0.54 s
        det.observe("p60", 30, True, 10.0 + i * 0.06)
    det.observe("dtx", 30, True, 10.0)
    det.observe("dtx", 30, True, 10.5)  # after a 500 ms gap: one packet's worth, not 500 ms
    scores = det.scores(10.6)
    assert scores["p20"][0] == pytest.approx(scores["p60"][0], rel=0.1)
    assert scores["dtx"][0] * 1.5 <= 0.2  # the gap itself is not counted as speech


def test_remove_drops_a_participant_at_the_next_poll() -> None:
    det = ActiveSpeakerDetector()
    for i in range(40):
        det.observe("a", 20, True, i * PTIME)
        det.observe("b", 40, True, i * PTIME)
    assert det.poll(0.8) == ["a", "b"]
    assert det.participants == 2
    det.remove("a")
    det.remove("nobody")
    assert det.participants == 1
    assert det.poll(0.8) == ["b"]
    assert det.poll(0.8) is None


def test_a_participant_whose_packets_stop_ages_out() -> None:
    det = ActiveSpeakerDetector(window=1.0)
    for i in range(50):
        det.observe("a", 20, True, i * PTIME)
    assert det.poll(1.0) == ["a"]
    assert det.poll(1.5) is None  # still inside the window
    assert det.poll(2.2) == []
    assert det.scores(5.0)["a"] == (0.0, 0.0)


def test_memory_per_participant_is_bounded() -> None:
    det = ActiveSpeakerDetector()
    for i in range(2_000):
        det.observe("a", 30, True, i * PTIME)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2_000, 60_000):
            det.observe("a", 30 + i % 20, True, i * PTIME)
            if i % 500 == 0:
                det.poll(i * PTIME)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096
    for n in range(100):
        det.observe(f"p{n}", 30, True, 1300.0)
    for n in range(100):
        det.remove(f"p{n}")
    assert det.participants == 1


def test_the_same_inputs_give_the_same_reports() -> None:
    def schedule(pid: str, t: float) -> int:
        return (17 * int(t * 7) + 31 * len(pid)) % 90

    first = run(ActiveSpeakerDetector(), schedule, ["a", "bb", "ccc"], 0.0, 8.0)
    second = run(ActiveSpeakerDetector(), schedule, ["a", "bb", "ccc"], 0.0, 8.0)
    assert first == second
    assert first


def test_bad_settings_are_rejected() -> None:
    for kwargs in (
        {"window": 0.0},
        {"min_level": 128},
        {"switch_hysteresis": -1.0},
        {"min_active": 0.0},
        {"margin": -0.1},
        {"buckets": 0},
    ):
        with pytest.raises(ValueError):
            ActiveSpeakerDetector(**kwargs)


_segment = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 127),
    st.sampled_from([True, False, None]),
    st.integers(1, 40),  # packets
)


@settings(max_examples=200)
@given(st.lists(_segment, min_size=1, max_size=30), st.integers(1, 10))
def test_reports_are_consistent_and_dominance_changes_respect_the_hysteresis(
    segments: list[tuple[str, int, bool | None, int]], poll_steps: int
) -> None:
    det = ActiveSpeakerDetector(window=1.0, switch_hysteresis=0.4, margin=0.1)
    now = 0.0
    step = 0
    last_spoke: dict[str, float] = {}
    last_change: float | None = None
    reported: list[str] = []
    for pid, level, vad, packets in segments:
        for _ in range(packets):
            det.observe(pid, level, vad, now)
            if level <= 60 and vad is not False:
                last_spoke[pid] = now
            step += 1
            now = step * PTIME
            if step % poll_steps:
                continue
            result = det.poll(now)
            if result is None:
                assert det.active == reported
                continue
            assert result != reported
            assert len(set(result)) == len(result)
            # Only someone who spoke within the window (to slot granularity) is active.
            for p in result:
                assert now - last_spoke[p] <= 1.0 + 0.1 + 1e-9
            lost_first = bool(result and reported) and result[0] != reported[0]
            if lost_first and reported[0] in result and last_change is not None:
                # A still-active dominant speaker lost first place: it needed the hysteresis.
                assert now - last_change >= 0.4 - 1e-9
            if result[:1] != reported[:1]:
                last_change = now
            reported = result
