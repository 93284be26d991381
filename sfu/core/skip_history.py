"""Ranges of incoming sequence numbers a munger dropped on purpose, for late arrivals.

When a packet is dropped deliberately (a filtered temporal layer, padding, a paused track),
the munger's sequence offset shrinks by one so the subscriber sees no hole; a late packet from
before that drop needs the offset that was in force then. :class:`SkipHistory` keeps the
dropped runs (bounded) so :meth:`SkipHistory.offset_after` can answer for any packet still in
the reorder window.
"""

from __future__ import annotations

__all__ = ["SkipHistory"]


class SkipHistory:
    """A bounded history of input values deliberately skipped, to place late inputs correctly.

    Inputs (sequence numbers, picture ids) are extended integers that the owner hands over in
    increasing order; :meth:`skip` records one that will not appear in the output, so every
    output after it is one lower. :meth:`offset_after` then tells how many skipped values lie
    above a late input ``x``: the offset that applied when ``x`` was current is the current one
    plus that many. Skipped values are kept as ``[start, end)`` runs, at most ``limit`` of them;
    below the oldest kept run (the *floor*) the answer is unknown.
    """

    __slots__ = ("_ends", "_floor", "_limit", "_starts")

    def __init__(self, limit: int = 64) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._floor = 0

    def reset(self, floor: int) -> None:
        """Forget every run; inputs below ``floor`` are unknown from now on."""
        self._starts.clear()
        self._ends.clear()
        self._floor = floor

    @property
    def floor(self) -> int:
        """The lowest input whose offset is still known."""
        return self._floor

    @property
    def runs(self) -> list[tuple[int, int]]:
        """The kept ``[start, end)`` runs of skipped inputs, oldest first (a copy)."""
        return list(zip(self._starts, self._ends, strict=True))

    def skip(self, x: int) -> None:
        """Record that input ``x`` (above every input recorded so far) is skipped."""
        ends = self._ends
        if ends and ends[-1] == x:
            ends[-1] = x + 1
            return
        self._starts.append(x)
        ends.append(x + 1)
        if len(ends) > self._limit:
            del self._starts[0]
            self._floor = ends.pop(0)

    def offset_after(self, x: int) -> int | None:
        """How many recorded skipped inputs are above ``x``; None if ``x`` itself was skipped
        or lies below the floor (its offset is no longer known)."""
        if x < self._floor:
            return None
        starts = self._starts
        ends = self._ends
        n = 0
        i = len(ends) - 1
        while i >= 0:
            end = ends[i]
            if end <= x:
                break
            start = starts[i]
            if start <= x:
                return None
            n += end - start
            i -= 1
        return n
