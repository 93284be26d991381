"""Which slot of a fixed table a new entry takes: the forwarder's transport and stream tables.

The forwarder's tables are allocated once, at their full size, and the kernel maps their
pages only when a slot is first written. Handing out a freed slot last (after every slot never
used) kept a stale reference from ever meeting a new entry, but it walked the whole table:
10,000 join/leave cycles touched every slot of a 20,000-transport table, ~35 MiB of resident
memory that a session's end never gives back. A freed slot now waits in a queue until
:data:`QUARANTINE` others were freed after it, and fresh slots are taken from the bottom:
the slots ever used stay near the peak in use plus the quarantine.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["QUARANTINE", "HandlePool"]

#: A freed slot is reused only once this many slots were freed after it (or when no slot that
#: was never used is left): long after anything could still name it.
QUARANTINE: Final = 256


class HandlePool:
    """The free slots of a table of ``capacity``: fresh ones lowest first, freed ones reused
    oldest first once :data:`QUARANTINE` newer ones wait behind them."""

    def __init__(self, capacity: int, quarantine: int = QUARANTINE) -> None:
        if capacity < 0 or quarantine < 0:
            raise ValueError("capacity and quarantine must not be negative")
        self.capacity = capacity
        self.quarantine = quarantine
        self._fresh = 0  # slots below this were handed out at least once
        self._freed: deque[int] = deque()

    def __len__(self) -> int:
        return self.capacity - self._fresh + len(self._freed)

    def take(self) -> int:
        """A free slot (IndexError when there is none)."""
        if len(self._freed) > self.quarantine or (self._fresh >= self.capacity and self._freed):
            return self._freed.popleft()
        if self._fresh < self.capacity:
            self._fresh += 1
            return self._fresh - 1
        raise IndexError("no free slot")

    def give(self, handle: int) -> None:
        """``handle`` is free again."""
        self._freed.append(handle)

    @property
    def touched(self) -> int:
        """How many slots were ever handed out (the high-water mark of the table's use)."""
        return self._fresh
