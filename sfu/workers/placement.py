"""Which worker a room lives on: power of two choices over each worker's load.

Sans-I/O: the supervisor feeds each worker's measured CPU share and packet rate
(:meth:`Placement.observe`) and asks where a room goes (:meth:`Placement.place`). Two
random candidates and the lighter of them (Mitzenmacher's "power of two choices") spread
rooms nearly as well as always taking the lightest, without every placement made between
two load samples piling onto the same worker.

A room larger than one core is spread: :meth:`Placement.place_participant` sends a newcomer
to another worker (a *shard* of the room) once the home worker holds
``room_spread_subscribers`` of its participants or is saturated; the shards of a room are
the workers with its signaling connections, plus its home.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "IDLE_FORGET_S",
    "MAX_PLACED_ROOMS",
    "PPS_PER_CORE",
    "ROOM_WEIGHT",
    "SATURATED_LOAD",
    "Placement",
    "WorkerLoad",
]

#: Packets per second (in plus out) one worker core carries at full load; scales the packet
#: rate to the same unit as CPU share (the fan-out bench sustains roughly this on one core).
PPS_PER_CORE: Final = 200_000.0
#: Load a room placed since the last sample counts for, so a burst of joins between two
#: samples does not all land on the worker that looked idle.
ROOM_WEIGHT: Final = 0.05
#: A placed room with no signaling connection is forgotten after this many seconds idle
#: (its participants' resume grace is 15 s by default), which bounds the table.
IDLE_FORGET_S: Final = 120.0
#: Most rooms the table remembers. Room names reach the supervisor before any token is
#: checked (the worker checks it), so the table must be bounded: when full, the longest idle
#: room without connections is forgotten, and if every room has connections a new room is
#: still placed but not remembered (its next request is placed afresh).
MAX_PLACED_ROOMS: Final = 100_000
#: A home worker at or above this load (share of one core, see WorkerLoad.score) is
#: saturated: newcomers of its rooms go to a shard on another worker whatever the room's size.
SATURATED_LOAD: Final = 0.9


@dataclass(slots=True)
class WorkerLoad:
    """What the supervisor knows of one worker's load."""

    ready: bool = False
    cpu: float = 0.0  # share of one core, 0..1 (and above when its threads add up)
    pps: float = 0.0
    #: Rooms placed since ``cpu``/``pps`` were last sampled.
    recent_rooms: int = 0

    def score(self) -> float:
        """One number to compare workers by: CPU share, packet rate and fresh rooms."""
        return max(self.cpu, self.pps / PPS_PER_CORE) + self.recent_rooms * ROOM_WEIGHT


@dataclass(slots=True)
class _Room:
    worker: int
    connections: int = 0
    idle_since: float = 0.0
    #: Open signaling connections by worker (the home and the room's other shards).
    shards: dict[int, int] = field(default_factory=dict)


@dataclass
class Placement:
    """The room → worker table and the load of each worker."""

    workers: int
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.loads = [WorkerLoad() for _ in range(self.workers)]
        self._rooms: dict[str, _Room] = {}

    def observe(self, index: int, *, cpu: float, pps: float) -> None:
        """A fresh load sample of worker ``index``."""
        load = self.loads[index]
        load.cpu, load.pps, load.recent_rooms = cpu, pps, 0

    def set_ready(self, index: int, ready: bool) -> None:
        """Worker ``index`` came up (True) or died (False: its rooms are forgotten, so
        their participants' reconnects are placed afresh)."""
        self.loads[index].ready = ready
        if not ready:
            self.loads[index].recent_rooms = 0
            for name in [n for n, r in self._rooms.items() if r.worker == index]:
                del self._rooms[name]

    def worker_of(self, room: str) -> int | None:
        """The worker ``room`` is on, if it is placed."""
        entry = self._rooms.get(room)
        return entry.worker if entry is not None else None

    def rooms_on(self, index: int) -> int:
        """Rooms placed on worker ``index``."""
        return sum(1 for r in self._rooms.values() if r.worker == index)

    def place(self, room: str, *, now: float) -> int | None:
        """The worker for ``room``: where it already is, else the lighter of two random
        ready workers. None when no worker is ready."""
        entry = self._rooms.get(room)
        if entry is not None and self.loads[entry.worker].ready:
            entry.idle_since = now
            return entry.worker
        ready = [i for i, load in enumerate(self.loads) if load.ready]
        if not ready:
            return None
        if len(ready) == 1:
            chosen = ready[0]
        else:
            a, b = self.rng.sample(ready, 2)
            chosen = a if self.loads[a].score() <= self.loads[b].score() else b
        self.loads[chosen].recent_rooms += 1
        if len(self._rooms) >= MAX_PLACED_ROOMS and not self._evict_one():
            return chosen
        self._rooms[room] = _Room(chosen, idle_since=now)
        return chosen

    def _evict_one(self) -> bool:
        """Forget the longest idle room without connections; False when there is none."""
        idle = [(r.idle_since, name) for name, r in self._rooms.items() if r.connections == 0]
        if not idle:
            return False
        del self._rooms[min(idle)[1]]
        return True

    def connected(self, room: str, worker: int | None = None) -> None:
        """A signaling connection of ``room`` opened (the room stays placed while any is),
        to ``worker`` (its home when None)."""
        entry = self._rooms.get(room)
        if entry is not None:
            entry.connections += 1
            index = entry.worker if worker is None else worker
            entry.shards[index] = entry.shards.get(index, 0) + 1

    def disconnected(self, room: str, worker: int | None = None, *, now: float) -> None:
        """A signaling connection of ``room`` (to ``worker``, its home when None) closed."""
        entry = self._rooms.get(room)
        if entry is not None:
            entry.connections = max(0, entry.connections - 1)
            entry.idle_since = now
            index = entry.worker if worker is None else worker
            left = entry.shards.get(index, 0) - 1
            if left > 0:
                entry.shards[index] = left
            else:
                entry.shards.pop(index, None)

    def place_participant(self, room: str, *, spread: int, now: float) -> int | None:
        """The worker for a newcomer of ``room``: its home, unless the home holds ``spread``
        of the room's connections or is saturated; then a shard with room to spare (the
        emptiest), else the lightest other ready worker. ``spread`` 0 never spreads (rooms
        stay whole, as without this feature). None when no worker is ready."""
        home = self.place(room, now=now)
        entry = self._rooms.get(room)
        if home is None or entry is None or spread <= 0:
            return home
        full = entry.shards.get(home, 0) >= spread
        if not full and self.loads[home].score() < SATURATED_LOAD:
            return home
        others = [i for i, load in enumerate(self.loads) if load.ready and i != home]
        shards = [i for i in others if i in entry.shards and entry.shards[i] < spread]
        if shards:
            return min(shards, key=lambda i: (entry.shards[i], self.loads[i].score()))
        fresh = [i for i in others if i not in entry.shards]
        if not fresh:
            return home
        chosen = min(fresh, key=lambda i: self.loads[i].score())
        self.loads[chosen].recent_rooms += 1
        return chosen

    def shards_of(self, room: str) -> set[int]:
        """The workers holding part of ``room``: its home and each with a connection of it."""
        entry = self._rooms.get(room)
        if entry is None:
            return set()
        return {entry.worker, *entry.shards}

    def forget_idle(self, *, now: float) -> int:
        """Forget rooms with no connection for :data:`IDLE_FORGET_S`; returns how many."""
        stale = [
            name
            for name, r in self._rooms.items()
            if r.connections == 0 and now - r.idle_since >= IDLE_FORGET_S
        ]
        for name in stale:
            del self._rooms[name]
        return len(stale)
