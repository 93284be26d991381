"""The data plane's forwarder, pure-Python reference of ``_forward.pyx`` (same contract).

The control plane registers, whenever they change and never per packet:

* transports (a handle, the remote address media comes from and goes to, the SRTP session,
  and the ingress header-extension ids for transport-wide CC and audio level),
* ingress streams (a handle, the transport, the source stream object with its SSRC, layer,
  sequence unwrapper and retransmission cache, and its kind: audio or VP8 video),
* each stream's routes: a snapshot of (subscription, outgoing transport handle).

Per datagram, :meth:`Forwarder.process` forwards SRTP media of registered streams: unprotect,
unwrap the sequence number, write the retransmission cache, describe the payload (VP8
descriptor), then for every route decide and rewrite (``Subscription.forward``: layer
selector, munger, VP8 munger, extension ids, NACK history, sender counters), protect and emit.
Everything else (STUN, DTLS, RTCP, RTP of unregistered SSRCs such as RTX repairs or streams
not bound yet, SRTP failures, other codecs) is returned untouched as the slow path, for the
Python control plane. What the control plane's receive bookkeeping needs per packet (RTCP
receive statistics, NACK and TWCC feedback, bitrate, keyframes, audio levels, counters) is
appended to a bounded ingress log that it drains on its timer tick (:meth:`drain_log`).

The receiving side of a relay between nodes is here too (:meth:`Forwarder.pump_link`): the
node link socket is read in batches; a sealed lane datagram from a registered *relay input*
(a peer node's link address and its lane's opener) is opened, its flow id decoded, and RTP
of a flow routed to a plaintext source, of one of that source's streams, is ingested at once
as :meth:`Forwarder.ingest` would. What opened but is not forwarded (RTCP, control, unknown
flows or SSRCs) is kept for Python (:meth:`Forwarder.drain_relay_in`): the opener's replay
window has taken it, so it must not be read twice. The rest (QUIC, other addresses) is
returned untouched, as the slow path.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from sfu._fastpath._lane_py import LaneOpener, RelayOutput
from sfu._fastpath._lane_shared import (
    MAX_INPUT_FLOWS,
    MAX_RELAY_INPUTS,
    MAX_RELAY_OUTPUTS,
    QUIC_FIXED_BIT,
    RELAY_IN_SLOTS,
)
from sfu._fastpath._pacer_py import AUDIO as PACED_AUDIO
from sfu._fastpath._pacer_py import VIDEO as PACED_VIDEO
from sfu._fastpath._srtp_shared import SrtpError
from sfu._fastpath.ingest import ingest
from sfu._fastpath.values import (
    AUDIO,
    F_HEADER_BAD,
    F_MALFORMED_EXT,
    F_MALFORMED_PAYLOAD,
    F_PADDING,
    FRAMED_MARK,
    VP8,
    LogRecord,
)

__all__ = ["Forwarder"]

Address = tuple[Any, ...]
Datagram = tuple[bytes, Address]

#: Most datagrams one :meth:`Forwarder.pump` reads before returning to the event loop.
PUMP_BATCH: Final = 64
#: Relayed packets held between two drain_relay() calls (a pump takes at most 512 datagrams).
RELAY_SLOTS: Final = 1024
PUMP_ROUNDS: Final = 8
_MAX_DATAGRAM = 8192
#: Largest plaintext packet :meth:`Forwarder.ingest` takes (the compiled work buffer's size).
_WORK_SIZE: Final = 2048
#: Largest packet the compiled forwarder's egress slots hold (1500, the munger's limit, plus
#: an SRTP trailer): a paced packet beyond it is never sent (counted as a send error).
_OUT_SIZE: Final = 1536
#: Ingress streams one transport may register (the compiled table's size; MAX_STREAMS is 32).
_TX_STREAMS = 64
#: Records of packets that were ingested but not handed to the routes' forward.
_NOT_FORWARDABLE: Final = F_HEADER_BAD | F_MALFORMED_EXT | F_MALFORMED_PAYLOAD | F_PADDING


def _key(address: Address) -> tuple[str, int, bool]:
    """(host, port, framed): a framed (ICE-TCP) peer never equals a UDP one."""
    return (str(address[0]), int(address[1]), len(address) == 3 and address[2] == FRAMED_MARK)


class _Transport:
    __slots__ = (
        "address",
        "drop_every",
        "drop_seen",
        "framed",
        "inbound",
        "key",
        "level_id",
        "outbound",
        "paced_history",
        "pacer",
        "source",
        "streams",
        "twcc_id",
    )

    def __init__(
        self, address: Address | None, srtp: Any, twcc_id: int, level_id: int, framed: bool
    ) -> None:
        self.address: Any = address
        self.framed = framed
        #: A plaintext source (no address, no SRTP): its packets come through ingest().
        self.source = address is None
        self.key = None if address is None else (str(address[0]), int(address[1]), framed)
        self.inbound: Any = None if srtp is None else srtp.inbound
        self.outbound: Any = None if srtp is None else srtp.outbound
        self.twcc_id = twcc_id
        self.level_id = level_id
        self.streams: dict[int, _Stream] = {}
        self.drop_every = 0
        self.drop_seen = 0
        self.pacer: Any = None
        self.paced_history: Any = None


class _Stream:
    __slots__ = ("handle", "kind", "outputs", "packets", "relay", "routes", "source", "transport")

    def __init__(self, handle: int, transport: int, source: Any, kind: int) -> None:
        self.handle = handle
        self.transport = transport
        self.source = source
        self.kind = kind
        self.packets = 0
        self.relay = False
        self.routes: tuple[tuple[Any, int], ...] = ()
        self.outputs: tuple[RelayOutput, ...] = ()


def _host_key(address: Address) -> tuple[bytes, int]:
    """(packed IP, port) of an IP literal address, its IPv6 scope left out (as the media
    lane compares a peer's address); ValueError for anything else."""
    host = str(address[0]).split("%", 1)[0]
    try:
        packed = ipaddress.ip_address(host).packed
    except ValueError:
        raise ValueError("address must be an IP literal") from None
    return packed, int(address[1])


class _Input:
    """A relay input: the peer node whose lane datagrams are opened here, and its flows."""

    __slots__ = ("bytes", "flows", "host", "key", "malformed", "opener", "packets")

    def __init__(self, address: Address, opener: LaneOpener) -> None:
        self.key = _host_key(address)
        #: The host as ``recvfrom`` spells it (a fast first comparison).
        self.host = str(address[0]).split("%", 1)[0]
        self.opener = opener
        #: flow id -> source handle.
        self.flows: dict[int, int] = {}
        #: Flow datagrams forwarded here, their payload bytes, and datagrams that opened
        #: but held no flow id (the link's ``dropped_malformed``).
        self.packets = 0
        self.bytes = 0
        self.malformed = 0


def _decode_varint(data: bytes) -> tuple[int, int]:
    """(value, length) of the QUIC varint that starts ``data`` (RFC 9000 section 16);
    length 0 when it is cut short."""
    if not data:
        return 0, 0
    length = 1 << (data[0] >> 6)
    if length > len(data):
        return 0, 0
    return int.from_bytes(data[:length], "big") & ((1 << (8 * length - 2)) - 1), length


class Forwarder:
    """Forwards registered SRTP media streams; hands everything else back (reference)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] | None = None,
        sample_mask: int = 63,
        log_capacity: int = 65536,
        max_transports: int = 4096,
        max_streams: int = 16384,
    ) -> None:
        if log_capacity <= 0 or max_transports <= 0 or max_streams <= 0:
            raise ValueError("capacities must be positive")
        if sample_mask < 0 or sample_mask & (sample_mask + 1):
            raise ValueError("sample_mask must be one less than a power of two")
        self.max_transports = max_transports
        self.max_streams = max_streams
        self._clock = clock
        self._sample_mask = sample_mask
        self._log_capacity = log_capacity
        self._transports: dict[int, _Transport] = {}
        self._by_addr: dict[tuple[str, int, bool], _Transport] = {}
        self._streams: dict[int, _Stream] = {}
        self._log: list[LogRecord] = []
        self._latency: list[float] = []
        #: Where :meth:`_emit` queues egress during one :meth:`process` call.
        self._egress: list[Datagram] = []
        #: Egress to framed (ICE-TCP) transports, until drain_framed().
        self._framed: list[Datagram] = []
        #: RTP packets forwarded here (never seen by Python code in the compiled build).
        self.fast_packets = 0
        self.fast_bytes = 0
        #: Datagrams handed to the slow path (Python control plane).
        self.slow_packets = 0
        #: Plaintext packets of sources forwarded through ingest() (a relay pipe's far end).
        self.ingested_packets = 0
        self.ingested_bytes = 0
        #: SRTP packets sent, and their bytes on the wire.
        self.sent_packets = 0
        self.sent_bytes = 0
        self.protect_errors = 0
        self.send_errors = 0
        self.log_overflow = 0
        #: Relayed packets dropped because the relay log was full (RELAY_SLOTS).
        self.relay_overflow = 0
        self._relay: list[tuple[int, bytes, int]] = []
        #: Relay datagrams the outputs sealed, sent at the end of the call; those of outputs
        #: without a socket, until drain_relay_sent().
        self._relay_out: list[tuple[RelayOutput, bytes]] = []
        self._relay_collected: list[tuple[RelayOutput, bytes]] = []
        #: Relay datagrams sent (or kept) and those the socket refused.
        self.relay_sent = 0
        self.relay_send_errors = 0
        self.impaired_drops = 0
        self.paced_packets = 0
        #: Transports whose pacer holds packets (got some in this batch, or the backlog),
        #: in the order they were listed; and when the first of the backlog lets go of more.
        self._paced: dict[int, None] = {}
        self.paced_due = math.inf
        self._now = 0.0
        self._kind = VP8
        self._stamp = -1
        self._inputs: dict[int, _Input] = {}
        #: Opened lane datagrams for Python: (input, flow id, payload), until drain_relay_in().
        self._relay_in: list[tuple[int, int, bytes]] = []
        #: Flow datagrams of relay inputs forwarded here (no Python per packet), their
        #: payload bytes, and opened datagrams lost because the drain list was full.
        self.relay_in_packets = 0
        self.relay_in_bytes = 0
        self.relay_in_overflow = 0

    # -- control plane ------------------------------------------------------------------------

    def set_transport(
        self,
        handle: int,
        address: Address,
        srtp: Any,
        twcc_id: int = 0,
        level_id: int = 0,
        framed: bool = False,
    ) -> None:
        """Register (or update) a connected transport: remote address and SRTP session.
        ``framed``: an ICE-TCP peer (address ``(host, port, "tcp")``): its egress is handed
        back by :meth:`drain_framed` instead of being sent on the UDP socket."""
        if not 0 <= handle < self.max_transports:
            raise ValueError(f"transport handle {handle} out of range")
        old = self._transports.get(handle)
        transport = _Transport(address, srtp, twcc_id, level_id, framed)
        if old is not None:
            transport.streams = old.streams
            transport.drop_every, transport.drop_seen = old.drop_every, old.drop_seen
            transport.pacer, transport.paced_history = old.pacer, old.paced_history
            if old.key is not None and self._by_addr.get(old.key) is old:
                del self._by_addr[old.key]
        self._transports[handle] = transport
        assert transport.key is not None
        self._by_addr[transport.key] = transport

    def set_source(self, handle: int, level_id: int = 0) -> None:
        """Register (or update) a plaintext source: a transport slot whose streams' packets
        arrive already decrypted, through :meth:`ingest` (a relay pipe's far end), never from
        the socket; ``level_id`` is the audio-level extension id its packets carry. It is
        never a destination: no route sends to it."""
        if not 0 <= handle < self.max_transports:
            raise ValueError(f"transport handle {handle} out of range")
        old = self._transports.get(handle)
        if old is not None and not old.source:
            raise ValueError(f"transport {handle} is registered as a transport")
        source = _Transport(None, None, 0, level_id, False)
        if old is not None:
            source.streams = old.streams
        self._transports[handle] = source

    def set_impairment(self, handle: int, drop_every: int) -> None:
        """Drop every ``drop_every``-th packet forwarded to a transport, counted as sent
        (0: none): deterministic loss for tests and drills, never on by default."""
        if drop_every < 0:
            raise ValueError("drop_every must not be negative")
        transport = self._transports.get(handle)
        if transport is None:
            raise KeyError(f"transport {handle} is not registered")
        transport.drop_every = drop_every
        transport.drop_seen = 0

    def set_pacer(self, handle: int, pacer: Any, history: Any = None) -> None:
        """Queue a transport's egress in ``pacer`` (``_pacer_py.Pacer``; None: send at once)
        instead of sending it; ``history`` is the transport's send history, whose sequence
        number each packet was stamped with becomes its tag. What the pacer lets go leaves
        with each batch; the rest on the owner's timer (:meth:`release_backlog`,
        :meth:`send_paced`)."""
        transport = self._transports.get(handle)
        if transport is None:
            raise KeyError(f"transport {handle} is not registered")
        if transport.source:
            raise ValueError(f"transport {handle} is a source: nothing is sent to it")
        transport.pacer = pacer
        transport.paced_history = history if pacer is not None else None

    def paced_backlog(self) -> list[int]:
        """The handles of the transports whose pacer holds packets after the last release
        (what :meth:`release_backlog` serves; :attr:`paced_due` says when)."""
        return sorted(self._paced)

    def release_backlog(self, now: float, sock: socket.socket | None = None) -> list[Datagram]:
        """Release what the backlogged pacers let go at ``now``: sent on ``sock`` and counted
        as sent; returns the egress datagrams when there is no socket (empty otherwise).
        Framed transports' packets wait in :meth:`drain_framed`."""
        egress: list[Datagram] = []
        if self._paced:
            self._release_due(now, egress)
        if sock is not None:
            self._send_all(sock, egress)
            return []
        return egress

    def send_paced(self, handle: int, now: float, sock: socket.socket | None = None) -> list[bytes]:
        """Release what transport ``handle``'s pacer lets go at ``now``: sent on ``sock``
        and counted as sent; without a socket, or to a framed (ICE-TCP) transport, returned
        instead (SRTP packets, oldest first) for the caller to send. An unknown or unpaced
        transport releases nothing."""
        target = self._transports.get(handle)
        if target is None or target.source or target.pacer is None:
            return []
        pacer = target.pacer
        released = [wire for wire, _ in pacer.pop(now, target.paced_history)]
        if pacer.queued_packets:
            self._paced[handle] = None  # the backlog
            self.paced_due = min(self.paced_due, pacer.next_deadline(now))
        if sock is None or target.framed:
            return released
        egress = [(wire, target.address) for wire in released if len(wire) <= _OUT_SIZE]
        self.send_errors += len(released) - len(egress)
        self.sent_packets += len(egress)
        self.sent_bytes += sum(len(wire) for wire, _ in egress)
        self._send_all(sock, egress)
        return []

    def _release_due(self, now: float, egress: list[Datagram]) -> None:
        """What the listed pacers (those that got packets, and the backlog) let go at
        ``now`` joins ``egress``; only the transports whose pacer still holds packets stay
        listed, and :attr:`paced_due` says when the first of them lets go of more."""
        kept: dict[int, None] = {}
        first = math.inf
        for handle in self._paced:
            target = self._transports.get(handle)
            if target is None or target.pacer is None:
                continue
            for wire, _ in target.pacer.pop(now, target.paced_history):
                if len(wire) > _OUT_SIZE:  # only a Python push could be this large
                    self.send_errors += 1
                    continue
                (self._framed if target.framed else egress).append((wire, target.address))
                self.sent_packets += 1
                self.sent_bytes += len(wire)
            if target.pacer.queued_packets:
                kept[handle] = None
                first = min(first, target.pacer.next_deadline(now))
        self._paced = kept
        self.paced_due = first

    def remove_transport(self, handle: int) -> None:
        """Forget a transport (its streams stay registered until removed, and stay idle)."""
        transport = self._transports.pop(handle, None)
        if (
            transport is not None
            and transport.key is not None
            and self._by_addr.get(transport.key) is transport
        ):
            del self._by_addr[transport.key]

    def set_stream(self, handle: int, transport: int, source: Any, kind: int) -> None:
        """Register an ingress stream (``source``: ssrc, layer, unwrapper, cache)."""
        if not 0 <= handle < self.max_streams:
            raise ValueError(f"stream handle {handle} out of range")
        if kind not in (AUDIO, VP8):
            raise ValueError(f"unknown stream kind {kind}")
        self.remove_stream(handle)
        owner = self._transports.get(transport)
        if owner is None:
            raise KeyError(f"transport {transport} is not registered")
        if len(owner.streams) >= _TX_STREAMS:
            raise ValueError("too many streams on one transport")
        stream = _Stream(handle, transport, source, kind)
        self._streams[handle] = stream
        owner.streams[source.ssrc] = stream

    def remove_stream(self, handle: int) -> None:
        """Forget an ingress stream (its packets go to the slow path from now on)."""
        stream = self._streams.pop(handle, None)
        if stream is None:
            return
        if self._relay_out:
            self._relay_flush()  # a batch cut short: send what its outputs sealed
        owner = self._transports.get(stream.transport)
        if owner is not None and owner.streams.get(stream.source.ssrc) is stream:
            del owner.streams[stream.source.ssrc]

    def set_routes(self, handle: int, routes: Sequence[tuple[Any, int]]) -> None:
        """Replace the fan-out snapshot of stream ``handle``: (subscription, transport)."""
        stream = self._streams.get(handle)
        if stream is None:
            raise KeyError(f"stream {handle} is not registered")
        stream.routes = tuple(routes)

    def set_relay(self, handle: int, relay: bool) -> None:
        """Copy the forwardable packets of stream ``handle`` to the relay log (a pipe relays
        its publication; :meth:`drain_relay` hands them to the taps) or stop."""
        stream = self._streams.get(handle)
        if stream is None:
            raise KeyError(f"stream {handle} is not registered")
        stream.relay = relay

    def set_relay_outputs(self, handle: int, outputs: Sequence[Any]) -> None:
        """Relay the packets of stream ``handle`` through ``outputs`` (``RelayOutput``s of
        the reference kernels, at most 32) here, sealed and sent with the batch; a packet an
        output cannot take goes to the relay log for the Python taps (see drain_relay)."""
        stream = self._streams.get(handle)
        if stream is None:
            raise KeyError(f"stream {handle} is not registered")
        if self._relay_out:
            self._relay_flush()  # a batch cut short: send what its outputs sealed
        entries = tuple(outputs)
        if len(entries) > MAX_RELAY_OUTPUTS:
            raise ValueError(f"a stream has at most {MAX_RELAY_OUTPUTS} relay outputs")
        if not all(isinstance(output, RelayOutput) for output in entries):
            raise TypeError(
                "relay outputs must come from the reference kernels, as the forwarder does"
            )
        stream.outputs = entries

    def drain_relay(self) -> list[tuple[int, bytes, int]]:
        """Take the relayed streams' packets logged since the last call: (stream handle,
        the packet as received, decrypted, the outputs that took it: bit k for output k),
        oldest first."""
        out, self._relay = self._relay, []
        return out

    def drain_relay_sent(self) -> list[tuple[Any, bytes]]:
        """Take the relay datagrams sealed for outputs without a socket since the last call:
        (output, datagram), oldest first (tests and tools; a node link's outputs send)."""
        out, self._relay_collected = self._relay_collected, []
        return out

    def _relay_flush(self) -> None:
        """Send the sealed relay datagrams, each on its output's socket."""
        queued, self._relay_out = self._relay_out, []
        for output, datagram in queued:
            if output.sock is None:
                self._relay_collected.append((output, datagram))
                self.relay_sent += 1
                continue
            try:
                output.sock.sendto(datagram, output.address)
            except OSError:
                self.relay_send_errors += 1
            else:
                self.relay_sent += 1

    def _relay_packet(self, stream: _Stream, plain: bytes) -> None:
        """A relayed stream's packet: through its outputs, then (when some tap is not an
        output, or an output refused it) into the relay log for the Python taps."""
        done = 0
        pending = False
        layer = stream.source.layer
        for k, output in enumerate(stream.outputs):
            if not 0 <= layer <= 63:
                output.filtered += 1
                done |= 1 << k
                continue
            datagram = output.take(plain, layer)
            if datagram is None:
                pending = True
                continue
            done |= 1 << k
            if datagram:
                self._relay_out.append((output, datagram))
        if not (stream.relay or pending):
            return
        if len(self._relay) < RELAY_SLOTS:
            self._relay.append((stream.handle, plain, done))
        else:
            self.relay_overflow += 1

    def set_relay_input(self, index: int, address: Address, opener: Any) -> None:
        """Open the lane datagrams that come from ``address`` (a peer node's link address)
        with ``opener`` (the link's media lane's own ``LaneOpener`` of the reference
        kernels: one replay window and one count for the lane and the forwarder) as relay
        input ``index`` (0..MAX_RELAY_INPUTS-1); its flow table starts empty."""
        if not 0 <= index < MAX_RELAY_INPUTS:
            raise ValueError(f"relay input {index} out of range")
        if not isinstance(opener, LaneOpener):
            raise TypeError("the opener must come from the reference kernels, as the forwarder")
        entry = _Input(address, opener)
        for other, known in self._inputs.items():
            if other != index and known.key == entry.key:
                raise ValueError("another relay input has that address")
        self._inputs[index] = entry

    def remove_relay_input(self, index: int) -> None:
        """Forget relay input ``index``: its datagrams take the slow path from now on."""
        self._inputs.pop(index, None)

    def set_relay_flows(self, index: int, flows: Mapping[int, int]) -> None:
        """Replace relay input ``index``'s flow table: flow id -> plaintext source handle
        (:meth:`set_source`) whose streams' RTP on that flow is forwarded here."""
        entry = self._inputs.get(index)
        if entry is None:
            raise KeyError(f"relay input {index} is not registered")
        if len(flows) > MAX_INPUT_FLOWS:
            raise ValueError(f"a relay input routes at most {MAX_INPUT_FLOWS} flows")
        table: dict[int, int] = {}
        for flow, source in flows.items():
            if not 0 < flow < 1 << 62 or not 0 <= source < self.max_transports:
                raise ValueError(f"flow {flow} -> {source} out of range")
            table[int(flow)] = int(source)
        entry.flows = table

    def relay_input_counts(self, index: int) -> tuple[int, int, int]:
        """(flow datagrams forwarded, their payload bytes, opened without a flow id) of
        relay input ``index`` so far; zeros when it is not registered."""
        entry = self._inputs.get(index)
        if entry is None:
            return 0, 0, 0
        return entry.packets, entry.bytes, entry.malformed

    def drain_relay_in(self) -> list[tuple[int, int, bytes]]:
        """Take the lane datagrams opened but not forwarded since the last call: (relay
        input, flow id, payload), oldest first, for Python's path of that link."""
        out, self._relay_in = self._relay_in, []
        return out

    def receive_link(
        self, datagrams: Iterable[Datagram], now: float
    ) -> tuple[list[Datagram], list[Datagram]]:
        """Take what is ours of datagrams read from the node link socket (relay inputs'
        lane datagrams); returns (the rest, untouched, for the slow path; egress)."""
        slow: list[Datagram] = []
        egress: list[Datagram] = []
        for data, address in datagrams:
            if not self._lane_in(data, address, now, egress):
                slow.append((data, address))
        if self._paced:
            self._release_due(now, egress)
        if self._relay_out:
            self._relay_flush()
        return slow, egress

    def pump_link(
        self, sock: socket.socket, now: float, out: socket.socket | None = None
    ) -> tuple[list[Datagram], list[Datagram]]:
        """Read what the (non-blocking) node link socket holds, as :meth:`receive_link`;
        the egress is sent on ``out`` (the media socket) when given, else returned."""
        slow: list[Datagram] = []
        egress: list[Datagram] = []
        for _ in range(PUMP_ROUNDS):
            batch = _read_batch(sock)
            if not batch:
                break
            more, sent = self.receive_link(batch, now)
            slow.extend(more)
            if out is not None:
                self._send_all(out, sent)
            else:
                egress.extend(sent)
            if len(batch) < PUMP_BATCH:
                break
        return slow, egress

    def _input_of(self, address: Address) -> tuple[int, _Input] | None:
        host, port = str(address[0]).split("%", 1)[0], int(address[1])
        for index, entry in self._inputs.items():
            if entry.key[1] == port and entry.host == host:
                return index, entry
        for index, entry in self._inputs.items():  # another spelling of the same address
            if entry.key[1] == port:
                try:
                    if _host_key(address) == entry.key:
                        return index, entry
                except ValueError:
                    return None
        return None

    def _lane_in(self, data: bytes, address: Address, now: float, egress: list[Datagram]) -> bool:
        """One datagram of the link socket: False when it is not a relay input's lane
        datagram (the slow path's); else opened (or dropped, counted by the opener) and
        forwarded or kept for drain_relay_in()."""
        if not data or data[0] & QUIC_FIXED_BIT or len(data) > _MAX_DATAGRAM - 1:
            return False  # QUIC (or cut short by the read: the slow path counts it)
        found = self._input_of(address)
        if found is None:
            return False
        index, entry = found
        plain = entry.opener.open(data)
        if plain is None:
            return True  # malformed, unknown key, replayed or forged: counted by the opener
        flow, length = _decode_varint(plain)
        if not length:
            entry.malformed += 1
            return True
        payload = plain[length:]
        source = entry.flows.get(flow)
        if source is not None:
            owner = self._transports.get(source)
            stream = None
            if (
                owner is not None
                and owner.source
                and 12 <= len(payload) <= _WORK_SIZE
                and 128 <= payload[0] <= 191
                and not 192 <= payload[1] <= 223  # RTCP (RFC 5761 §4)
            ):
                stream = owner.streams.get(int.from_bytes(payload[8:12], "big"))
            if owner is not None and stream is not None:
                entry.packets += 1
                entry.bytes += len(payload)
                self.relay_in_packets += 1
                self.relay_in_bytes += len(payload)
                self._ingest(owner, stream, payload, now, egress)
                return True
        if len(self._relay_in) < RELAY_IN_SLOTS:
            self._relay_in.append((index, flow, payload))
        else:
            self.relay_in_overflow += 1
        return True

    # -- packets ------------------------------------------------------------------------------

    def process(
        self, datagrams: Iterable[Datagram], now: float
    ) -> tuple[list[Datagram], list[Datagram]]:
        """Forward what is ours; returns (slow-path datagrams, egress datagrams)."""
        slow: list[Datagram] = []
        egress: list[Datagram] = []
        for data, address in datagrams:
            if not self._forward(data, address, now, egress):
                self.slow_packets += 1
                slow.append((data, address))
        if self._paced:
            self._release_due(now, egress)
        if self._relay_out:
            self._relay_flush()
        return slow, egress

    def ingest(
        self,
        packets: Iterable[tuple[int, bytes]],
        now: float,
        sock: socket.socket | None = None,
    ) -> tuple[list[tuple[int, bytes]], list[Datagram]]:
        """Forward plaintext RTP packets of sources' streams (:meth:`set_source`) as if they
        had arrived decrypted on a transport: ``packets`` are (source handle, packet). Returns
        (the entries that are not ours, for the slow path; egress datagrams). With ``sock``
        the egress is sent on it, in one flush for the batch, and the egress list is empty."""
        slow: list[tuple[int, bytes]] = []
        egress: list[Datagram] = []
        for entry in packets:
            source, data = entry
            owner = self._transports.get(source)
            stream = None
            if (
                owner is not None
                and owner.source
                and 12 <= len(data) <= _WORK_SIZE
                and 128 <= data[0] <= 191
                and not 192 <= data[1] <= 223  # RTCP (RFC 5761 §4)
            ):
                stream = owner.streams.get(int.from_bytes(data[8:12], "big"))
            if owner is None or stream is None:
                slow.append(entry)
                continue
            self.ingested_packets += 1
            self.ingested_bytes += len(data)
            self._ingest(owner, stream, data, now, egress)
        if self._paced:
            self._release_due(now, egress)
        if self._relay_out:
            self._relay_flush()
        if sock is not None:
            self._send_all(sock, egress)
            egress = []
        return slow, egress

    def _send_all(self, sock: socket.socket, egress: list[Datagram]) -> None:
        for data, address in egress:
            try:
                sock.sendto(data, address)
            except OSError:
                self.send_errors += 1

    def pump(self, sock: socket.socket, now: float) -> list[Datagram]:
        """Read what the (non-blocking) socket holds, forward, send; returns the slow path."""
        slow: list[Datagram] = []
        for _ in range(PUMP_ROUNDS):
            batch = _read_batch(sock)
            if not batch:
                break
            more, egress = self.process(batch, now)
            slow.extend(more)
            self._send_all(sock, egress)
            if len(batch) < PUMP_BATCH:
                break
        return slow

    def drain_framed(self) -> list[Datagram]:
        """Take the egress for framed (ICE-TCP) transports since the last call: a list of
        (SRTP packet, the address the transport was registered with), oldest first."""
        framed, self._framed = self._framed, []
        return framed

    def drain_log(self) -> list[LogRecord]:
        """Take the ingress records logged since the last call (oldest first)."""
        log, self._log = self._log, []
        return log

    def drain_latency(self) -> list[float]:
        """Take the sampled forwarding latencies (seconds) since the last call."""
        samples, self._latency = self._latency, []
        return samples

    # -- internals ----------------------------------------------------------------------------

    def _forward(self, data: bytes, address: Address, now: float, egress: list[Datagram]) -> bool:
        if len(data) < 12 or not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:
            return False  # not RTP (RFC 7983 / RFC 5761 demultiplexing)
        transport = self._by_addr.get(_key(address))
        if transport is None:
            return False
        stream = transport.streams.get(int.from_bytes(data[8:12], "big"))
        if stream is None:
            return False
        try:
            plain = transport.inbound.unprotect_rtp(data)
        except SrtpError:
            return False  # the slow path counts it by reason
        self.fast_packets += 1
        self.fast_bytes += len(data)
        self._ingest(transport, stream, plain, now, egress)
        return True

    def _record(self, record: LogRecord) -> None:
        if len(self._log) >= self._log_capacity:
            self.log_overflow += 1
            return
        self._log.append(record)

    def _ready(self, out: int) -> bool:
        """Whether transport ``out`` is registered (it has SRTP keys and an address)."""
        target = self._transports.get(out)
        if target is None or target.source:
            return False
        history = target.paced_history
        self._stamp = -1 if history is None else history.packets
        return True

    def _emit(self, sub: Any, out: int, n: int) -> bool:
        """Protect the ``n`` bytes ``sub`` rewrote and queue them for transport ``out``."""
        target = self._transports.get(out)
        if target is None:
            return False
        if target.drop_every:
            target.drop_seen += 1
            if target.drop_seen % target.drop_every == 0:
                self.impaired_drops += 1  # "sent": lost on the way, as far as we know
                return True
        try:
            wire = target.outbound.protect_rtp(bytes(memoryview(sub.buf)[:n]))
        except SrtpError:
            self.protect_errors += 1
            return False
        if target.pacer is not None:
            history = target.paced_history
            stamped = self._stamp >= 0 and history.packets != self._stamp
            tag = self._stamp & 0xFFFF if stamped else -1
            cls = PACED_AUDIO if self._kind == AUDIO else PACED_VIDEO
            target.pacer.push(wire, cls, tag, self._now)
            self._paced[out] = None
            self.paced_packets += 1  # counted as sent when the pacer lets it go
            return True
        if target.framed:
            self._framed.append((wire, target.address))
        else:
            self._egress.append((wire, target.address))
        self.sent_packets += 1
        self.sent_bytes += len(wire)
        return True

    def _ingest(
        self,
        transport: _Transport,
        stream: _Stream,
        plain: bytes,
        now: float,
        egress: list[Datagram],
    ) -> None:
        self._egress = egress
        self._now = now
        self._kind = stream.kind
        record = ingest(
            stream.handle,
            stream.kind,
            stream.source,
            stream.routes,
            plain,
            now=now,
            twcc_id=transport.twcc_id,
            level_id=transport.level_id,
            emit=self._emit,
            ready=self._ready,
        )
        self._record(record)
        if record[1] & _NOT_FORWARDABLE:
            return
        if stream.relay or stream.outputs:
            # A pipe relays this publication: the packet as it came (E2EE payloads untouched)
            # goes to the relay outputs here, and to the Python taps after this batch on the
            # event loop (drain_relay) when some tap is not an output or an output refused it.
            self._relay_packet(stream, plain)
        stream.packets += 1
        clock = self._clock
        if record[8] and clock is not None and not stream.packets & self._sample_mask:
            self._latency.append(clock() - now)


def _read_batch(sock: socket.socket) -> list[Datagram]:
    """Up to PUMP_BATCH datagrams the (non-blocking) socket holds, as ``recvmmsg`` would
    read them in the compiled kernel."""
    batch: list[Datagram] = []
    for _ in range(PUMP_BATCH):
        try:
            batch.append(sock.recvfrom(_MAX_DATAGRAM))
        except (BlockingIOError, InterruptedError):
            break
        except OSError:
            break  # e.g. ICMP port unreachable reported on a later read
    return batch
