"""SCTP association over DTLS (RFC 8261, RFC 8841) behind a sans-I/O boundary.

The association itself is aiortc's (``aiortc.rtcsctptransport.RTCSctpTransport``: maintained,
pure Python, already used by our test clients), not written here. aiortc drives it from asyncio
(``loop.call_later`` timers, ``async`` sends); this module runs it synchronously instead:

* the DTLS transport it sends through is a shim that appends each SCTP packet to an outbox;
* its event loop is a fake one whose ``call_later`` only records a deadline against the ``now``
  the caller passed, so :meth:`SctpAssociation.next_timer` can say when to call back;
* its coroutines never truly suspend (the shim's ``_send_data`` returns at once), so each one is
  stepped to completion in place; ``asyncio.ensure_future`` inside aiortc is pointed at the
  same stepper for the duration of one call (no ``await`` in between, so no other coroutine
  sees the substitution; an aiortc peer connection driven from *another thread* of the same
  process could, which is why the server never runs one and tests that do share its loop).

Inputs are SCTP packets (DTLS application data) and ``now``; outputs are SCTP packets to
encrypt and send, :class:`SctpMessage` events and the next timer. Data channels (DCEP,
RFC 8832) are handled above this, in :mod:`sfu.transport.datachannel`: the association's
upper-layer delivery is intercepted, aiortc's own data channel objects are never created.

Not sans-I/O in one detail: aiortc measures RTT and partial-reliability lifetimes with
``time.time()``; we use only max-retransmits partial reliability, and RTT only tunes the
retransmission timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final

from aiortc import rtcsctptransport as _aiortc_sctp

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "SCTP_PORT",
    "SctpAssociation",
    "SctpMessage",
]

#: The SCTP port both ends use on the DTLS transport (RFC 8841 §5: 5000 is the default).
SCTP_PORT: Final = 5000
#: The largest message we accept and announce in ``a=max-message-size`` (RFC 8841 §6):
#: a chat message never needs more; bounds one message's reassembly buffer.
DEFAULT_MAX_MESSAGE_SIZE: Final = 65536
#: Most bytes queued for sending (not yet acknowledged) before :meth:`SctpAssociation.send`
#: refuses: a subscriber that stops reading cannot make the server buffer without bound.
MAX_QUEUED_BYTES: Final = 1 << 20
#: Most bytes held for reassembly from one peer (what we advertise as our receive window,
#: RFC 9260 §6.2.1); a peer that sends beyond it, or leaves more than ``MAX_TSN_GAPS`` TSNs
#: out of order, is not following the protocol and its association is aborted: aiortc's
#: receive buffers are otherwise unbounded against a hostile (if authenticated) peer. A SACK
#: whose gap blocks acknowledge more than ``MAX_TSN_GAPS`` TSNs beyond what we have in flight
#: is dropped as malformed (aiortc would expand each block TSN by TSN).
MAX_INBOUND_BYTES: Final = 1 << 20
MAX_TSN_GAPS: Final = 4096
#: Chunk types whose body aiortc reads as TLV parameters (INIT and INIT ACK after their
#: 16 fixed bytes, the rest from the start), and where those start: RFC 9260 §3.2.1 makes a
#: parameter's length count its own 4-byte header. aiortc's parameter reader advances by
#: the length field, so a parameter of length 0 loops forever, appending to a list: one
#: 40-byte packet from a peer inside DTLS took a process to 24 GB. Such packets are
#: refused before aiortc reads them (:func:`_parameters_well_formed`).
_PARAMETER_OFFSETS: Final = {1: 16, 2: 16, 4: 0, 5: 0, 6: 0, 9: 0, 130: 0}
#: The SCTP common header and a chunk header (RFC 9260 §3, §3.2).
_COMMON_HEADER: Final = 12
_CHUNK_HEADER: Final = 4
_PARAMETER_HEADER: Final = 4


@dataclasses.dataclass(frozen=True, slots=True)
class SctpMessage:
    """One complete user message delivered by the association (RFC 9260 §6.9 reassembled)."""

    stream_id: int
    ppid: int
    data: bytes


class _TimerHandle:
    """What aiortc's ``loop.call_later`` returns: a deadline we can cancel."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _FakeLoop:
    """The event loop aiortc's association sees: timers are recorded, never run by themselves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[_TimerHandle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _TimerHandle:
        handle = _TimerHandle(self.now + delay, callback)
        self.timers.append(handle)
        return handle

    def next_deadline(self) -> float | None:
        self.timers = [t for t in self.timers if not t.cancelled]
        return min((t.when for t in self.timers), default=None)

    def due(self, now: float) -> list[_TimerHandle]:
        self.timers = [t for t in self.timers if not t.cancelled]
        due = [t for t in self.timers if t.when <= now]
        self.timers = [t for t in self.timers if t.when > now]
        return due


class _DtlsShim:
    """The DTLS transport aiortc's association sends through: collects packets in an outbox."""

    def __init__(self, server: bool) -> None:
        self._role = "server" if server else "client"
        self.state = "connected"
        self.outbox: list[bytes] = []

    def _register_data_receiver(self, receiver: object) -> None:
        """aiortc registers for DTLS data; we deliver it ourselves."""

    def _unregister_data_receiver(self, receiver: object) -> None:
        """See :meth:`_register_data_receiver`."""

    async def _send_data(self, data: bytes) -> None:
        self.outbox.append(data)


