"""This node in the cluster directory: its lease, renewed every second, and the rooms it is home to.

:class:`NodeRegistry` registers the node at start, renews the lease every
:data:`~sfu.cluster.directory.RENEW_INTERVAL_S` and deregisters it on a clean stop (SIGTERM),
releasing its room homes. When the directory is unreachable (Redis restarting) it keeps
trying every interval; once Redis answers again it registers again and claims its rooms'
homes again (a restarted Redis without persistence has forgotten them). A room this node
holds whose home another node owns is claimed again now and then (at most
:data:`ORPHAN_CLAIMS_PER_RENEWAL` rooms a renewal, none for :data:`ORPHAN_GRACE_S` after a
reconnection): when that node lets the room go (its last participant left, or it died) one
of the nodes still holding the room becomes its home, so a room open anywhere has one.

It also keeps this node's entries in the spans of the rooms it holds (which nodes each room
is on, :class:`~sfu.cluster.directory.Directory`): one written when a room opens here,
refreshed every :data:`~sfu.cluster.directory.ROOM_REFRESH_S` with the lease renewals (in
batches, only the rooms due), written again at once for every room after a reconnection
(a restarted Redis forgot them), removed when the room ends here or the node stops cleanly.
Other nodes read them to place a join of a room they do not hold where the room already is
(:mod:`sfu.cluster.placement`). Media never waits for any of this: the registry runs beside
the data plane, on the event loop, between packets.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final

from sfu.clock import Clock
from sfu.clock import now as monotonic
from sfu.cluster.directory import (
    LEASE_TTL_S,
    RENEW_INTERVAL_S,
    ROOM_REFRESH_S,
    BusError,
    Directory,
    DirectoryUnavailable,
    NodeInfo,
    check_room,
)
from sfu.config import MAX_CLUSTER_NAME, WORKER_MEMBER_RE, ClusterConfig, is_cluster_name

__all__ = ["NodeRegistry", "member_id", "node_from_config", "node_of_member"]

log = logging.getLogger(__name__)

#: Seconds a clean stop may spend releasing homes and deregistering before it gives up (the
#: lease then lapses by itself within LEASE_TTL_S).
STOP_TIMEOUT_S: Final = 1.0
#: Rooms held here but homed elsewhere that one renewal tries to claim (one Redis script call
#: each): a room whose home node let it go has a home again within a few renewals, and a node
#: holding thousands of such rooms does not send thousands of calls a second.
ORPHAN_CLAIMS_PER_RENEWAL: Final = 32
#: After this node reconnects to the directory (a Redis restart forgot every home), it claims
#: no other node's rooms for this long: each home node first gets its own homes back (every
#: node's renewal comes within a lease), rather than whichever holder renews first.
ORPHAN_GRACE_S: Final = LEASE_TTL_S
#: Random bytes of a node's incarnation token (16 hex characters): enough that two starts of
#: one node never draw the same.
INCARNATION_BYTES: Final = 8


def member_id(node_id: str, worker: int) -> str:
    """The cluster member id of forwarding worker ``worker`` of node ``node_id``:
    ``<node_id>.w<worker>`` (never shortened, so that it leads back to the node; the
    supervisor refuses a node id too long for its workers' ids, ``check_cluster_ports``)."""
    return f"{node_id}.w{worker}"


def node_of_member(member: str) -> str:
    """The node a member id belongs to: ``node-a`` for ``node-a.w1``; a single-process
    node's id is its own (node ids never end in ``.w`` and digits: the config refuses it)."""
    match = WORKER_MEMBER_RE.search(member)
    return member[: match.start()] if match else member


def node_from_config(cluster: ClusterConfig, worker: int | None = None) -> NodeInfo:
    """This node as ``[cluster]`` describes it; an empty ``node_id`` takes the host name
    (characters a node id may not hold become ``-``). ``worker``: the index of this
    forwarding worker of a node that runs several, each a member of the cluster of its own
    (:func:`member_id`; its link address is the one the supervisor gave it)."""
    node_id = cluster.node_id
    if not node_id:
        host = socket.gethostname()
        node_id = "".join(c if is_cluster_name(c) else "-" for c in host)[:MAX_CLUSTER_NAME]
        node_id = node_id or "node"
        if (match := WORKER_MEMBER_RE.search(node_id)) is not None:  # host "web.w2": not a worker
            node_id = f"{node_id[: match.start()]}-{node_id[match.start() + 1 :]}"
    if worker is not None:
        node_id = member_id(node_id, worker)
    return NodeInfo(
        node_id=node_id,
        region=cluster.region,
        link_address=cluster.advertise_address,
        url=cluster.public_url.removesuffix("/"),
    )


class NodeRegistry:
    """Keeps this node's lease live and its room homes claimed."""

    def __init__(
        self,
        directory: Directory,
        node: NodeInfo,
        *,
        clock: Clock = monotonic,
        load: Callable[[], float] | None = None,
    ) -> None:
        self.directory = directory
        # A new incarnation for every start: the others tell a restart from a renewal by it.
        self.node = (
            node
            if node.incarnation
            else dataclasses.replace(node, incarnation=secrets.token_hex(INCARNATION_BYTES))
        )
        self._clock = clock
        self._load = load
        self._task: asyncio.Task[None] | None = None
        self._announce: asyncio.Future[None] | None = None
        #: Called with the live nodes after each renewal (the node links dial from it).
        self.on_peers: Callable[[list[NodeInfo]], Awaitable[None]] | None = None
        #: Rooms this node is home to (claimed here; claimed again after Redis comes back).
        self.homes: set[str] = set()
        #: Rooms this node holds whose home another node owned when last asked (claimed
        #: again in turns, so that a room never stays without a home while held anywhere).
        self.elsewhere: set[str] = set()
        self._orphan_turn: list[str] = []
        #: Rooms this node holds (open here), each with when its entry in the room's span
        #: was last written (-inf: due at the next renewal).
        self._held: dict[str, float] = {}
        self._orphans_from = 0.0
        #: Live nodes (this one included) as of the last renewal.
        self.peers: list[NodeInfo] = []
        #: Whether the last renewal reached the directory.
        self.connected = False
        #: When the lease was last renewed (monotonic), None before the first.
        self.last_renewal: float | None = None
        # Counters read at scrape time.
        self.renewals = 0
        self.renew_failures = 0
        self.reconnects = 0
        self.lease_lapses = 0
        #: Span entries written (rooms refreshed or added) and writes that failed (the
        #: rooms are due again at the next renewal).
        self.span_writes = 0
        self.span_failures = 0

    @property
    def healthy(self) -> bool:
        """Whether the lease is live as far as this node knows (renewed within the TTL)."""
        return self.last_renewal is not None and self._clock() - self.last_renewal < LEASE_TTL_S

    async def start(self) -> None:
        """Register (or keep trying in the background) and start renewing."""
        await self._renew_once(first=True)
        self._task = asyncio.create_task(self._run(), name="cluster-lease")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(RENEW_INTERVAL_S)
            await self._renew_once(first=False)

    def _current(self) -> NodeInfo:
        if self._load is not None:
            load = min(1.0, max(0.0, float(self._load())))
            self.node = dataclasses.replace(self.node, load=load)
        return self.node

    async def _renew_once(self, *, first: bool) -> None:
        node = self._current()
        try:
            if first:
                await self.directory.register(node)
                kept = True
            else:
                kept = await self.directory.renew(node)
            if not self.connected and not first:
                self.reconnects += 1
                log.info("cluster: the directory answers again; node registered again")
            if not kept:
                self.lease_lapses += 1
            if not kept or not self.connected:
                await self._claim_homes_again()
                self._orphans_from = self._clock() + ORPHAN_GRACE_S
                # A restarted Redis forgot the spans too: every held room is due now.
                for room in self._held:
                    self._held[room] = -math.inf
            await self._refresh_spans()
            if self._clock() >= self._orphans_from:
                await self._claim_orphans()
            self.peers = await self.directory.nodes()
        except DirectoryUnavailable as exc:
            self.renew_failures += 1
            if self.connected or first:
                log.warning("cluster: the directory is unreachable (%s); retrying", exc)
            self.connected = False
            return
        self.connected = True
        self.renewals += 1
        self.last_renewal = self._clock()
        if self.on_peers is not None:
            try:
                await self.on_peers(self.peers)
            except Exception:  # the links' trouble must not stop the lease
                log.exception("cluster: handling the live nodes failed")

    async def _claim_homes_again(self) -> None:
        me = self.node.node_id
        for room in sorted(self.homes):
            owner = await self.directory.claim_home(room, me)
            if room not in self.homes:
                # Released while the claim was on its way (the room closed here): the claim
                # must not outlive it.
                if owner == me:
                    await self.directory.release_home(room, me)
                continue
            if owner != me:
                # Another node took the room while this one was cut off: it is theirs now
                # (and this node claims it again should that node let it go).
                self.homes.discard(room)
                self.elsewhere.add(room)
                log.warning("cluster: a room's home moved to another node while cut off")

    @property
    def held(self) -> set[str]:
        """Rooms this node holds (opened here and not ended), as the room bus told it."""
        return set(self._held)

    async def _refresh_spans(self) -> None:
        """Write this node's entry in the span of each held room not written for
        :data:`ROOM_REFRESH_S` (one directory call per batch). Best effort: a failed write
        leaves the rooms due for the next renewal, and the lease renewal stands (the
        entries outlive two missed refreshes)."""
        now = self._clock()
        due = sorted(r for r, at in self._held.items() if now - at >= ROOM_REFRESH_S)
        if not due:
            return
        try:
            await self.directory.hold_rooms(self.node.node_id, due)
        except DirectoryUnavailable:
            self.span_failures += 1
            return
        self.span_writes += len(due)
        gone = []
        for room in due:
            if room in self._held:
                self._held[room] = now
            else:
                gone.append(room)  # ended here while the write was on its way
        if gone:
            try:
                await self.directory.leave_rooms(self.node.node_id, gone)
            except DirectoryUnavailable:
                self.span_failures += 1  # they lapse by themselves within ROOM_LEASE_TTL_S

    async def _hold_now(self, room: str) -> None:
        """Write the new room's span entry now (best effort: the next renewal retries)."""
        try:
            await self.directory.hold_rooms(self.node.node_id, [room])
        except DirectoryUnavailable:
            self.span_failures += 1
            return
        self.span_writes += 1
        if room in self._held:
            self._held[room] = self._clock()
        else:  # ended here while the write was on its way
            with contextlib.suppress(DirectoryUnavailable):
                await self.directory.leave_rooms(self.node.node_id, [room])

    async def room_nodes(self, room: str) -> set[str]:
        """The other nodes the room is on, by the directory (one read);
        :class:`~sfu.cluster.directory.DirectoryUnavailable` at once while the directory
        is known to be away (the last renewal failed)."""
        if not self.connected:
            raise DirectoryUnavailable("the directory did not answer the last renewal")
        try:
            check_room(room)
        except BusError:
            return set()  # no node holds a room by a name no span may have
        return await self.directory.room_nodes(room) - {self.node.node_id}

    async def _claim_orphans(self) -> None:
        """Claim, in turns, the rooms held here whose home was another node's: one that node
        let go (or that lapsed with it) becomes this node's."""
        if not self.elsewhere:
            return
        if not self._orphan_turn:
            self._orphan_turn = sorted(self.elsewhere)
        batch = self._orphan_turn[:ORPHAN_CLAIMS_PER_RENEWAL]
        del self._orphan_turn[:ORPHAN_CLAIMS_PER_RENEWAL]
        me = self.node.node_id
        for room in batch:
            if room not in self.elsewhere:
                continue
            owner = await self.directory.claim_home(room, me)
            if room not in self.elsewhere:
                # The room closed here while the claim was on its way (release_home): a
                # home taken meanwhile goes back at once.
                if owner == me:
                    await self.directory.release_home(room, me)
                continue
            if owner == me:
                self.homes.add(room)
                self.elsewhere.discard(room)

    async def claim_home(self, room: str) -> str:
        """This node holds the room: make it the room's home unless a live node already is
        (returns the home), and record this node in the room's span."""
        new = room not in self._held
        if new:
            self._held[room] = -math.inf  # due at the next renewal should the write fail
        owner = await self.directory.claim_home(room, self.node.node_id)
        if owner == self.node.node_id:
            self.homes.add(room)
            self.elsewhere.discard(room)
        else:
            self.elsewhere.add(room)
        if new:
            await self._hold_now(room)
        return owner

    async def release_home(self, room: str) -> bool:
        """Give up the room's home (only ours can be released) and this node's entry in its
        span; this node no longer holds the room."""
        self.homes.discard(room)
        self.elsewhere.discard(room)
        self._held.pop(room, None)
        released = await self.directory.release_home(room, self.node.node_id)
        try:
            await self.directory.leave_rooms(self.node.node_id, [room])
        except DirectoryUnavailable:
            self.span_failures += 1  # the entry lapses by itself within ROOM_LEASE_TTL_S
        return released

    def set_draining(self) -> None:
        """Announce that this node takes no one new: at once (a renewal now, in the
        background), so the other nodes stop placing joins here within a round trip."""
        self.node = dataclasses.replace(self.node, draining=True)
        if self._task is not None:  # started: there is a running loop and a lease to renew
            self._announce = asyncio.ensure_future(self._renew_once(first=False))

    async def stop(self) -> None:
        """Stop renewing, release the homes and deregister (best effort, bounded in time)."""
        for task in (self._task, self._announce):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._announce = None
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                for room in sorted(self.homes):
                    await self.directory.release_home(room, self.node.node_id)
                await self.directory.leave_rooms(self.node.node_id, sorted(self._held))
                await self.directory.deregister(self.node.node_id)
        except (DirectoryUnavailable, TimeoutError):
            log.warning("cluster: could not deregister; the lease lapses by itself")
        self.homes.clear()
        self.elsewhere.clear()
        self._held.clear()
        self.connected = False
        await self.directory.close()

    def status(self) -> dict[str, Any]:
        """The cluster part of ``/readyz``: this node, the directory's health, peers alive."""
        return {
            "node_id": self.node.node_id,
            "region": self.node.region,
            "directory": "up" if self.connected else "down",
            "lease": "live" if self.healthy else "lapsed",
            "nodes_alive": len(self.peers),
            "draining": self.node.draining,
        }
