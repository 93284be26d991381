"""Deadlines of many timer owners, earliest first: one loop timer serves them all.

The control plane's objects say when they next need to run (``next_timer()``, aioquic style);
:class:`TimerQueue` keeps one deadline per owner in a binary heap, so the adapter arms a single
event-loop timer for :meth:`TimerQueue.next_deadline` and, when it fires, runs only the owners
:meth:`TimerQueue.pop_due` returns. Rescheduling pushes a new heap entry and leaves the old one
to be skipped when it surfaces (lazy deletion, compacted when stale entries dominate), so a
change costs O(log n) and an owner that is never due costs nothing per tick.

Sans-I/O: no clock is read; every call takes the time it concerns.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

__all__ = ["COMPACT_SLACK", "TimerQueue"]

K = TypeVar("K", bound=Hashable)

#: The heap is rebuilt from the live deadlines once it holds more than twice as many entries
#: as there are owners plus this many: stale entries then cost memory, not correctness.
COMPACT_SLACK: Final = 64


class TimerQueue(Generic[K]):
    """One deadline per owner (``key``), the earliest found in O(1), changed in O(log n)."""

    __slots__ = ("_deadlines", "_heap", "_seq")

    def __init__(self) -> None:
        self._deadlines: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0  # ties in deadline pop in scheduling order; keys are never compared

    def __len__(self) -> int:
        return len(self._deadlines)

    def __contains__(self, key: object) -> bool:
        return key in self._deadlines

    def deadline(self, key: K) -> float | None:
        """When ``key`` is due (None: not scheduled)."""
        return self._deadlines.get(key)

    def schedule(self, key: K, deadline: float | None) -> None:
        """Make ``deadline`` the time ``key`` is due (None: not at all)."""
        if deadline is None:
            self._deadlines.pop(key, None)
            return
        if self._deadlines.get(key) == deadline:
            return
        self._deadlines[key] = deadline
        self._seq += 1
        heapq.heappush(self._heap, (deadline, self._seq, key))
        if len(self._heap) > 2 * len(self._deadlines) + COMPACT_SLACK:
            self._compact()

    def advance(self, key: K, deadline: float) -> None:
        """Make ``key`` due at ``deadline`` unless it is already due earlier."""
        current = self._deadlines.get(key)
        if current is None or deadline < current:
            self.schedule(key, deadline)

    def cancel(self, key: K) -> None:
        """Forget ``key``'s deadline."""
        self._deadlines.pop(key, None)

    def next_deadline(self) -> float | None:
        """The earliest deadline of any owner (None: nothing is scheduled)."""
        heap, deadlines = self._heap, self._deadlines
        while heap:
            deadline, _seq, key = heap[0]
            if deadlines.get(key) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: rescheduled or cancelled since it was pushed
        return None

    def pop_due(self, now: float) -> list[K]:
        """The owners due at ``now``, earliest first; they are no longer scheduled."""
        heap, deadlines = self._heap, self._deadlines
        due: list[K] = []
        while heap and heap[0][0] <= now:
            deadline, _seq, key = heapq.heappop(heap)
            if deadlines.get(key) == deadline:
                del deadlines[key]
                due.append(key)
        return due

    def _compact(self) -> None:
        self._heap = [entry for entry in self._heap if self._deadlines.get(entry[2]) == entry[0]]
        heapq.heapify(self._heap)
