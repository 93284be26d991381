"""One asyncio timer for a sans-I/O core's earliest deadline.

The room service keeps every peer's and room's deadline in one queue
(:class:`~sfu.timer_queue.TimerQueue`) and says when it next needs to run;
:class:`DeadlineTimer` holds a single ``loop.call_later`` handle for that time, re-arms it from
what the run returns, and moves it earlier when an event (a subscription, feedback, a transport
connecting) makes something due sooner. Nothing runs on a fixed tick.

Waking the event loop costs more than most timer work (a context switch and an epoll round in
the kernel, the loop's own bookkeeping), so deadlines are rounded up to a grid of
:data:`TIMER_SLOT_S` (everything due within one slot runs together) and the media socket's
reader, awake anyway for the packets, runs the timer when it is due (:meth:`run_if_due`): under
load the timer almost never needs a wakeup of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Final

from sfu.clock import Clock

__all__ = ["MIN_STEP_S", "TIMER_SLOT_S", "DeadlineTimer"]

log = logging.getLogger(__name__)

#: After a run, the next one is at least this much later even if the core says it is already
#: due: a deadline that a bug leaves in the past must not spin the loop.
MIN_STEP_S: Final = 0.001
#: Deadlines are rounded up to a multiple of this (seconds): at most this many wakeups a
#: second for timers, none wasted on work due a few milliseconds apart. Well under the 50 ms
#: of TWCC feedback and NACK timing; an event that asks for "now" is not rounded.
TIMER_SLOT_S: Final = 0.02


class DeadlineTimer:
    """Calls ``run(now)`` at the deadline it was armed for; ``run`` returns the next one."""

    def __init__(
        self,
        run: Callable[[float], float | None],
        clock: Clock,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._run = run
        self._clock = clock
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._at = math.inf
        self._closed = False
        #: How many times the timer fired (each one run of the core).
        self.runs = 0

    @property
    def armed_at(self) -> float | None:
        """The deadline the loop timer is set for (None: not armed)."""
        return None if self._handle is None else self._at

    def arm(self, at: float | None) -> None:
        """Make sure the core runs by ``at`` (None: nothing to do; a later time than the one
        already armed changes nothing)."""
        if at is None or self._closed:
            return
        if at != -math.inf:
            at = math.ceil(at / TIMER_SLOT_S - 1e-9) * TIMER_SLOT_S
        if self._handle is not None:
            if self._at <= at:
                return
            self._handle.cancel()
        self._at = at
        delay = at - self._clock()
        self._handle = self._loop.call_later(max(0.0, delay), self._fire)

    def run_if_due(self, now: float) -> None:
        """Run now if the armed deadline has passed (the caller's wakeup serves it)."""
        if now >= self._at and self._handle is not None:
            self._handle.cancel()
            self._fire(now)

    def close(self) -> None:
        """Cancel the timer for good."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self, now: float | None = None) -> None:
        self._handle = None
        self._at = math.inf
        if now is None:
            now = self._clock()
        self.runs += 1
        following: float | None = None
        try:
            following = self._run(now)
        except Exception:  # pragma: no cover - a bug must not stop every timer
            log.exception("internal error in a timer run")
            following = now + MIN_STEP_S
        if following is not None:
            self.arm(max(following, now + MIN_STEP_S))
