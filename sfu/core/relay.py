"""Publications relayed over a pipe: the two ends of a room spread over forwarding places.

**Publishing side** (``RelayTap``, ``PublicationRelay``): a flow the peer asked for becomes one
more entry in the publication's fan-out, a tap whose ``forward`` puts the packet, as the
publisher's worker decrypted it, on the pipe when the peer demands its spatial layer. Ingest
(``sfu._fastpath.ingest``) calls it like any subscription, so the pipe sees exactly what
subscribers see arrive, once per worker however many subscribers are there. The peer's
feedback is answered here: PLI/FIR become the publication's (rate-limited) keyframe
request, NACKs are answered from the source stream's retransmission cache.

**Receiving side** (``RemotePublication``): the relayed publication is an ordinary
``Publication`` fed through its own ``Router`` (binding, ingest, NACK generation, receive
statistics) as if its publisher were local; its keyframe requests and NACKs go up the flow
(``Reporter`` over a ``FlowFeedback`` sender), the publisher's Sender Reports come down and
land where a local publisher's would. With a data plane (``PlainIngress``: the compiled
forwarder's ``DataPlane``) its streams are registered there as a plaintext source, so the
relayed packets fan out to the local subscribers in the forwarder, as a local publisher's
do; the forwarder's records of them are replayed into the same Router's bookkeeping, and
only what the forwarder does not know (a stream not bound yet) takes the Router's path.
``demand()`` folds the local subscriptions' current and target layers into what the flow
asks for.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sfu._fastpath.values import LogRecord, PacketInfo
from sfu.core.binder import Binder
from sfu.core.counters import PeerCounters, RouterStats
from sfu.core.feedback import FeedbackHandler
from sfu.core.publication import Publication, SourceStream
from sfu.core.reporter import Reporter
from sfu.core.router import Router
from sfu.core.subscription import Subscription
from sfu.core.twcc_recorder import TwccRecorder
from sfu.packet.errors import ParseError
from sfu.packet.pipe import CloseReason
from sfu.packet.rtcp import parse_compound
from sfu.packet.rtcp_feedback import Fir, Nack, Pli, seqs_from_nack_pairs
from sfu.transport.pipe import (
    DemandChanged,
    Feedback,
    FlowClosed,
    FlowRequested,
    Media,
    PeerRestarted,
    Pipe,
    PipeEvent,
    RatesReceived,
    StreamsReceived,
)

__all__ = [
    "DEMAND_BITRATE_STEP",
    "DEMAND_POLL_S",
    "RELAY_BUFFER_BYTES",
    "FlowFeedback",
    "PipeOut",
    "PlainIngress",
    "PublicationRelay",
    "RelayHub",
    "RelayTap",
    "RelayTarget",
    "RemotePublication",
    "spatial_demand",
]

#: Demanded bitrates are rounded down to this step (bits/s): the sending side reads it
#: as an order of magnitude, and each change costs a control datagram.
DEMAND_BITRATE_STEP: Final = 50_000
#: How often the receiving side polls its remote publications: NACKs due, and the demand
#: its subscriptions' layers make (a new subscriber waits at most this for its layer).
DEMAND_POLL_S: Final = 0.02
#: A tap's buffer: the largest RTP packet plus the longest flow id (8 bytes).
RELAY_BUFFER_BYTES: Final = 1500 + 8


class PlainIngress(Protocol):
    """The data plane as a remote publication uses it (``sfu.core.dataplane.DataPlane``):
    its streams registered as a plaintext source, its packets forwarded there."""

    def open_source(self, owner: Any, *, level_id: int) -> bool: ...

    def close_source(self, owner: Any) -> None: ...

    def add_stream(self, peer: Any, publication: Publication, stream: SourceStream) -> None: ...

    def remove_stream(self, stream: SourceStream) -> None: ...

    def routes_changed(self, publication: Publication) -> None: ...

    def ingest(self, owner: Any, packet: bytes, now: float) -> bool: ...

    def route_flow(self, key: Any, flow: int, owner: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where the data plane may send a pipe's relayed packets itself (a relay output): the
    carrier's socket and the peer's address, the sealer of the node link's media lane, and
    the largest pipe datagram the carrier takes."""

    sealer: Any
    #: None: the forwarder keeps the datagrams (``drain_relay_sent``; tests and tools).
    sock: socket.socket | None
    address: tuple[Any, ...]
    max_datagram: int


