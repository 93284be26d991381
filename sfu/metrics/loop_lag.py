"""Event-loop lag: how late a periodic timer fires, the first sign of an overloaded loop.

Every packet, timer and signaling message of the process runs on one loop, so a loop that
falls behind delays all of them; this measures it from inside at a fixed cadence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from sfu.histogram import LOOP_LAG_BUCKETS_S, PlainHistogram

__all__ = ["LoopLagMonitor"]


class LoopLagMonitor:
    """Sleeps ``interval`` seconds again and again and records how much longer it took."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.histogram = PlainHistogram(LOOP_LAG_BUCKETS_S)
        #: The most recent lag, in seconds.
        self.last = 0.0
        self._task: asyncio.Task[None] | None = None

    def record(self, expected: float, actual: float) -> None:
        """One measurement: a timer due after ``expected`` s ran after ``actual`` s."""
        self.last = max(0.0, actual - expected)
        self.histogram.observe(self.last)

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(self.interval)
            self.record(self.interval, time.monotonic() - started)

    def start(self) -> None:
        """Begin measuring on the running loop (idempotent)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
