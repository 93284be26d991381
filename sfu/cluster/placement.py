"""Which node a participant is on: this one unless it is full or draining, else a lighter one.

A join reaches whichever node the client (or its load balancer) picked. That node keeps it
unless its load is at ``cluster.max_load`` or it drains; then it names another live node with
a public URL (``cluster.public_url``): those of the wanted region first (the client's hint,
else this node's region), of those the ones that already have participants of the room (a
room on fewer nodes needs fewer relays: each publication crosses to each of its nodes once),
and of those the lighter of two drawn at random (Mitzenmacher's
"power of two choices": nearly as even as always taking the lightest, without every join
made between two lease renewals piling onto the node that looked idlest). The client
reconnects there (``moved``, docs/protocol.md), once: a join that was placed already is
never sent on again, so two nodes that each think the other lighter cannot bounce a client.

Which nodes a room is on: for a room this node holds, its own view (the room's participants
from other nodes, by the room bus), current to the event and free to read. For a room it
does not hold, the cluster directory's span of the room (every node records the rooms it
holds there, leased: :mod:`sfu.cluster.registry`): one bounded read, made only for a join
this node sends on (never on the packet path, never for a join it keeps), under
:data:`LOOKUP_TIMEOUT_S`; when the read fails or times out the join is placed by region and
load alone, and counted (:attr:`NodePlacement.lookups`). So a full or draining node that has
no participant of a room still sends its joins to the node the room is on, rather than
spreading the room over one more node.

A draining node moves its participants: every room's participants go to one node (a room
spread over fewer nodes needs fewer relays), chosen the same way (a node the room is on
already first, by this node's own view: it holds every room it moves) but from every live
node, full or not (the node is going away). The node chosen is kept for the room
(:meth:`NodePlacement.move_target`): a participant that reconnects to this node instead of to
the URL it was given (a WHIP or WHEP client re-POSTs where it posted before) is sent to that
same node, so a room does not split over nodes during a drain. The node loads are those of
the last lease renewal (every second, :mod:`sfu.cluster.registry`); each placement made since adds
:data:`PLACED_WEIGHT` to its node until the next renewal brings fresh figures.

Sans-I/O but for the one read, which is injected (``lookup``): the live nodes and this node
come from callables; the random source is injected.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

from sfu.cluster.directory import DirectoryUnavailable, NodeInfo
from sfu.config import WORKER_MEMBER_RE

__all__ = [
    "FALLBACK_NODES",
    "FORWARD_RESULTS",
    "LOOKUP_RESULTS",
    "LOOKUP_TIMEOUT_S",
    "MOVED_KINDS",
    "PLACED_WEIGHT",
    "LoadMeter",
    "NodePlacement",
    "choose_node",
    "choose_node_for_room",
    "signaling_url",
]

#: Load one placement adds to the node it chose until that node's next lease renewal: a
#: burst of joins must not all go to the node that looked idle a second ago (at the default
#: capacity of 1000 seats a join is 0.001; this also stands for the CPU a call will take).
PLACED_WEIGHT: Final = 0.01
#: Other nodes' URLs a participant is given to reconnect to when its node is lost.
FALLBACK_NODES: Final = 3
#: Longest a join waits for the directory to say which nodes its room is on (seconds): Redis
#: answers in well under a millisecond when healthy; a stalled one costs a join this much at
#: most before it is placed by region and load alone (below the directory's own command
#: timeout, so a dead Redis does not hold every join sent on for that long).
LOOKUP_TIMEOUT_S: Final = 0.25
#: How a directory read for a join ended: the room is on another node (``found``), on none
#: (``absent``), the directory failed (``error``; or was known to be away) or was too slow
#: (``timeout``). A fixed set: these are the only label values of the metric.
LOOKUP_RESULTS: Final = ("found", "absent", "error", "timeout")
#: The kinds of participant a drain moves, counted apart (:attr:`NodePlacement.moved_by`): a
#: fixed set, the only label values of the metric.
MOVED_KINDS: Final = ("websocket", "whip", "whep")
#: How a WHIP/WHEP POST placed on another node and forwarded there ended
#: (:mod:`sfu.signaling.whip_forward`): the target's answer was relayed (``forwarded``), the
#: target could not be reached or answered ``5xx`` and the client got the ``307``
#: (``fallback``), or the answer could not be relayed (``failed``, ``502``). A fixed set:
#: these are the only label values of the metric.
FORWARD_RESULTS: Final = ("forwarded", "fallback", "failed")
#: Where the room protocol's WebSocket is on every node.
SIGNALING_PATH: Final = "/ws"


def signaling_url(base: str) -> str:
    """The room WebSocket of the node whose public URL is ``base`` (clients turn http(s)
    into ws(s))."""
    return base.removesuffix("/") + SIGNALING_PATH


def choose_node(
    nodes: Sequence[NodeInfo],
    *,
    region: str,
    rng: random.Random,
    below: float | None = None,
    extra: dict[str, float] | None = None,
    prefer: Collection[str] = (),
) -> NodeInfo | None:
    """The node of ``nodes`` to place one participant on, or None when none fits.

    Nodes with no public URL or that drain never fit; with ``below``, neither does a node
    whose load (plus ``extra``, placements made since its renewal) is at or above it. Those of
    ``region`` are preferred, then of those the ones named in ``prefer`` (node ids: where the
    participant's room is already); of the rest, the lighter of two drawn at random.
    """
    extra = extra or {}

    def load(node: NodeInfo) -> float:
        return node.load + extra.get(node.node_id, 0.0)

    fits = [n for n in nodes if n.url and not n.draining and (below is None or load(n) < below)]
    if not fits:
        return None
    local = [n for n in fits if n.region == region]
    pool = local or fits
    if prefer:
        pool = [n for n in pool if n.node_id in prefer] or pool
    if len(pool) == 1:
        return pool[0]
    first, second = rng.sample(pool, 2)
    return first if load(first) <= load(second) else second


def choose_node_for_room(
    nodes: Sequence[NodeInfo], *, region: str, room: str, prefer: Collection[str] = ()
) -> NodeInfo | None:
    """The node a drain sends ``room`` to when every worker of a node chooses for itself
    (each a cluster member): the same answer from each of them, whatever their slightly
    different views of the loads, so a room spread over the draining node's workers moves
    to one node. Of the fitting nodes (public URL, not draining; ``region``'s first, then
    those in ``prefer``), the one whose public URL hashes highest with the room's name
    (rendezvous hashing: rooms spread evenly, and a node's loss moves only its own)."""
    fits = [n for n in nodes if n.url and not n.draining]
    pool = [n for n in fits if n.region == region] or fits
    if prefer:
        pool = [n for n in pool if n.node_id in prefer] or pool
    if not pool:
        return None
    return max(pool, key=lambda n: (_room_hash(room, n.url), n.node_id))


def _room_hash(room: str, url: str) -> bytes:
    return hashlib.blake2b(f"{room}\0{url}".encode(), digest_size=8).digest()


class LoadMeter:
    """This node's load for its lease: the larger of the CPU share of one core since the last
    sample and the seats taken of ``capacity``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._last: tuple[float, float] | None = None
        self.cpu = 0.0

    def sample(self, *, now: float, cpu_s: float, sessions: int) -> float:
        """The load now, given the process's CPU seconds so far and its sessions."""
        if self._last is not None:
            wall = now - self._last[0]
            if wall > 0:
                self.cpu = min(1.0, max(0.0, (cpu_s - self._last[1]) / wall))
        self._last = (now, cpu_s)
        return max(self.cpu, min(1.0, sessions / self.capacity))


@dataclass
class NodePlacement:
    """Placement across the cluster's nodes, as seen from this one (module docstring)."""

    #: This node as it last renewed its lease (load, draining).
    local: Callable[[], NodeInfo]
    #: The live nodes of the last renewal, this one included.
    nodes: Callable[[], list[NodeInfo]]
    #: Counts lease renewals: a new count means fresh loads in ``nodes``.
    generation: Callable[[], int]
    max_load: float
    #: The other nodes a room has participants on now, as this node sees it (node ids);
    #: None when this node does not hold the room (then ``lookup`` asks the directory).
    room_nodes: Callable[[str], Collection[str] | None] = field(default=lambda room: None)
    #: The other nodes a room is on, by the cluster directory (one read; may raise
    #: :class:`~sfu.cluster.directory.DirectoryUnavailable`); None: never asked.
    lookup: Callable[[str], Awaitable[Collection[str]]] | None = None
    lookup_timeout_s: float = LOOKUP_TIMEOUT_S
    rng: random.Random = field(default_factory=random.Random)
    #: Joins sent to another node, by why: ``full`` or ``draining``.
    redirects: dict[str, int] = field(default_factory=lambda: {"full": 0, "draining": 0})
    #: Participants a drain asked to reconnect to another node (in all, and by
    #: :data:`MOVED_KINDS`; :meth:`count_move`).
    moved: int = 0
    moved_by: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MOVED_KINDS, 0))
    #: Directory reads made for joins sent on, by how they ended (:data:`LOOKUP_RESULTS`).
    lookups: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LOOKUP_RESULTS, 0))
    _extra: dict[str, float] = field(default_factory=dict)
    _renewal: int = 0
    #: The node (id) a drain sends each room to, by room name (:meth:`move_target`).
    _moves: dict[str, str] = field(default_factory=dict)

    def _others(self) -> list[NodeInfo]:
        """The live members a client may be sent to: not this one, nor one reached at this
        one's own public URL (a sibling worker of this node, or a node behind the same
        load balancer): sending a client to the door it came in by places nothing."""
        me = self.local()
        return [
            n for n in self.nodes() if n.node_id != me.node_id and not (me.url and n.url == me.url)
        ]

    def _fresh_extra(self) -> dict[str, float]:
        # Each renewal brings every node's load anew: count placements afresh from there.
        generation = self.generation()
        if generation != self._renewal:
            self._renewal = generation
            self._extra.clear()
        return self._extra

    def sends_on(self, *, placed: bool = False) -> bool:
        """Whether a join arriving now would be sent to another node (were one to fit):
        this node drains, or it is full and the join was not placed here already."""
        me = self.local()
        if me.draining:
            return True
        if placed:
            return False
        return me.load + self._fresh_extra().get(me.node_id, 0.0) >= self.max_load

    async def place(
        self, *, region: str | None, placed: bool = False, room: str | None = None
    ) -> str | None:
        """:meth:`redirect`, after asking the directory which nodes the room is on when the
        join is to be sent on and this node does not hold the room (one read, bounded by
        :attr:`lookup_timeout_s`; on failure region and load alone decide, counted)."""
        where: Collection[str] | None = None
        if (
            room is not None
            and self.lookup is not None
            and self.sends_on(placed=placed)
            and self.room_nodes(room) is None
            and self._moved_to(room) is None
        ):
            where = await self._look_up(self.lookup, room)
        return self.redirect(region=region, placed=placed, room=room, where=where)

    async def _look_up(
        self, lookup: Callable[[str], Awaitable[Collection[str]]], room: str
    ) -> Collection[str]:
        try:
            async with asyncio.timeout(self.lookup_timeout_s):
                nodes = await lookup(room)
        except TimeoutError:
            self.lookups["timeout"] += 1
            return ()
        except DirectoryUnavailable:
            self.lookups["error"] += 1
            return ()
        self.lookups["found" if nodes else "absent"] += 1
        return nodes

    def redirect(
        self,
        *,
        region: str | None,
        placed: bool = False,
        room: str | None = None,
        where: Collection[str] | None = None,
    ) -> str | None:
        """The public URL a newcomer should join at instead, or None to stay here (this
        node's own placements count towards its load too, until the next renewal).

        ``placed``: another node sent it here; it stays unless this node drains (a node
        that drains takes nobody, and the others learn it at their next renewal). ``room``:
        the room it joins (a node the room is on already is preferred: ``where`` when
        given, the directory's answer; else this node's own view of the room). A room a
        drain moved goes to the node it was moved to (:meth:`move_target`).
        """
        if not self.sends_on(placed=placed):
            if not placed:
                own = self.local().node_id
                self._extra[own] = self._extra.get(own, 0.0) + PLACED_WEIGHT
            return None
        me = self.local()
        extra = self._fresh_extra()
        moved = self._moved_to(room) if me.draining and room is not None else None
        if moved is not None:
            # The room's participants were sent there: so is whoever comes back here.
            extra[moved.node_id] = extra.get(moved.node_id, 0.0) + PLACED_WEIGHT
            self.redirects["draining"] += 1
            return moved.url
        if where is None and room is not None:
            where = self.room_nodes(room)
        target = choose_node(
            self._others(),
            region=region or me.region,
            rng=self.rng,
            below=self.max_load,
            extra=extra,
            prefer=where or (),
        )
        if target is None:
            return None  # everyone is full: an overloaded node beats a refused call
        if me.draining and room in self._moves:
            self._moves[room] = target.node_id  # the room's node went away: this one now
        extra[target.node_id] = extra.get(target.node_id, 0.0) + PLACED_WEIGHT
        self.redirects["draining" if me.draining else "full"] += 1
        return target.url

    def move_target(self, *, region: str | None = None, room: str | None = None) -> str | None:
        """Where a draining node sends one room's participants: another live node (full or
        not: this one is going away; one the room is on already first), None when there is
        none.

        The choice is kept for ``room``: asked again, and for every join of the room that
        reaches this node while it drains (:meth:`redirect`), the answer is the same node
        as long as it is live and not draining itself (else a new one is chosen, and kept).
        """
        me = self.local()
        extra = self._fresh_extra()
        target = self._moved_to(room) if room is not None else None
        prefer = (self.room_nodes(room) or ()) if room is not None else ()
        if target is None and room is not None and WORKER_MEMBER_RE.search(me.node_id):
            # A worker of a node that runs several: its siblings drain the room's other
            # shards at the same moment; they must all send it to the same node.
            target = choose_node_for_room(
                self._others(), region=region or me.region, room=room, prefer=prefer
            )
        elif target is None:
            target = choose_node(
                self._others(), region=region or me.region, rng=self.rng, extra=extra, prefer=prefer
            )
        if target is None:
            return None
        if room is not None:
            self._moves[room] = target.node_id
        extra[target.node_id] = extra.get(target.node_id, 0.0) + PLACED_WEIGHT
        return target.url

    def _moved_to(self, room: str | None) -> NodeInfo | None:
        """The node a drain sent ``room`` to, while it can still take the room (live, with a
        public URL, not draining); None when the room was not moved or that node cannot."""
        node_id = self._moves.get(room) if room is not None else None
        if node_id is None:
            return None
        return next(
            (n for n in self._others() if n.node_id == node_id and n.url and not n.draining),
            None,
        )

    def count_move(self, kind: str) -> None:
        """Count one participant a drain asked to move (``kind``: one of
        :data:`MOVED_KINDS`; any other counts in the total only)."""
        self.moved += 1
        if kind in self.moved_by:
            self.moved_by[kind] += 1

    def fallbacks(self) -> list[str]:
        """Signaling URLs of other nodes to reconnect to if this one is lost, best first
        (this node's region, then the lightest), at most :data:`FALLBACK_NODES`."""
        me = self.local()
        others = [n for n in self._others() if n.url and not n.draining]
        others.sort(key=lambda n: (n.region != me.region, n.load, n.node_id))
        return [signaling_url(n.url) for n in others[:FALLBACK_NODES]]