class PipeOut:
    """The Sender of every tap toward one peer: datagrams come framed by the Pipe, this
    only hands them to the adapter's socket. ``target`` names where the data plane may send
    the taps' packets itself (None: only through this Sender)."""

    __slots__ = ("_send", "target")

    has_srtp: Final = True
    #: Marks a fan-out entry that is no transport (the data plane keeps such a publication
    #: on the Python path, which calls the tap).
    relay: Final = True

    def __init__(
        self,
        send: Callable[[bytes], None],
        target: Callable[[], RelayTarget | None] | None = None,
    ) -> None:
        self._send = send
        self.target = target

    def send_rtp(self, packet: bytes) -> bool:
        """Send one framed datagram (a relayed RTP packet)."""
        self._send(packet)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        """Send one framed datagram (a relayed RTCP compound)."""
        self._send(packet)
        return True


class RelayTap:
    """A fan-out entry of a publication that relays its packets on one flow of one pipe."""

    __slots__ = (
        "_carrier",
        "_folded",
        "announced",
        "buf",
        "demanded",
        "flow",
        "held",
        "mid",
        "out",
        "output",
        "peer",
        "pipe",
        "publication",
        "subscriber_id",
    )

    def __init__(
        self, publication: Publication, pipe: Pipe, flow: int, peer: int, out: PipeOut
    ) -> None:
        self.publication = publication
        self.pipe = pipe
        self.flow = flow
        self.peer = peer
        self.out = out
        #: The SSRCs the peer was told the layers of (STREAMS).
        self.announced: frozenset[int] = frozenset()
        #: The spatial layers the peer demanded last (keyframes go to newly demanded ones).
        self.demanded = 0
        #: Not a participant: no room listing names it (the worker is a bounded number).
        self.subscriber_id = f"pipe:{peer}"
        self.mid = publication.mid
        self.buf = bytearray(RELAY_BUFFER_BYTES)
        self.held = False
        #: The data plane's relay output of this tap (a kernel ``RelayOutput``), once made;
        #: its counts up to the last :meth:`fold`: packets, RTP bytes, filtered.
        self.output: Any = None
        self._folded = (0, 0, 0)
        #: Datagrams and RTP bytes folded since the carrier last took them (take_folded).
        self._carrier = (0, 0)

    def forward(
        self,
        stream: SourceStream,
        packet: bytes,
        ext_seq: int,
        timestamp: int,
        info: PacketInfo,
        now: float,
        abs_send_time: int,
    ) -> int:
        """Frame ``packet`` for the flow into :attr:`buf` when its layer is demanded."""
        return self.relay(stream, packet)

    def relay(self, stream: SourceStream, packet: bytes) -> int:
        """:meth:`forward` without the routing details a tap does not use: what the data
        plane calls for the packets the compiled forwarder logged (``DataPlane.relay``)."""
        if self.held:
            return 0
        if stream.ssrc not in self.announced:
            self.announce()
        datagram = self.pipe.relay(self.flow, packet, stream.layer)
        if datagram is None:
            return 0
        n = len(datagram)
        if n > len(self.buf):
            self.buf = bytearray(n)
        self.buf[:n] = datagram
        return n

    def announce(self) -> None:
        """Tell the peer which SSRC carries which layer (before the first packet of each)."""
        streams = tuple((s.ssrc, s.layer) for s in self.publication.streams.values())
        self.announced = frozenset(ssrc for ssrc, _ in streams)
        datagram = self.pipe.announce_streams(self.flow, streams)
        if datagram is not None:
            self.out.send_rtcp(datagram)

    def skip(self, stream: SourceStream, ext_seq: int) -> None:
        """Padding is not relayed: the far side's gap is answered from the cache if asked."""

    def set_held(self, held: bool) -> None:
        """Stop (or resume) relaying. What the output filtered while held is not counted as
        filtered (a held tap relays nothing, whatever the peer demands)."""
        self.fold(filtered=not self.held)
        self.held = held
        self.sync_demand()

    def make_output(self, output_class: Callable[..., Any]) -> Any:
        """This tap's relay output for the data plane (made once, kept: its counts go on),
        or None when the carrier has no target or the flow is gone. The peer is told the
        publication's streams first: the data plane sends without asking the tap."""
        if self.output is None:
            target = self.out.target() if self.out.target is not None else None
            prefix = self.pipe.flow_prefix(self.flow)
            if target is None or prefix is None:
                return None
            self.output = output_class(
                target.sealer,
                target.sock,
                target.address,
                prefix,
                max_datagram=target.max_datagram,
            )
        if frozenset(self.publication.streams) != self.announced:
            self.announce()
        self.sync_demand()
        return self.output

    def sync_demand(self) -> None:
        """Give the relay output the layers the peer demands now (none while held)."""
        if self.output is None:
            return
        demand = self.pipe.demand(self.flow)
        self.output.spatial_mask = 0 if self.held or demand is None else demand[0]

    def fold(self, *, filtered: bool = True) -> None:
        """Add what the relay output sent since the last call to the pipe's counters, as if
        the tap had relayed it (and, with ``filtered``, what it filtered); the carrier's
        share waits for :meth:`take_folded`."""
        output = self.output
        if output is None:
            return
        now = (output.packets, output.bytes, output.filtered)
        packets, octets, skipped = (a - b for a, b in zip(now, self._folded, strict=True))
        self._folded = now
        counters = self.pipe.counters
        counters.relayed += packets
        counters.relayed_bytes += octets + packets * len(output.prefix)
        if filtered:
            counters.filtered += skipped
        self._carrier = (self._carrier[0] + packets, self._carrier[1] + octets)

    def take_folded(self) -> tuple[int, int]:
        """(datagrams, RTP bytes) folded since the last call: the carrier's counters."""
        out, self._carrier = self._carrier, (0, 0)
        return out


