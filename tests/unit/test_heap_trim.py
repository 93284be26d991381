"""The heap is trimmed after sessions end, rarely, and never while nothing ends."""

from __future__ import annotations

from sfu.io.memory import HeapTrimmer, libc_malloc_trim


def test_trims_only_after_transports_ended_and_at_most_once_per_interval() -> None:
    calls: list[int] = []
    trimmer = HeapTrimmer(60.0, lambda: calls.append(1) or 1)
    assert not trimmer.observe(0.0, 10)
    assert not trimmer.observe(30.0, 12)  # growing: nothing ended
    assert not trimmer.observe(40.0, 2)  # ended, but within the interval since the start
    assert not trimmer.observe(61.0, 12)  # back at its peak: nothing ended since
    assert trimmer.observe(70.0, 3) and calls == [1] and trimmer.trims == 1
    assert not trimmer.observe(121.5, 3)  # steady since the trim
    assert not trimmer.observe(125.0, 0)  # ended, but too soon after the trim
    assert trimmer.observe(131.0, 0) and trimmer.trims == 2
    assert not trimmer.observe(300.0, 0)  # nothing more ended


def test_the_c_library_trim_runs_here() -> None:
    trim = libc_malloc_trim()
    assert trim is not None  # glibc (Debian)
    assert trim() in (0, 1)
    assert not HeapTrimmer(1.0, None).observe(5.0, 1)


def test_the_collector_runs_before_each_trim() -> None:
    """An ended session's reference cycles are freed only by the cyclic collector: the trim
    must come after it, or it finds them still holding their memory."""
    calls: list[str] = []
    trimmer = HeapTrimmer(
        60.0,
        trim=lambda: calls.append("trim") or 1,
        collect=lambda: calls.append("collect") or 0,
    )
    trimmer.observe(0.0, 4)
    assert not trimmer.observe(30.0, 0) and calls == []  # within the interval: neither
    assert trimmer.observe(61.0, 0) and calls == ["collect", "trim"]