def _step(coro: Coroutine[Any, Any, Any]) -> None:
    """Run a coroutine that never suspends to its end; one that would is closed and reported."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError("SCTP coroutine suspended; the shim expects none to")


class _SyncAsyncio(types.SimpleNamespace):
    """Stands in for the ``asyncio`` module inside aiortc's SCTP code during one call."""

    def __init__(self, loop: _FakeLoop) -> None:
        super().__init__()
        self._loop = loop

    def ensure_future(self, coro: Coroutine[Any, Any, Any]) -> None:
        _step(coro)

    def get_event_loop(self) -> _FakeLoop:
        return self._loop

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


class _Association(_aiortc_sctp.RTCSctpTransport):
    """aiortc's association with upper-layer delivery captured instead of its data channels."""

    inbox: list[SctpMessage]
    #: Streams the peer reset (it closed their data channels, RFC 8831 §6.7).
    reset_by_peer: list[int]

    async def _receive(self, stream_id: int, pp_id: int, data: bytes) -> None:
        self.inbox.append(SctpMessage(stream_id, pp_id, data))

    async def _reset_deferred_streams(self) -> None:
        # aiortc closes its own channel objects here; we have none, so note the streams.
        request = self._reconfig_deferred
        await super()._reset_deferred_streams()
        if request is not None and self._reconfig_deferred is None:
            self.reset_by_peer.extend(request.streams)


