"""The table-slot pool: fresh slots lowest first, freed ones reused after a quarantine, so the
slots ever used stay near the peak in use (the forwarder's tables are mapped page by page)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.core.handles import HandlePool


def test_fresh_slots_come_lowest_first_and_freed_ones_wait() -> None:
    pool = HandlePool(10, quarantine=2)
    assert [pool.take() for _ in range(3)] == [0, 1, 2]
    pool.give(1)
    pool.give(0)
    assert pool.take() == 3  # two freed: still within the quarantine
    pool.give(2)
    assert pool.take() == 1  # three freed: the oldest is reused
    assert len(pool) == 10 - 4 + 2


def test_a_full_table_reuses_freed_slots_within_the_quarantine() -> None:
    pool = HandlePool(2, quarantine=256)
    assert (pool.take(), pool.take()) == (0, 1)
    assert len(pool) == 0
    with pytest.raises(IndexError):
        pool.take()
    pool.give(1)
    assert pool.take() == 1


def test_churn_touches_only_the_peak_plus_the_quarantine() -> None:
    """10,000 join/leave cycles, 16 slots in use at most: the old policy (a freed slot
    reused only after every fresh one) touched all 20,000."""
    pool = HandlePool(20_000, quarantine=256)
    live: list[int] = []
    for _ in range(10_000):
        live.append(pool.take())
        if len(live) > 16:
            pool.give(live.pop(0))
    assert pool.touched <= 16 + 256 + 1


@settings(max_examples=200)
@given(st.lists(st.booleans(), max_size=300), st.integers(1, 40), st.integers(0, 8))
def test_never_hands_out_a_slot_in_use(steps: list[bool], capacity: int, quarantine: int) -> None:
    pool = HandlePool(capacity, quarantine)
    live: set[int] = set()
    for take in steps:
        if take and len(pool):
            handle = pool.take()
            assert handle not in live and 0 <= handle < capacity
            live.add(handle)
        elif live:
            handle = min(live)
            live.discard(handle)
            pool.give(handle)
        assert len(pool) == capacity - len(live)
