"""A subscriber's REMB (its receive-side bandwidth estimate), read as a budget under congestion.

A receiver's REMB only grows with what it receives (it cannot see capacity above that), so it
is a budget only while it signals congestion: a drop below ``REMB_DROP`` of its peak over the
last ``REMB_WINDOW`` seconds.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["REMB_DROP", "REMB_HEADROOM", "REMB_WINDOW", "RembHistory"]

#: A REMB this far below its recent peak signals congestion (the receiver's estimator backs
#: off to ~0.85 of the incoming rate on overuse, so 0.8 is past a single back-off step).
REMB_DROP: Final = 0.8
#: Seconds of REMB history the peak is taken over.
REMB_WINDOW: Final = 5.0
#: Share of a congested estimate the allocator may spend: RTCP, retransmissions and the
#: estimate's own error need the rest.
REMB_HEADROOM: Final = 0.95


class RembHistory:
    """The REMBs of the last few seconds from one subscriber."""

    __slots__ = ("_history", "latest")

    def __init__(self) -> None:
        self.latest: int | None = None
        self._history: deque[tuple[float, int]] = deque()

    def on_remb(self, bps: int, *, now: float) -> None:
        """A REMB of ``bps`` arrived."""
        self.latest = bps
        history = self._history
        history.append((now, bps))
        while history and now - history[0][0] > REMB_WINDOW:
            history.popleft()

    def budget(self, *, now: float) -> float | None:
        """Bits per second the subscriber's video may use, or None when not congested."""
        peak = max((bps for t, bps in self._history if now - t <= REMB_WINDOW), default=None)
        if self.latest is None or peak is None or self.latest >= REMB_DROP * peak:
            return None
        return self.latest * REMB_HEADROOM