class SctpAssociation:
    """One SCTP association on a DTLS transport, sans-I/O (see the module docstring).

    ``server`` is the DTLS role (RFC 8832 §6: it picks odd stream ids, the client even ones).
    """

    def __init__(
        self,
        *,
        server: bool,
        remote_port: int = SCTP_PORT,
        remote_max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        drops: collections.Counter[str] | None = None,
    ) -> None:
        self.server = server
        #: Shared drop counters of every association (for metrics), by a fixed reason.
        self.drops: collections.Counter[str] = drops if drops is not None else collections.Counter()
        self.max_message_size = max_message_size
        self.remote_max_message_size = remote_max_message_size
        self._remote_port = remote_port
        self._loop = _FakeLoop()
        self._shim = _DtlsShim(server)
        self.malformed = 0
        #: aiortc calls that raised (counted, contained; see :meth:`_run`).
        self.errors = 0
        with self._synchronous(0.0):
            self._assoc = _Association(self._shim, port=SCTP_PORT)  # type: ignore[arg-type]
        self._assoc.inbox = []
        self._assoc.reset_by_peer = []
        self._assoc._advertised_rwnd = MAX_INBOUND_BYTES
        #: Associations aborted because the peer overran the receive bounds.
        self.overruns = 0
        self._started = False

    # -- state -------------------------------------------------------------------------

    @property
    def established(self) -> bool:
        """True once the four-way handshake completed (RFC 9260 §5.1)."""
        return bool(
            self._assoc._association_state == _aiortc_sctp.RTCSctpTransport.State.ESTABLISHED
        )

    @property
    def closed(self) -> bool:
        """True after an ABORT, a SHUTDOWN, or too many retransmissions."""
        return self._started and self._assoc.state == "closed"

    @property
    def queued_bytes(self) -> int:
        """Bytes handed to :meth:`send` and not yet acknowledged by the peer."""
        return _user_bytes(self._assoc._outbound_queue) + _user_bytes(self._assoc._sent_queue)

    # -- inputs ------------------------------------------------------------------------

    def start(self, *, now: float) -> list[bytes]:
        """Begin the association: both ends send INIT (RFC 8841 §9.3)."""
        if self._started:
            return []
        self._started = True
        caps = _aiortc_sctp.RTCSctpCapabilities(self.remote_max_message_size)
        self._run(now, lambda: _step(self._assoc.start(caps, self._remote_port)))
        return self._drain()

    def receive(self, packet: bytes, *, now: float) -> list[bytes]:
        """Take one SCTP packet from DTLS; malformed ones are counted and dropped."""
        out = [] if self._started else self.start(now=now)
        if not _parameters_well_formed(packet):
            self.malformed += 1
            self.drops["sctp_malformed"] += 1
            return out
        # aiortc checks the CRC32c and drops silently; count what it cannot parse.
        try:
            _, _, _, chunks = _aiortc_sctp.parse_packet(packet)
        except Exception:  # ValueError, and struct.error from a chunk body too short
            self.malformed += 1
            self.drops["sctp_malformed"] += 1
            return out
        if not self._plausible(chunks):
            self.malformed += 1
            self.drops["sctp_malformed"] += 1
            return out
        try:
            with self._synchronous(now):
                _step(self._assoc._handle_data(packet))
        except Exception:  # a peer's packet must never raise out of the handler
            self.malformed += 1
            self.drops["sctp_malformed"] += 1
        if self._overrun():
            self.overruns += 1
            self.drops["sctp_overrun"] += 1
            return out + self._drain() + self.close(now=now)
        return out + self._drain()

    def send(
        self,
        stream_id: int,
        ppid: int,
        data: bytes,
        *,
        now: float,
        ordered: bool = True,
        max_retransmits: int | None = None,
    ) -> list[bytes] | None:
        """Queue one message; None when refused (not established, too large, buffer full)."""
        if not self.established or len(data) > self.remote_max_message_size:
            return None
        if self.queued_bytes + len(data) > MAX_QUEUED_BYTES:
            return None
        sent = self._run(
            now,
            lambda: _step(
                self._assoc._send(
                    stream_id, ppid, data, max_retransmits=max_retransmits, ordered=ordered
                )
            ),
        )
        return self._drain() if sent else None

    def handle_timer(self, *, now: float) -> list[bytes]:
        """Run the retransmission / SACK timers that are due."""
        for handle in self._loop.due(now):
            self._run(now, handle.callback)
        return self._drain()

    def next_timer(self) -> float | None:
        """When :meth:`handle_timer` next has work, or None."""
        if self.closed:
            return None
        return self._loop.next_deadline()

    def close(self, *, now: float) -> list[bytes]:
        """Abort the association (the DTLS transport is going away)."""
        if not self._started or self.closed:
            return []
        self._run(now, lambda: _step(self._assoc.stop()))
        self._loop.timers.clear()
        return self._drain()

    def reset_streams(self) -> list[int]:
        """Take the streams the peer reset since the last call (its channels closed)."""
        out, self._assoc.reset_by_peer = self._assoc.reset_by_peer, []
        return out

    def reset_outgoing(self, stream_id: int, *, now: float) -> list[bytes]:
        """Reset our side of a stream (RFC 6525 §4.1), as RFC 8831 §6.7 asks on close."""
        if not self.established:
            return []
        self._assoc._reconfig_queue.append(stream_id)
        self._run(now, lambda: _step(self._assoc._transmit_reconfig()))
        return self._drain()

    def messages(self) -> list[SctpMessage]:
        """Take the messages delivered since the last call; one larger than our
        ``a=max-message-size`` (the peer ignored it) is dropped and counted."""
        out, self._assoc.inbox = self._assoc.inbox, []
        kept = [m for m in out if len(m.data) <= self.max_message_size]
        if len(kept) != len(out):
            self.drops["message_too_large"] += len(out) - len(kept)
        return kept

    # -- internals ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _synchronous(self, now: float) -> Iterator[None]:
        self._loop.now = now
        module: Any = _aiortc_sctp
        saved = module.asyncio
        module.asyncio = _SyncAsyncio(self._loop)
        try:
            yield
        finally:
            module.asyncio = saved

    def _run(self, now: float, action: Callable[[], object]) -> bool:
        """Run aiortc code synchronously. An exception (a state of aiortc's we did not foresee,
        or a coroutine that would suspend) is counted and never reaches the packet path or the
        timer loop; False tells the caller its action did not complete."""
        try:
            with self._synchronous(now):
                action()
        except Exception:  # aiortc internals: anything, by design of this boundary
            self.errors += 1
            self.drops["sctp_error"] += 1
            return False
        return True

    def _plausible(self, chunks: list[Any]) -> bool:
        """Whether a SACK's gap blocks acknowledge no more TSNs than we have in flight (and
        :data:`MAX_TSN_GAPS` beside). aiortc expands every gap block TSN by TSN (up to 65,536
        each): ~300 blocks in one packet would cost it gigabytes and seconds, while a real
        SACK's blocks only cover the TSNs we sent and it has not acknowledged yet."""
        in_flight = len(self._assoc._sent_queue) + MAX_TSN_GAPS
        for chunk in chunks:
            if isinstance(chunk, _aiortc_sctp.SackChunk):
                span = sum(max(0, end - start + 1) for start, end in chunk.gaps)
                if span > in_flight:
                    return False
        return True

    def _overrun(self) -> bool:
        """The peer holds more of our memory than the protocol lets it (see MAX_INBOUND_BYTES)."""
        assoc = self._assoc
        if len(assoc._sack_misordered) > MAX_TSN_GAPS or len(assoc._sack_duplicates) > MAX_TSN_GAPS:
            return True
        held = sum(
            len(chunk.user_data)
            for stream in assoc._inbound_streams.values()
            for chunk in stream.reassembly
        )
        return held > MAX_INBOUND_BYTES

    def _drain(self) -> list[bytes]:
        out, self._shim.outbox = self._shim.outbox, []
        return out


def _parameters_well_formed(packet: bytes) -> bool:
    """Whether every parameter of every chunk that carries parameters (within the chunk's
    own length) is at least its 4-byte header long; walks chunks as aiortc's parser does,
    leaving every other check (checksum, chunk lengths) to it."""
    pos = _COMMON_HEADER
    end = len(packet)
    while pos + _CHUNK_HEADER <= end:
        kind = packet[pos]
        length = int.from_bytes(packet[pos + 2 : pos + 4], "big")
        if length < _CHUNK_HEADER or pos + length > end:
            return True  # aiortc refuses the packet itself
        start = _PARAMETER_OFFSETS.get(kind)
        if start is not None:
            body = packet[pos + _CHUNK_HEADER : pos + length]
            at = start
            while at + _PARAMETER_HEADER <= len(body):
                size = int.from_bytes(body[at + 2 : at + 4], "big")
                if size < _PARAMETER_HEADER:
                    return False
                at += size + (-size % 4)
        pos += length + (-length % 4)
    return True


def _user_bytes(chunks: Any) -> int:
    """Bytes of user data in a queue of aiortc DATA chunks."""
    return sum(len(chunk.user_data) for chunk in chunks)
