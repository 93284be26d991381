"""Monotonic time sources for the I/O adapters.

Sans-I/O cores never read the clock themselves: adapters call a :data:`Clock` and pass
``now`` in, which keeps the cores deterministic and lets tests drive time with
:class:`ManualClock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Clock", "ManualClock", "now", "now_ms"]

#: A zero-argument callable returning monotonic seconds.
Clock: TypeAlias = Callable[[], float]


def now() -> float:
    """Monotonic seconds (unaffected by wall-clock jumps); only differences are meaningful."""
    return time.monotonic()


def now_ms() -> int:
    """Monotonic milliseconds as an integer, for timestamp arithmetic on the hot path."""
    return time.monotonic_ns() // 1_000_000


class ManualClock:
    """A clock that only moves when told to, for deterministic tests of the cores."""

    __slots__ = ("_t",)

    def __init__(self, start: float = 0.0) -> None:
        self._t = start

    def __call__(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        """Move time forward by ``seconds`` (must be >= 0) and return the new time."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        self._t += seconds
        return self._t
