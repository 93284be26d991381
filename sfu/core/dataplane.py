"""Keeps the forwarder's tables in step with the control plane, and feeds its log back.

The forwarder (``sfu.core.kernels.Forwarder``: compiled, or the pure-Python reference) forwards
media of registered streams on its own. :class:`DataPlane` is the control plane's side of it:

* a participant's :class:`~sfu.core.peer.Peer` *claims* its transport; once the transport has
  SRTP keys and a selected ICE address it is registered (and re-registered when the address
  moves, removed when it closes);
* the publisher's source streams of audio and VP8 publications are registered with their
  fan-out snapshot, rebuilt whenever someone subscribes or leaves;
* a transport whose selected address is an ICE-TCP connection is registered *framed*: the
  forwarder forwards its media like any other's, but hands what it sends to it back
  (``drain_framed``) for the composition root to write, RFC 4571-framed, to its connection;
* on every timer tick :meth:`DataPlane.replay` drains the forwarder's ingress log into the
  receive bookkeeping the Python path would have done per packet (RTCP receive statistics,
  NACK and TWCC feedback, bitrate meters, keyframe times, audio levels, counters) and its
  sampled forwarding latencies into the router's histogram;
* a relay pipe's far end (``sfu.core.relay.RemotePublication``) opens a *source*: a transport
  slot without address or SRTP whose streams' packets, already decrypted by the pipe, the
  forwarder takes through :meth:`DataPlane.ingest` and fans out like any other's (its
  records are replayed to the remote publication, as a peer's are to the peer);
* a node link's relay pipe opens a *relay input* (:meth:`DataPlane.open_input`: the peer's
  link address and its media lane's opener) and each remote publication routes its flow to
  its source (:meth:`DataPlane.route_flow`); the node link socket is then read here
  (:meth:`DataPlane.read_link`), and the forwarder opens, decodes and forwards the relayed
  RTP of those flows itself; what it opened but did not forward goes to the input's
  ``deliver`` (the link's Python path), what is not a relay input's lane datagram to the
  endpoint's, and its counts are folded into the link's and the pipe's (``fold``);
* a transport with an egress pacer (``Peer`` once it has a bandwidth estimate) gets its
  forwarded media queued there instead of sent; the forwarder releases what the budget
  allows with each batch, and what the pacers still hold (the backlog) on this plane's pacer
  timer (:meth:`DataPlane.release_paced`, armed through :attr:`DataPlane.on_pacer_due`);
  without a socket or a timer, each owner times its own pacer.

Nothing here runs per packet.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from sfu._fastpath._lane_shared import MAX_RELAY_INPUTS, MAX_RELAY_OUTPUTS
from sfu._fastpath.values import AUDIO, VP8, LogRecord
from sfu.core.handles import HandlePool
from sfu.core.kernels import Forwarder
from sfu.core.relay import RelayTap
from sfu.transport.ice import is_tcp

if TYPE_CHECKING:
    from sfu.core.counters import RouterStats
    from sfu.core.kernels import Kernels
    from sfu.core.publication import Publication, SourceStream
    from sfu.transport.transport import WebRtcTransport

__all__ = ["HANDLER_ERROR_LOG_INTERVAL_S", "INGEST_BATCH", "Claimant", "DataPlane"]

log = logging.getLogger(__name__)

#: Relayed packets :meth:`DataPlane.ingest` holds before it forwards them without waiting for
#: the end of the batch (a socket reader's wakeup reads at most a few hundred).
INGEST_BATCH: Final = 256
#: The largest packet the forwarder's ingest takes (its work buffer); larger ones take the
#: Python path, which refuses and counts them by reason.
INGEST_MAX_BYTES: Final = 2048
#: A failing handler of node link datagrams logs its traceback at most this often (s); the
#: rest are only counted.
HANDLER_ERROR_LOG_INTERVAL_S: Final = 60.0


#: The pacer timer is never armed sooner than this after a release (seconds): a pacer that
#: says it is due again at once (it should not: a release takes all that is due) must not
#: spin the loop.
PACER_MIN_STEP_S: Final = 0.001


class Claimant(Protocol):
    """What claims a transport: the participant's listener (``sfu.core.peer.Peer``), or a
    relay pipe's far end (``sfu.core.relay.RemotePublication``, whose ``transport`` is a
    token of its source), which replays the forwarder's records of its streams into its
    receive bookkeeping."""

    @property
    def transport(self) -> Hashable: ...

    def replay_records(
        self,
        records: Sequence[LogRecord],
        streams: Mapping[int, tuple[Any, Publication, SourceStream]],
    ) -> None: ...


class _Claim:
    __slots__ = (
        "address",
        "handle",
        "level_id",
        "pacing",
        "peer",
        "registered",
        "source",
        "srtp",
        "twcc_id",
    )

    def __init__(self, handle: int, peer: Claimant) -> None:
        self.handle = handle
        self.peer = peer
        #: A plaintext source (open_source), not a WebRTC transport.
        self.source = False
        self.twcc_id = 0
        self.level_id = 0
        self.registered = False
        self.address: Any = None
        self.srtp: Any = None
        #: (pacer, send history, release callback) once the owner paces this transport.
        self.pacing: tuple[Any, Any, Callable[[float], None]] | None = None


#: What a relay input's owner is told at each fold: (flow datagrams forwarded, their payload
#: bytes, datagrams opened without a flow id, now) since the last fold.
FoldInput = Callable[[int, int, int, float], None]


class _Input:
    """A relay input as the control plane knows it (the forwarder holds the rest)."""

    __slots__ = ("deliver", "fold", "folded", "index")

    def __init__(self, index: int, deliver: Callable[[int, bytes], None], fold: FoldInput) -> None:
        self.index = index
        self.deliver = deliver
        self.fold = fold
        #: The forwarder's counts of this input at the last fold.
        self.folded = (0, 0, 0)


class DataPlane:
    """The forwarder plus the bookkeeping that maps its handles to control-plane objects."""

    def __init__(
        self,
        forwarder: Forwarder | None = None,
        *,
        kernels: Kernels,
        clock: Callable[[], float] | None = None,
        max_sources: int | None = None,
    ) -> None:
        """``max_sources``: most plaintext sources open at once (the forwarder's slots kept
        for them beyond the participants' transports; None: no bound of their own)."""
        if forwarder is not None and not isinstance(forwarder, kernels.Forwarder):
            raise TypeError(f"the forwarder is not the {kernels.name} kernels' Forwarder")
        #: The per-packet classes of every publication and subscription this plane serves.
        self.kernels = kernels
        self.forwarder = forwarder if forwarder is not None else kernels.Forwarder(clock=clock)
        self._free_tx = HandlePool(self.forwarder.max_transports)
        self._free_streams = HandlePool(self.forwarder.max_streams)
        self._claims: dict[Hashable, _Claim] = {}
        #: stream handle -> (peer, publication, source stream)
        self._streams: dict[int, tuple[Claimant, Publication, SourceStream]] = {}
        self._handles: dict[int, int] = {}  # id(source stream) -> handle
        self._pub_streams: dict[int, set[int]] = {}  # id(publication) -> stream handles
        self._paced: dict[int, _Claim] = {}  # transport handle -> its claim, while paced
        #: While True no stream is registered: all media takes the Python path (see suspend).
        self.suspended = False
        #: Streams whose publication a pipe relays: the forwarder serves their local
        #: subscribers and logs their packets for the taps (:meth:`relay`).
        self._relayed: set[int] = set()
        #: Packets of relayed publications the forwarder logged and :meth:`relay` handed on.
        self.relayed = 0
        #: id(publication) -> its pipes' taps (and their outs), kept with the fan-out so that
        #: :meth:`relay` does not scan every local subscriber for each relayed packet.
        self._taps: dict[int, tuple[tuple[RelayTap, Any, int], ...]] = {}
        #: Whether taps whose carrier names a target get a relay output (the forwarder seals
        #: and sends their packets itself); False: every packet goes through the taps.
        self.relay_outputs = True
        #: The media socket :meth:`ingest` sends on (the composition root sets it); without
        #: one, what it would send goes to :attr:`on_egress`.
        self.socket: socket.socket | None = None
        self.on_egress: Callable[[list[tuple[bytes, Any]]], None] | None = None
        #: Arms the pacer timer (the composition root's): the backlogged pacers' next
        #: release is due then (:meth:`release_paced` runs it).
        self.on_pacer_due: Callable[[float], None] | None = None
        #: Called after each :meth:`ingest` that forwarded (the composition root sends the
        #: ICE-TCP egress and runs the rooms' timer when due, as after a pump).
        self.after_ingest: Callable[[float], None] | None = None
        #: Schedules :meth:`flush_ingest` after the current batch (the composition root
        #: gives the loop's ``call_soon``); None: each ingested packet is forwarded at once.
        self.defer: Callable[[Callable[[], None]], object] | None = None
        #: Packets :meth:`ingest` forwarded, and those the forwarder no longer knew.
        self.ingested = 0
        self.ingest_misses = 0
        #: Node link datagrams whose handler raised, and kept relay datagrams whose input
        #: closed within their batch (both dropped).
        self.link_handler_errors = 0
        self.relay_in_orphans = 0
        self._handler_error_logged = -HANDLER_ERROR_LOG_INTERVAL_S
        self.max_sources = max_sources
        self._sources = 0
        self._pending: list[tuple[int, bytes]] = []
        self._pending_at = 0.0
        self._flush_armed = False
        #: (transport handle, ssrc) of every stream registered in the forwarder, and each
        #: registered stream handle's entry there.
        self._live: set[tuple[int, int]] = set()
        self._live_of: dict[int, tuple[int, int]] = {}
        #: Whether relay inputs may be opened (False: every relayed packet takes the link's
        #: Python path, as before they existed: for diagnostics, as :meth:`suspend`).
        self.relay_inputs = True
        self._inputs: dict[Hashable, _Input] = {}
        self._free_inputs = list(range(MAX_RELAY_INPUTS - 1, -1, -1))
        #: Per relay input key (a pipe): flow id -> the claimant whose source it feeds.
        #: Kept whether or not the input is open (the flow may open first).
        self._flows: dict[Hashable, dict[int, Claimant]] = {}

    # -- transports ---------------------------------------------------------------------------

    def claim(
        self, transport: WebRtcTransport, peer: Claimant, twcc_id: int, level_id: int
    ) -> None:
        """``peer`` listens on ``transport``: forward its media here once it is connected."""
        claim = self._claims.get(transport)
        if claim is None:
            if not self._free_tx:
                return  # table full: this transport stays on the slow path
            claim = _Claim(self._free_tx.take(), peer)
            self._claims[transport] = claim
        claim.twcc_id, claim.level_id = twcc_id, level_id
        claim.registered = False  # push the new ids
        self.sync(transport)

    def handle_of(self, transport: Hashable) -> int:
        """The forwarder's handle of a claimed transport (-1: not claimed)."""
        claim = self._claims.get(transport)
        return -1 if claim is None else claim.handle

    def sync(self, transport: WebRtcTransport) -> None:
        """Register, update or remove ``transport`` to match its state (cheap when unchanged)."""
        claim = self._claims.get(transport)
        if claim is None:
            return
        if transport.finished:
            self.release(transport)
            return
        srtp = transport.srtp
        address = transport.ice.selected_address
        if srtp is None or address is None:
            if claim.registered:
                self.forwarder.remove_transport(claim.handle)
                claim.registered = False
            return
        if claim.registered and claim.address == address and claim.srtp is srtp:
            return
        self.forwarder.set_transport(
            claim.handle, address, srtp, claim.twcc_id, claim.level_id, framed=is_tcp(address)
        )
        first = not claim.registered
        claim.registered, claim.address, claim.srtp = True, address, srtp
        if claim.pacing is not None:
            self.forwarder.set_pacer(claim.handle, claim.pacing[0], claim.pacing[1])
        if first:
            for handle, (peer, pub, stream) in list(self._streams.items()):
                if peer is claim.peer:
                    self._register_stream(handle, claim.handle, pub, stream)

    def impair(self, transport: WebRtcTransport, drop_every: int) -> bool:
        """Drop every ``drop_every``-th packet the data plane forwards to ``transport``
        (0 stops it); for tests and drills. False when the transport is not registered."""
        claim = self._claims.get(transport)
        if claim is None or not claim.registered:
            return False
        self.forwarder.set_impairment(claim.handle, drop_every)
        return True

    def pace(
        self,
        transport: WebRtcTransport,
        pacer: Any,
        history: Any,
        release: Callable[[float], None],
    ) -> bool:
        """Queue what the forwarder sends to ``transport`` in ``pacer`` (a ``Pacer`` of this
        plane's kernels; ``history``: the transport's send history, restamped on release);
        ``release(now)`` is the owner's release, called for the backlog after each batch
        when this plane does not time the pacers itself (no socket or no pacer timer: see
        :attr:`times_pacers`). False when the transport is not claimed (its media takes the
        Python path, unpaced)."""
        claim = self._claims.get(transport)
        if claim is None:
            return False
        claim.pacing = (pacer, history, release)
        self._paced[claim.handle] = claim
        if claim.registered:
            self.forwarder.set_pacer(claim.handle, pacer, history)
        return True

    @property
    def times_pacers(self) -> bool:
        """Whether this plane releases the pacers' backlog on its own timer
        (:attr:`on_pacer_due`, with a socket to send on); otherwise each owner times its
        pacer (a harness without sockets)."""
        return self.socket is not None and self.on_pacer_due is not None

    def release_paced(self, now: float) -> float | None:
        """After a batch, and when the pacer timer fires: what the backlogged pacers let go
        at ``now`` leaves from the forwarder, and the timer is armed for the next; returns
        when that is (None: no backlog, or the owners time their pacers)."""
        forwarder = self.forwarder
        if self.on_pacer_due is None or self.socket is None:
            for handle in forwarder.paced_backlog():
                claim = self._paced.get(handle)
                if claim is not None and claim.pacing is not None:
                    claim.pacing[2](now)
            return None
        if forwarder.paced_due <= now:
            forwarder.release_backlog(now, self.socket)
        due = forwarder.paced_due
        if due == math.inf:
            return None
        due = max(due, now + PACER_MIN_STEP_S)
        self.on_pacer_due(due)
        return due

    def send_paced(self, transport: Hashable, now: float) -> list[bytes] | None:
        """Send what ``transport``'s pacer lets go at ``now`` from the forwarder, on the
        media socket (no Python per packet); returns what the caller must send itself (all
        of it without a socket; an ICE-TCP transport's packets), or None when the forwarder
        does not hold the transport's pacer now (the caller releases it)."""
        claim = self._claims.get(transport)
        if claim is None or claim.pacing is None or not claim.registered:
            return None
        leftover = self.forwarder.send_paced(claim.handle, now, self.socket)
        due = self.forwarder.paced_due
        if due != math.inf and self.on_pacer_due is not None and self.socket is not None:
            # What it still holds: the plane's timer releases it.
            self.on_pacer_due(max(due, now + PACER_MIN_STEP_S))
        return leftover

    def release(self, transport: Hashable) -> None:
        """Forget ``transport`` and the streams it carried."""
        claim = self._claims.pop(transport, None)
        if claim is None:
            return
        if self._paced.get(claim.handle) is claim:
            del self._paced[claim.handle]
        if claim.source:
            self._sources -= 1
            self._unroute(claim.peer)
        if claim.source and self._pending:
            # Taken but not yet forwarded: dropped with the source (its flow ended).
            kept = [entry for entry in self._pending if entry[0] != claim.handle]
            self.ingest_misses += len(self._pending) - len(kept)
            self._pending = kept
        for handle, (peer, _, _) in list(self._streams.items()):
            if peer is claim.peer:
                self._drop_stream(handle)
        if claim.registered:
            self.forwarder.remove_transport(claim.handle)
        self._free_tx.give(claim.handle)  # reused after a quarantine (sfu.core.handles)

    # -- plaintext sources (a relay pipe's far end) ----------------------------------------

    def open_source(self, owner: Claimant, *, level_id: int) -> bool:
        """``owner`` feeds decrypted media of its streams through :meth:`ingest` (its
        ``transport`` is the source's token); ``level_id``: the audio-level extension id its
        packets carry. False when the transport table is full (its media stays on the Python
        path)."""
        token = owner.transport
        claim = self._claims.get(token)
        if claim is None:
            if not self._free_tx or (
                self.max_sources is not None and self._sources >= self.max_sources
            ):
                return False  # never a participant's slot
            self._sources += 1
            claim = _Claim(self._free_tx.take(), owner)
            self._claims[token] = claim
        self.forwarder.set_source(claim.handle, level_id)
        claim.source, claim.level_id = True, level_id
        if not claim.registered:
            claim.registered = True
            for handle, (peer, pub, stream) in list(self._streams.items()):
                if peer is owner:
                    self._register_stream(handle, claim.handle, pub, stream)
        return True

    def close_source(self, owner: Claimant) -> None:
        """Forget ``owner``'s source and its streams."""
        self.release(owner.transport)

    def ingest(self, owner: Claimant, packet: bytes, now: float) -> bool:
        """Take ``packet`` (decrypted RTP of one of ``owner``'s streams) for the forwarder;
        False when that stream is not registered there (the caller's Python path takes it).
        Taken packets are forwarded together when :attr:`defer` runs the flush (at the end of
        the socket reader's batch: each subscriber's packets of the batch leave in one send),
        or at once without it."""
        claim = self._claims.get(owner.transport)
        if (
            claim is None
            or not claim.source
            or not 12 <= len(packet) <= INGEST_MAX_BYTES
            or not 128 <= packet[0] <= 191  # RTP version 2 (RFC 3550 §5.1)
            or 192 <= packet[1] <= 223  # RTCP (RFC 5761 §4)
            or (claim.handle, int.from_bytes(packet[8:12], "big")) not in self._live
        ):
            # The caller's Python path takes it, after what was taken before it.
            self.flush_ingest()
            return False
        pending = self._pending
        if not pending:
            self._pending_at = now
        pending.append((claim.handle, packet))
        if self.defer is None or len(pending) >= INGEST_BATCH:
            self.flush_ingest()
        elif not self._flush_armed:
            self._flush_armed = True
            self.defer(self._deferred_flush)
        return True

    def _deferred_flush(self) -> None:
        self._flush_armed = False
        self.flush_ingest()

    def flush_ingest(self) -> int:
        """Forward the packets :meth:`ingest` took (as of the first one's arrival); returns
        how many the forwarder forwarded."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        now = self._pending_at
        slow, egress = self.forwarder.ingest(batch, now, self.socket)
        # A stream removed since its packet was taken (its flow closed): dropped, counted.
        self.ingest_misses += len(slow)
        self.ingested += len(batch) - len(slow)
        if egress and self.on_egress is not None:
            self.on_egress(egress)
        self.release_paced(now)
        if self.after_ingest is not None:
            self.after_ingest(now)
        return len(batch) - len(slow)

    # -- relay inputs (a node link's receiving side) -------------------------------------------

    def open_input(
        self,
        key: Hashable,
        address: Any,
        opener: Any,
        *,
        deliver: Callable[[int, bytes], None],
        fold: FoldInput,
    ) -> bool:
        """Open the lane datagrams from ``address`` with ``opener`` (a node link's media
        lane's own) in the forwarder, as relay input ``key`` (its pipe). ``deliver(flow,
        payload)`` takes what opened but was not forwarded (the link's Python path);
        ``fold`` the counts of what was. False (nothing changes: the link's Python path
        reads everything) when inputs are off, the table is full (MAX_RELAY_INPUTS) or the
        opener or address does not suit the forwarder."""
        self.close_input(key)
        if not self.relay_inputs or not self._free_inputs:
            return False
        index = self._free_inputs[-1]
        try:
            self.forwarder.set_relay_input(index, address, opener)
        except (TypeError, ValueError):
            return False
        self._free_inputs.pop()
        self._inputs[key] = _Input(index, deliver, fold)
        self._push_flows(key)
        return True

    def close_input(self, key: Hashable, now: float = 0.0) -> None:
        """Forget relay input ``key`` (its link is down or replaced), its counts folded
        first; its datagrams take the link's Python path again."""
        entry = self._inputs.pop(key, None)
        if entry is None:
            return
        self._fold(entry, now)
        self.forwarder.remove_relay_input(entry.index)
        self._free_inputs.insert(0, entry.index)  # reused last

    def route_flow(self, key: Hashable, flow: int, owner: Claimant) -> None:
        """Flow ``flow`` of relay input ``key`` feeds ``owner``'s source: its RTP of the
        source's registered streams is forwarded without Python. Undone when the source
        is released (:meth:`close_source`)."""
        self._flows.setdefault(key, {})[flow] = owner
        self._push_flows(key)

    def _unroute(self, owner: Claimant) -> None:
        for key, flows in list(self._flows.items()):
            gone = [flow for flow, known in flows.items() if known is owner]
            if not gone:
                continue
            for flow in gone:
                del flows[flow]
            if not flows:
                del self._flows[key]
            self._push_flows(key)

    def _push_flows(self, key: Hashable) -> None:
        """Give the forwarder input ``key``'s flows whose owner has a source registered."""
        entry = self._inputs.get(key)
        if entry is None:
            return
        table: dict[int, int] = {}
        for flow, owner in self._flows.get(key, {}).items():
            claim = self._claims.get(owner.transport)
            if claim is not None and claim.source and claim.registered:
                table[flow] = claim.handle
        try:
            self.forwarder.set_relay_flows(entry.index, table)
        except ValueError:  # beyond the flow limit: those flows take the Python path
            self.forwarder.set_relay_flows(entry.index, {})

    def _fold(self, entry: _Input, now: float) -> None:
        counts = self.forwarder.relay_input_counts(entry.index)
        if counts != entry.folded:
            packets, octets, malformed = (a - b for a, b in zip(counts, entry.folded, strict=True))
            entry.folded = counts
            entry.fold(packets, octets, malformed, now)

    def fold_inputs(self, now: float) -> None:
        """Tell every relay input's owner what the forwarder counted since the last fold."""
        for entry in self._inputs.values():
            self._fold(entry, now)

    def read_link(
        self, sock: socket.socket, now: float, slow: Callable[[bytes, Any], None]
    ) -> None:
        """The node link socket's reader: the forwarder takes the relay inputs' lane
        datagrams (forwarded, or opened and delivered to the input's owner); everything
        else goes to ``slow`` (the link endpoint's ``datagram_received``), first: a STREAMS
        or a CLOSE on QUIC is seen before the media kept in the same batch.

        Every datagram read is handed on even when a handler fails (the kept ones were
        opened, so the lane's replay window and counts already have them): a failure is
        counted (``link_handler_errors``) and logged at most once a minute."""
        self.flush_ingest()
        before = self.forwarder.relay_in_packets
        sent_before = self.forwarder.sent_packets
        rest, egress = self.forwarder.pump_link(sock, now, self.socket)
        forwarded = self.forwarder.relay_in_packets - before
        # Sent anything (forwarded, or what the pacers let go with the batch): the ICE-TCP
        # share waits for after_ingest, and the pacer timer for what they still hold.
        sent = self.forwarder.sent_packets != sent_before
        # Each kept datagram's input as of the read: a handler below (a QUIC close, a link
        # replaced) may close an input, and its index may be reused for another link.
        inputs = {entry.index: entry for entry in self._inputs.values()}
        kept = [
            (inputs.get(index), flow, payload)
            for index, flow, payload in self.forwarder.drain_relay_in()
        ]
        try:
            if egress and self.on_egress is not None:
                self.on_egress(egress)
            if forwarded:
                self.relay(now)  # a relayed publication relayed on (to a worker's pipe)
            if forwarded or sent:
                self.release_paced(now)
            if forwarded:
                self.fold_inputs(now)
            if (forwarded or sent) and self.after_ingest is not None:
                self.after_ingest(now)
        finally:
            for data, address in rest:
                try:
                    slow(data, address)
                except Exception:  # one datagram's bug must not lose the rest of the batch
                    self._link_handler_failed(now)
            for entry, flow, payload in kept:
                if entry is None:
                    self.relay_in_orphans += 1  # its input was closed mid-batch
                    continue
                try:
                    entry.deliver(flow, payload)
                except Exception:
                    self._link_handler_failed(now)

    def _link_handler_failed(self, now: float) -> None:
        """A handler of a link datagram raised: counted, its traceback logged at most once
        per :data:`HANDLER_ERROR_LOG_INTERVAL_S` (a datagram that triggers a bug must not
        flood the log)."""
        self.link_handler_errors += 1
        if now - self._handler_error_logged >= HANDLER_ERROR_LOG_INTERVAL_S:
            self._handler_error_logged = now
            log.exception(
                "a node link datagram's handler failed (%d so far)", self.link_handler_errors
            )

    # -- streams and routes -------------------------------------------------------------------

    def add_stream(self, peer: Claimant, publication: Publication, stream: SourceStream) -> None:
        """Forward ``stream`` (audio, or VP8 video) in the data plane from now on."""
        kind = _kind(publication)
        claim = self._claims.get(peer.transport)
        if kind is None or claim is None or id(stream) in self._handles:
            return
        if not self._free_streams:
            return
        handle = self._free_streams.take()
        self._streams[handle] = (peer, publication, stream)
        self._handles[id(stream)] = handle
        self._pub_streams.setdefault(id(publication), set()).add(handle)
        if claim.registered:
            self._register_stream(handle, claim.handle, publication, stream)

    def remove_stream(self, stream: SourceStream) -> None:
        """Stop forwarding ``stream`` in the data plane (its packets go to the slow path)."""
        handle = self._handles.get(id(stream))
        if handle is not None:
            self._drop_stream(handle)

    def routes_changed(self, publication: Publication) -> None:
        """The publication's fan-out snapshot changed: push it for each of its streams."""
        self._note_taps(publication)
        for handle in self._pub_streams.get(id(publication), ()):
            peer, pub, _ = self._streams[handle]
            claim = self._claims.get(peer.transport)
            if claim is None or not claim.registered or self.suspended:
                continue
            try:
                self.forwarder.set_routes(handle, self._routes(pub))
            except KeyError:
                continue  # not in the forwarder (its transport's table was full): slow path
            self._set_relayed(handle, publication)

    def _routes(self, publication: Publication) -> list[tuple[Any, int]]:
        """The fan-out entries the forwarder sends on (a pipe's taps are called by
        :meth:`relay` instead)."""
        return [
            (sub, self.handle_of(transport))
            for sub, transport in publication.fanout
            if not getattr(transport, "relay", False)
        ]

    def _note_taps(self, publication: Publication) -> None:
        """Remember ``publication``'s pipe taps: each with the index of its relay output
        (the forwarder sends for it), or -1 (its packets go to the tap, :meth:`relay`)."""
        # Packets logged under the old outputs are handed on first: their ``done`` bits
        # index the outputs as they were.
        self.relay(0.0)
        entries: list[tuple[RelayTap, Any, int]] = []
        outputs = 0
        for tap, out in publication.fanout:
            if not isinstance(tap, RelayTap):
                continue
            output = None
            if self.relay_outputs and outputs < MAX_RELAY_OUTPUTS:
                try:
                    output = tap.make_output(self.kernels.RelayOutput)
                except (TypeError, ValueError):  # another kind's sealer, an address the
                    output = None  # kernel cannot send to: the tap relays, as without one
            entries.append((tap, out, -1 if output is None else outputs))
            outputs += output is not None
        if entries:
            self._taps[id(publication)] = tuple(entries)
        else:
            self._taps.pop(id(publication), None)

    def _set_relayed(self, handle: int, publication: Publication) -> None:
        """Push the publication's relay outputs for stream ``handle`` and log its packets
        for the taps that have none."""
        taps = self._taps.get(id(publication), ())
        outputs = [tap.output for tap, _, index in taps if index >= 0]
        logged = any(index < 0 for _, _, index in taps)
        try:
            self.forwarder.set_relay_outputs(handle, outputs)
            self.forwarder.set_relay(handle, logged)
        except KeyError:
            return  # not in the forwarder (table full, suspended): the Python path relays
        if taps:
            self._relayed.add(handle)
        else:
            self._relayed.discard(handle)

    def relay(self, now: float) -> int:
        """Hand the packets the forwarder logged for relayed publications to their pipes'
        taps (each frames a packet for its flow when its layer is demanded), but to those
        whose relay output took it already; returns the packets handed over."""
        entries = self.forwarder.drain_relay()
        self.relayed += len(entries)
        streams, taps = self._streams, self._taps
        for handle, packet, done in entries:
            entry = streams.get(handle)
            if entry is None:
                continue
            _, publication, stream = entry
            for tap, out, index in taps.get(id(publication), ()):
                if index >= 0 and (done >> index) & 1:
                    continue
                n = tap.relay(stream, packet)
                if n:
                    out.send_rtp(bytes(memoryview(tap.buf)[:n]))
        return len(entries)

    def _register_stream(
        self, handle: int, transport: int, publication: Publication, stream: SourceStream
    ) -> None:
        kind = _kind(publication)
        assert kind is not None
        if self.suspended:
            return
        self._relayed.discard(handle)
        self._unlive(handle)
        try:
            self.forwarder.set_stream(handle, transport, stream, kind)
        except ValueError:
            return  # the transport's stream table is full: the slow path keeps it
        self._live_of[handle] = key = (transport, stream.ssrc)
        self._live.add(key)
        self.forwarder.set_routes(handle, self._routes(publication))
        self._note_taps(publication)
        self._set_relayed(handle, publication)

    def _drop_stream(self, handle: int) -> None:
        entry = self._streams.pop(handle, None)
        if entry is None:
            return
        _, pub, stream = entry
        self._handles.pop(id(stream), None)
        handles = self._pub_streams.get(id(pub))
        if handles is not None:
            handles.discard(handle)
            if not handles:
                del self._pub_streams[id(pub)]
                self._taps.pop(id(pub), None)
        self.forwarder.remove_stream(handle)
        self._unlive(handle)
        self._relayed.discard(handle)
        self._free_streams.give(handle)

    def _unlive(self, handle: int) -> None:
        key = self._live_of.pop(handle, None)
        if key is not None:
            self._live.discard(key)

    def suspend(self) -> None:
        """Send all media through the Python path (the reference of the data plane) until
        :meth:`resume`; for diagnostics and for tests that observe that path's per-packet
        calls. Both paths share every per-packet state, so the switch is seamless."""
        self.suspended = True
        self.flush_ingest()
        self._relayed.clear()
        self._live.clear()
        self._live_of.clear()
        for handle in list(self._streams):
            self.forwarder.remove_stream(handle)

    def resume(self) -> None:
        """Forward in the data plane again (see :meth:`suspend`)."""
        self.suspended = False
        for handle, (peer, pub, stream) in list(self._streams.items()):
            claim = self._claims.get(peer.transport)
            if claim is not None and claim.registered:
                self._register_stream(handle, claim.handle, pub, stream)

    # -- feedback -----------------------------------------------------------------------------

    def replay(self, stats: RouterStats | None = None, *, touched: set[Any] | None = None) -> int:
        """Hand the forwarder's ingress log to the peers; returns the records replayed.
        ``touched`` gets every peer that had records (their timers may have moved)."""
        records = self.forwarder.drain_log()
        streams = self._streams
        # Each peer's records in one call, in their order (a peer's TWCC, NACK and receive
        # statistics see its packets as they arrived); peers share no receive state, so
        # their order among each other does not matter.
        batches: dict[Claimant, list[LogRecord]] = {}
        last_handle = -1
        batch: list[LogRecord] = []
        for record in records:
            handle = record[0]
            if handle != last_handle:
                entry = streams.get(handle)
                if entry is None:
                    continue
                last_handle = handle
                found = batches.get(entry[0])
                if found is None:
                    found = batches[entry[0]] = []
                batch = found
            batch.append(record)
        for peer, peer_records in batches.items():
            peer.replay_records(peer_records, streams)
        if touched is not None:
            touched.update(batches)
        samples = self.forwarder.drain_latency()
        if stats is not None:
            for sample in samples:
                stats.forward_latency.observe(sample)
        return len(records)

    @property
    def stream_count(self) -> int:
        """Source streams the data plane forwards (or will, once their transport connects)."""
        return len(self._streams)


def _kind(publication: Publication) -> int | None:
    """The stream kind if the forwarder handles it itself (others stay on the slow path)."""
    kind = publication.stream_kind
    return kind if kind in (AUDIO, VP8) else None