class PublicationRelay:
    """The publishing side of one worker's pipes: flows to taps, feedback to answers.

    ``find`` names the local publication of a track id (None: not here); ``out`` gives the
    Sender toward a peer.
    """

    def __init__(
        self,
        find: Callable[[str], Publication | None],
        out: Callable[[int], PipeOut],
        folded: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self._find = find
        self._out = out
        #: Told (peer, datagrams, RTP bytes) the data plane's relay outputs sent, at each
        #: :meth:`fold`: the carrier's counters.
        self._folded = folded
        #: (peer, flow) -> its tap.
        self.taps: dict[tuple[int, int], RelayTap] = {}
        #: NACKed packets resent, and those no longer in the cache.
        self.retransmitted = 0
        self.retransmit_misses = 0
        self.keyframe_requests = 0

    def on_event(self, peer: int, pipe: Pipe, event: PipeEvent, *, now: float) -> bool:
        """Handle one event of the sending side; False when it is not one."""
        if isinstance(event, FlowRequested):
            self._open(peer, pipe, event, now)
        elif isinstance(event, DemandChanged):
            tap = self.taps.get((peer, event.flow))
            if tap is not None:
                tap.sync_demand()
                self._request_keyframes(tap, event.spatial_mask, now)
        elif isinstance(event, Feedback):
            tap = self.taps.get((peer, event.flow))
            if tap is not None:
                self._feedback(tap, event.rtcp, now)
        elif isinstance(event, FlowClosed) and not event.inbound:
            self._drop(peer, event.flow)
        elif isinstance(event, PeerRestarted):
            self.drop_peer(peer)
        else:
            return False
        return True

    def drop_peer(self, peer: int) -> None:
        """Every flow to ``peer`` ended (it restarted, or is gone): remove their taps."""
        for key in [k for k in self.taps if k[0] == peer]:
            self._drop(*key)

    def publication_ended(self, publication: Publication, *, now: float) -> None:
        """The publisher stopped: end every flow of ``publication`` (the peers hear it)."""
        for key, tap in list(self.taps.items()):
            if tap.publication is publication:
                tap.pipe.close_flow(tap.flow, reason=CloseReason.ENDED, now=now)
                self._drop(*key)

    def _open(self, peer: int, pipe: Pipe, event: FlowRequested, now: float) -> None:
        publication = self._find(event.track_id)
        if publication is None:
            pipe.close_flow(event.flow, reason=CloseReason.UNKNOWN_TRACK, now=now)
            return
        out = self._out(peer)
        tap = RelayTap(publication, pipe, event.flow, peer, out)
        self.taps[peer, event.flow] = tap
        tap.announce()
        publication.add_subscriber(tap, out)  # type: ignore[arg-type]
        self._request_keyframes(tap, event.spatial_mask, now)

    def _request_keyframes(self, tap: RelayTap, mask: int, now: float) -> None:
        """A layer the peer starts to receive starts at a keyframe (rate-limited per stream,
        as every subscriber's request is). Only a newly demanded layer: a demand that
        changes only its bitrate, or keeps a layer, asks for nothing (a keyframe per demand
        update was a steady stream of them, about two a second, in the spread bench)."""
        fresh = mask & ~tap.demanded
        tap.demanded = mask
        for stream in tap.publication.streams.values():
            if (
                (fresh >> stream.layer) & 1
                and stream.video
                and tap.publication.request_keyframe(stream, now)
            ):
                self.keyframe_requests += 1

    def fold(self) -> None:
        """Count what the data plane's relay outputs sent since the last call (their taps'
        pipes, and the carriers through ``folded``)."""
        for (peer, _), tap in self.taps.items():
            self._fold_tap(peer, tap)

    def _fold_tap(self, peer: int, tap: RelayTap) -> None:
        tap.fold(filtered=not tap.held)
        packets, octets = tap.take_folded()
        if packets and self._folded is not None:
            self._folded(peer, packets, octets)

    def _drop(self, peer: int, flow: int) -> None:
        tap = self.taps.pop((peer, flow), None)
        if tap is not None:
            tap.publication.remove_subscriber(tap)
            self._fold_tap(peer, tap)

    def _feedback(self, tap: RelayTap, rtcp: bytes, now: float) -> None:
        try:
            packets = parse_compound(rtcp)
        except ParseError:
            tap.pipe.counters.drops["malformed"] += 1
            return
        streams = {s.ssrc: s for s in tap.publication.streams.values()}
        for packet in packets:
            if isinstance(packet, Pli):
                stream = streams.get(packet.media_ssrc)
                if stream is not None and tap.publication.request_keyframe(stream, now):
                    self.keyframe_requests += 1
            elif isinstance(packet, Fir):
                for entry in packet.entries:
                    stream = streams.get(entry.ssrc)
                    if stream is not None and tap.publication.request_keyframe(stream, now):
                        self.keyframe_requests += 1
            elif isinstance(packet, Nack):
                stream = streams.get(packet.media_ssrc)
                if stream is not None:
                    self._retransmit(tap, stream, seqs_from_nack_pairs(packet.pairs), now)

    def _retransmit(self, tap: RelayTap, stream: SourceStream, seqs: list[int], now: float) -> None:
        """Resend what the cache still holds, as the original packets (the pipe does not
        lose packets the way a client's path does, so RTX framing buys nothing here)."""
        for seq in seqs:
            packet = stream.cache.get(stream.unwrapper.peek(seq), now)
            if packet is None:
                self.retransmit_misses += 1
                continue
            datagram = tap.pipe.relay(tap.flow, bytes(packet), stream.layer)
            if datagram is not None:
                self._send_to(tap, datagram)
                self.retransmitted += 1

    def _send_to(self, tap: RelayTap, datagram: bytes) -> None:
        tap.out.send_rtp(datagram)


class FlowFeedback:
    """The Sender of a remote publication's feedback: RTCP up its flow."""

    __slots__ = ("_flow", "_pipe", "_send")

    has_srtp: Final = True

    def __init__(self, pipe: Pipe, flow: int, send: Callable[[bytes], object]) -> None:
        self._pipe, self._flow, self._send = pipe, flow, send

    def send_rtp(self, packet: bytes) -> bool:
        """A receiving side never sends media upstream."""
        return False

    def send_rtcp(self, packet: bytes) -> bool:
        """Send one RTCP compound (PLI, NACK, RR) up the flow."""
        datagram = self._pipe.send_feedback(self._flow, packet)
        if datagram is None:
            return False
        self._send(datagram)
        return True


def spatial_demand(publication: Publication) -> int:
    """The spatial-layer mask the local subscriptions of a remote publication need.

    Each subscription contributes the layer it forwards, the one the allocator asked for
    (a switch needs both until it happens) and the layer above what it forwards, within its
    own cap: the allocator here only upgrades to a layer it sees arrive (its rate and
    liveness are measured on what comes in), so the next one up keeps arriving. An SVC or
    single-layer publication is one stream: bit 0 whenever anyone wants it.
    """
    mask = 0
    top = max(1, publication.num_layers) - 1
    for subscription, _ in publication.fanout:
        if not isinstance(subscription, Subscription) or subscription.paused:
            continue
        selector = subscription.selector
        if selector is None or publication.svc or top == 0:
            return 1
        cap = top if subscription.max_spatial is None else min(top, subscription.max_spatial)
        current = selector.current.spatial
        wanted = [current, selector.requested.spatial, selector.target.spatial]
        wanted.append(0 if current is None else current + 1)
        for spatial in wanted:
            if spatial is not None:
                mask |= 1 << min(spatial, cap)
    return mask


class RemotePublication:
    """The receiving side of one flow: a local Publication fed by the pipe.

    ``extensions`` is the publisher's header-extension map (the relayed packets carry its
    ids); ``declared`` its source streams' (ssrc, rtx ssrc) by layer.
    """

    def __init__(
        self,
        publication: Publication,
        pipe: Pipe,
        flow: int,
        send: Callable[[bytes], object],
        *,
        rtcp_ssrc: int,
        extensions: dict[int, str],
        declared: list[tuple[int, int | None]],
        stats: RouterStats | None = None,
        plane: PlainIngress | None = None,
    ) -> None:
        self.publication = publication
        self.pipe = pipe
        self.flow = flow
        self.counters = PeerCounters()
        self.plane = plane
        if plane is None:
            self.binder = Binder()
        else:
            self.binder = Binder(on_added=self._stream_added, on_removed=plane.remove_stream)
        self.sender = FlowFeedback(pipe, flow, send)
        twcc = TwccRecorder(rtcp_ssrc)
        self.router = Router(
            publication.participant_id, self.binder, twcc, self.counters, stats=stats
        )
        self.reporter = Reporter(rtcp_ssrc, self.sender, twcc, self.counters)
        self.feedback = FeedbackHandler(self.sender, self.binder, self.counters)
        ids = {uri: i for i, uri in extensions.items()}
        self.binder.set_extension_ids(
            mid=ids.get("urn:ietf:params:rtp-hdrext:sdes:mid", 0),
            rid=ids.get("urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", 0),
            repaired_rid=ids.get("urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id", 0),
        )
        self.router.level_id = ids.get("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 0)
        if plane is not None and not plane.open_source(self, level_id=self.router.level_id):
            self.plane = plane = None  # the data plane's tables are full: the Router's path
        if plane is not None:
            publication.on_fanout = plane.routes_changed
            # A node link's relay input (keyed by its pipe) forwards this flow's RTP in the
            # data plane straight from the socket; undone when the source is closed.
            plane.route_flow(pipe, flow, self)
        self.binder.add_publication(publication, declared)
        publication.keyframe_requester = self.request_keyframe

    @property
    def transport(self) -> object:
        """The token of this flow's source in the data plane (this object)."""
        return self

    def _stream_added(self, publication: Publication, stream: SourceStream) -> None:
        if self.plane is not None:
            self.plane.add_stream(self, publication, stream)

    def replay_records(
        self,
        records: Sequence[LogRecord],
        streams: Mapping[int, tuple[Any, Publication, SourceStream]],
    ) -> None:
        """The data plane forwarded these packets of this flow: their receive bookkeeping
        (receive statistics, NACK state, meters, keyframes, audio levels)."""
        self.router.replay_records(records, streams)

    def close(self) -> None:
        """The flow ended: the data plane forgets its source and streams."""
        if self.plane is not None:
            if self.publication.on_fanout == self.plane.routes_changed:
                self.publication.on_fanout = None
            self.plane.close_source(self)
            self.plane = None

    def on_streams(self, event: StreamsReceived) -> None:
        """The publishing side named the SSRC of each layer: bind them."""
        for ssrc, layer in event.streams:
            if layer < max(1, self.publication.num_layers):
                self.binder.declare(self.publication, layer, ssrc)

    def on_media(self, event: Media, *, now: float) -> None:
        """A relayed RTP packet or downstream RTCP (Sender Reports) of this flow."""
        packet = event.data[event.offset :]
        if event.rtcp:
            self.feedback.on_rtcp(packet, now=now)
        elif self.plane is None or not self.plane.ingest(self, packet, now):
            self.router.on_rtp(packet, now=now)

    def request_keyframe(self, stream: SourceStream, now: float) -> bool:
        """A local subscriber needs a keyframe: a PLI up the flow (rate-limited per stream)."""
        return self.reporter.request_keyframe(stream, now=now)

    def next_timer(self) -> float | None:
        """When :meth:`poll` next has NACKs to send."""
        return self.reporter.next_feedback((self.publication,))

    def poll(self, *, now: float) -> None:
        """Send the NACKs due (and keyframe requests for hopeless gaps)."""
        self.reporter.poll_feedback((self.publication,), (), now=now)

    def update_demand(self, *, now: float) -> None:
        """Tell the publishing side what the local subscriptions need now."""
        mask = spatial_demand(self.publication)
        bitrate = sum(
            int(self.publication.layer_bps(layer, now))
            for layer in range(max(1, self.publication.num_layers))
            if (mask >> layer) & 1
        )
        # Rounded, so a meter's jitter does not make a new DEMAND every time.
        bitrate -= bitrate % DEMAND_BITRATE_STEP
        self.pipe.set_demand(self.flow, spatial_mask=mask, bitrate=bitrate, now=now)


class RelayHub:
    """One forwarding place's relays over its pipes (one per peer place): the publishing
    side (``PublicationRelay``) and the remote publications it receives. Sans-I/O: the
    owner hands it events and ``now``, and sends what the pipes queue (``flush``).

    It is the ``RemoteTracks`` of :mod:`sfu.room.shards`: ``open`` asks the peer for a
    publication, ``close`` ends that.
    """

    def __init__(
        self,
        pipes: dict[int, Pipe],
        find: Callable[[str], Publication | None],
        send: Callable[[int, bytes], None],
        flush: Callable[[int], None],
        clock: Callable[[], float],
        target: Callable[[int], RelayTarget | None] | None = None,
        folded: Callable[[int, int, int], None] | None = None,
    ) -> None:
        self.pipes = pipes
        self._send = send
        self._flush = flush
        self._clock = clock
        self._target = target
        self._outs: dict[int, PipeOut] = {}
        self.relay = PublicationRelay(find, self._out, folded)
        #: (peer, flow) -> the remote publication a flow we receive feeds.
        self.remotes: dict[tuple[int, int], RemotePublication] = {}
        #: The room service's forwarding statistics: the relayed publications' routers
        #: sample their forwarding latency there too (from the pipe's receive).
        self.stats: RouterStats | None = None
        #: The data plane the remote publications' media is forwarded in (None: each one's
        #: Router, on the Python path).
        self.plane: PlainIngress | None = None
        self._by_publication: dict[int, tuple[int, RemotePublication]] = {}

    def _out(self, peer: int) -> PipeOut:
        out = self._outs.get(peer)
        if out is None:
            send = self._send

            def to_peer(datagram: bytes) -> None:
                send(peer, datagram)

            where = self._target
            target = None if where is None else lambda: where(peer)
            out = self._outs[peer] = PipeOut(to_peer, target)
        return out

    def open(
        self,
        origin: int,
        publication: Publication,
        on_audio_level: Callable[[str, int, bool | None, float], None] | None = None,
    ) -> bool:
        """Ask ``origin`` for ``publication`` (nothing flows until local subscriptions
        demand a layer); False when there is no pipe to it or its flows are exhausted."""
        pipe = self.pipes.get(origin)
        if pipe is None:
            return False
        flow = pipe.open_flow(publication.id, spatial_mask=0, bitrate=0, now=self._clock())
        if flow is None:
            return False
        previous = self._by_publication.pop(id(publication), None)
        if previous is not None:  # asked again (a new pipe): the old flow's source goes
            self.remotes.pop((previous[0], previous[1].flow), None)
            previous[1].close()
        remote = RemotePublication(
            publication,
            pipe,
            flow,
            self._out(origin).send_rtcp,
            rtcp_ssrc=secrets.randbits(32) or 1,
            extensions=publication.extensions,
            declared=[],
            stats=self.stats,
            plane=self.plane,
        )
        remote.router.on_audio_level = on_audio_level
        self.remotes[origin, flow] = remote
        self._by_publication[id(publication)] = (origin, remote)
        self._flush(origin)
        return True

    def close(self, publication: Publication) -> None:
        """Stop receiving ``publication`` (the peer hears it)."""
        entry = self._by_publication.pop(id(publication), None)
        if entry is None:
            return
        origin, remote = entry
        self.remotes.pop((origin, remote.flow), None)
        remote.close()
        publication.keyframe_requester = None
        remote.pipe.close_flow(remote.flow, reason=CloseReason.UNSUBSCRIBED, now=self._clock())
        self._flush(origin)

    def ended(self, publication: Publication) -> None:
        """A local ``publication`` ended: its flows to every peer close now (the peers hear
        it), rather than when a bus event that may be lost tells them to let go."""
        peers = {
            peer for (peer, _), tap in self.relay.taps.items() if tap.publication is publication
        }
        if not peers:
            return
        self.relay.publication_ended(publication, now=self._clock())
        for peer in peers:
            self._flush(peer)

    def drop_peer(self, peer: int) -> None:
        """The pipe to ``peer`` is replaced or gone: what it relayed either way ends."""
        self.relay.drop_peer(peer)
        for key in [k for k in self.remotes if k[0] == peer]:
            remote = self.remotes.pop(key)
            self._forget(remote)

    def on_event(self, peer: int, event: PipeEvent, *, now: float) -> None:
        """One event of the pipe to ``peer``."""
        pipe = self.pipes.get(peer)
        if pipe is None:
            return
        if isinstance(event, Media):
            remote = self.remotes.get((peer, event.flow))
            if remote is not None:
                remote.on_media(event, now=now)
        elif isinstance(event, StreamsReceived):
            remote = self.remotes.get((peer, event.flow))
            if remote is not None:
                remote.on_streams(event)
        elif isinstance(event, FlowClosed) and event.inbound:
            remote = self.remotes.pop((peer, event.flow), None)
            if remote is not None:
                self._forget(remote)
        elif not isinstance(event, RatesReceived):
            self.relay.on_event(peer, pipe, event, now=now)

    def _forget(self, remote: RemotePublication) -> None:
        """``remote``'s flow ended: it is no longer the publication's feed."""
        entry = self._by_publication.get(id(remote.publication))
        if entry is not None and entry[1] is remote:
            del self._by_publication[id(remote.publication)]
        remote.close()

    def next_timer(self) -> float | None:
        """When :meth:`poll` is next due (None: no remote publication)."""
        return self._clock() + DEMAND_POLL_S if self.remotes else None

    def poll(self, *, now: float) -> None:
        """The remote publications' due NACKs and their subscriptions' current demand."""
        for (peer, _), remote in list(self.remotes.items()):
            due = remote.next_timer()
            if due is not None and due <= now:
                remote.poll(now=now)
            remote.update_demand(now=now)
            self._flush(peer)
