"""Monotonic time sources for the I/O adapters.

Sans-I/O cores never read the clock themselves: adapters call a :data:`Clock` and pass
``now`` in, which keeps the cores deterministic and lets tests drive time by passing their
own ``now``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeAlias

__all__ = ["Clock", "now"]

#: A zero-argument callable returning monotonic seconds.
Clock: TypeAlias = Callable[[], float]


def now() -> float:
    """Monotonic seconds (unaffected by wall-clock jumps); only differences are meaningful."""
    return time.monotonic()
