"""Wrap-aware sequence/timestamp arithmetic and 64-bit unwrapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.packet.seqnum import (
    SequenceUnwrapper,
    TimestampUnwrapper,
    Unwrapper,
    seq_diff,
    seq_newer,
    ts_diff,
    ts_newer,
)


def test_seq_diff_across_the_wrap() -> None:
    assert seq_diff(2, 65534) == 4
    assert seq_diff(65534, 2) == -4
    assert seq_newer(0, 65535)
    assert not seq_newer(65535, 0)
    assert not seq_newer(7, 7)


def test_ts_diff_across_the_wrap() -> None:
    assert ts_diff(10, 0xFFFFFFF0) == 26
    assert ts_newer(10, 0xFFFFFFF0)
    assert ts_diff(0xFFFFFFF0, 10) == -26


def test_unwrapper_counts_wraps_and_places_late_packets_below() -> None:
    u = SequenceUnwrapper()
    first = u.unwrap(65530)
    assert first == 65530 + 65536
    assert u.unwrap(65535) == first + 5
    assert u.unwrap(3) == first + 9  # wrapped
    assert u.unwrap(65534) == first + 4  # late packet from before the wrap
    assert u.peek(10) == first + 16
    assert u.last == first + 4  # peek did not move the reference


def test_packet_older_than_the_first_never_goes_negative() -> None:
    u = TimestampUnwrapper()
    first = u.unwrap(5)
    assert u.unwrap(0xFFFFFFFF) == first - 6 >= 0


def test_unwrapper_rejects_odd_widths() -> None:
    with pytest.raises(ValueError):
        Unwrapper(8)


@given(st.integers(0, 2**40), st.lists(st.integers(-30000, 30000), max_size=200))
def test_unwrap_recovers_any_walk_with_steps_below_half_the_ring(
    start: int, steps: list[int]
) -> None:
    u = SequenceUnwrapper()
    base = u.unwrap(start & 0xFFFF)
    true = start
    for step in steps:
        true += step
        assert u.unwrap(true & 0xFFFF) - base == true - start
