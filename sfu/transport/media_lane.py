"""The sealed media lane of a node link: relayed media as plain UDP, sealed with AES-128-GCM.

aioquic costs tens of microseconds per DATAGRAM frame each way and paces them (issue 15,
bench/RESULTS.md), so relayed media leaves QUIC once the link is up and keyed; QUIC keeps the
mutual-TLS handshake and the control stream, which carries this lane's keys. Each datagram of
a media flow (a pipe datagram: flow id varint, then RTP/RTCP) becomes one UDP datagram::

    0      1                       9
    +------+-----------------------+---------------------------------------+-----------+
    | 0x2E | counter (64 bits, BE) | AES-128-GCM(pipe datagram)            | tag (16)  |
    +------+-----------------------+---------------------------------------+-----------+

The first byte is the lane's version (the high nibble, 0b0010) and the key's epoch (the low
nibble). Its 0x40 bit is clear, which no QUIC packet's is (the fixed bit, RFC 9000 sections
17.2 and 17.3; aioquic never greases it, RFC 9287), so the lane shares the link's UDP port:
the first byte alone tells the two apart. The 9-byte header is the AEAD's associated data
and the counter is the nonce (four zero bytes, then the counter): one key per direction, a
counter that never repeats under it, so a nonce is never reused (RFC 5116 section 3).

Keys: each side draws a fresh random key for its own direction when the link comes up (a
reconnection is a new link, hence new keys) and sends it on the control stream (KEY); the
peer answers KEY_ACK. A side seals only once its key is acknowledged and it holds the peer's
(:attr:`MediaLane.up`); until then the link sends media as QUIC DATAGRAMs, so nothing is lost
while keying. After :data:`REKEY_AFTER` datagrams a side announces a new key (the next epoch)
and switches to it on its KEY_ACK; at :data:`KEY_LIMIT` without one it stops sealing
(DATAGRAM fallback again), well inside AES-GCM's confidentiality limit (RFC 9001 section 6.6).

Liveness: the first byte that tells the lane from QUIC also lets someone on the path drop
the lane alone, which would stop relayed media while the link stays up. So each side tells
the other, every :data:`REPORT_INTERVAL_S` on the control stream (REPORT), how many of its
sealed datagrams it has opened on this link so far: a cumulative count, so a late report
only shows less than is true and the stream's ordering keeps counts from going back. A side
that sealed at least :data:`BLOCKED_MIN_SEALED` datagrams over :data:`BLOCKED_WINDOW_S`
of reports, of which the peer had opened under :data:`BLOCKED_DELIVERY_RATIO` by the next
report, declares its direction blocked: it stops sealing (media goes as QUIC DATAGRAMs
again, as before keying) and tries the lane again after :data:`RETRY_AFTER_S`, doubling
to :data:`RETRY_MAX_S` while the lane stays silent; a window judged not blocked brings the
backoff back to its start.

Receiving: a datagram from any address but the link peer's is dropped before any decryption,
then a malformed header, an unknown epoch, a counter the replay window (RFC 3711 section 3.3.2:
the highest counter and a bitmap of :data:`REPLAY_WINDOW` before it) saw or left behind, and
a failed tag, each counted by reason. Nothing raises. Sans-I/O: the link owns one lane and the
socket; randomness is injected for the tests.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sfu._fastpath._lane_py import LaneOpener as ReferenceOpener
from sfu._fastpath._lane_py import LaneSealer as ReferenceSealer
from sfu._fastpath._lane_shared import (
    EPOCHS,
    HEADER,
    HEADER_BYTES,
    KEY_BYTES,
    KEY_LIMIT,
    REPLAY_WINDOW,
    TAG_BYTES,
    VERSION,
    VERSION_MASK,
)
from sfu.packet.errors import ParseError

__all__ = [
    "BLOCKED_DELIVERY_RATIO",
    "BLOCKED_MIN_SEALED",
    "BLOCKED_WINDOW_S",
    "HEADER_BYTES",
    "KEY_BYTES",
    "KEY_LIMIT",
    "LANE_DROP_REASONS",
    "MESSAGE_KEY",
    "MESSAGE_KEY_ACK",
    "MESSAGE_REPORT",
    "OVERHEAD",
    "QUIC_FIXED_BIT",
    "REKEY_AFTER",
    "REPLAY_WINDOW",
    "REPORT_INTERVAL_S",
    "RETRY_AFTER_S",
    "RETRY_MAX_S",
    "TAG_BYTES",
    "VERSION",
    "MediaLane",
    "is_lane_datagram",
    "is_lane_message",
    "parse_header",
]

log = logging.getLogger(__name__)

#: Set in the first byte of every QUIC packet (RFC 9000 section 17): clear means the lane.
QUIC_FIXED_BIT: Final = 0x40
#: What sealing adds to a pipe datagram (25 bytes, against ~40 for a QUIC DATAGRAM frame).
OVERHEAD: Final = HEADER_BYTES + TAG_BYTES
#: Datagrams sealed with one key before the next is announced. AES-GCM's confidentiality
#: bound for ~1,500-byte packets is about 2^28 packets at an attacker advantage of 2^-57
#: (RFC 9001 section 6.6 and appendix B.1, scaled to our packet size); 2^24 leaves room.
REKEY_AFTER: Final = 1 << 24
#: Control message types of the node link that belong to the lane (their first byte). A pipe
#: control message starts with 0x00 (flow 0), so these never collide with one.
MESSAGE_KEY: Final = 0xE1
MESSAGE_KEY_ACK: Final = 0xE2
MESSAGE_REPORT: Final = 0xE3
_LANE_MESSAGES: Final = frozenset((MESSAGE_KEY, MESSAGE_KEY_ACK, MESSAGE_REPORT))
#: Sizes of the messages: type, epoch, key / type, epoch / type, datagrams opened (64 bits).
KEY_MESSAGE_BYTES: Final = 2 + KEY_BYTES
KEY_ACK_MESSAGE_BYTES: Final = 2
REPORT_MESSAGE_BYTES: Final = 9
#: Seconds between two REPORTs of a side (from when it holds the peer's key): one 9-byte
#: message a second per link, whatever the media rate; it also paces the liveness check.
REPORT_INTERVAL_S: Final = 1.0
#: Seconds of sealing the liveness check judges at once, between two reports' arrivals; the
#: verdict comes with the report after (every datagram of the window that arrived is in its
#: count by then). A blocked lane so stops media for about 4 s at most: up to a report
#: interval to the first report, the window, one interval more.
BLOCKED_WINDOW_S: Final = 2.0
#: Datagrams sealed in that window below which no verdict is drawn (too little to tell
#: loss from a block: a video flow sends hundreds a second, audio 50).
BLOCKED_MIN_SEALED: Final = 20
#: The share of the window's sealed datagrams the peer must have opened; below it the lane
#: is blocked. A dropper on the path takes all of them (0); loss of even 50% is congestion,
#: which QUIC DATAGRAMs would suffer as well. The peer's count can only err high (it also
#: holds datagrams sealed after the window), so loss alone never reads as worse than it is.
BLOCKED_DELIVERY_RATIO: Final = 0.2
#: Seconds in fallback before the lane is tried again, doubled after each retry that
#: finds it still blocked, up to :data:`RETRY_MAX_S` (a retry costs one window of media).
RETRY_AFTER_S: Final = 30.0
RETRY_MAX_S: Final = 300.0
#: Reports arrive a report interval apart give or take the control stream's jitter: one
#: this much less than the window old still opens it (else the window would be 3 s).
WINDOW_SLACK_S: Final = 0.25
#: Report samples kept: the window's (one per report interval, both ends), the one that
#: closes it, and one for jitter.
_SAMPLES_KEPT: Final = int(BLOCKED_WINDOW_S / REPORT_INTERVAL_S) + 3
#: Why a received lane datagram was dropped (a fixed set: the metric's labels).
LANE_DROP_REASONS: Final = ("not_peer", "malformed", "unknown_key", "replayed", "auth_failed")
#: A REPORT: type, datagrams opened.
_REPORT: Final = struct.Struct("!BQ")

Random = Callable[[int], bytes]


class LaneOpening(Protocol):
    """The peer's keys, the replay window and the counts of what was opened and dropped: a
    lane kernel object (``sfu._fastpath._lane`` or its reference)."""

    @property
    def has_keys(self) -> bool: ...
    @property
    def received(self) -> int: ...
    @property
    def malformed(self) -> int: ...
    @property
    def unknown_key(self) -> int: ...
    @property
    def replayed(self) -> int: ...
    @property
    def auth_failed(self) -> int: ...
    def add_key(self, epoch: int, key: bytes) -> None: ...
    def open(self, data: bytes | bytearray | memoryview) -> bytes | None: ...


class LaneSealing(Protocol):
    """Our direction's key, epoch and counter: a lane kernel object (``sfu._fastpath._lane``
    or its reference), shared with the forwarder that seals relayed packets through it."""

    active: bool

    @property
    def epoch(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def sealed(self) -> int: ...
    @property
    def limit(self) -> int: ...
    def rekey(self, epoch: int, key: bytes) -> None: ...
    def seal(self, datagram: bytes | bytearray | memoryview) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class LaneKernels:
    """The classes a media lane is made of: its sealer (shared with the forwarder's relay
    outputs) and its opener, of one kernel kind (compiled or reference)."""

    sealer: Callable[..., LaneSealing]
    opener: Callable[[], LaneOpening]


#: The pure-Python references (``sfu._fastpath._lane_py``).
REFERENCE_LANE: Final = LaneKernels(ReferenceSealer, ReferenceOpener)


def is_lane_datagram(data: bytes) -> bool:
    """Whether a UDP datagram on the link's port is the lane's (not QUIC's): by its first
    byte's fixed bit alone."""
    return bool(data) and not data[0] & QUIC_FIXED_BIT


def is_lane_message(message: bytes) -> bool:
    """Whether a control message of the node link is one of the lane's (KEY, KEY_ACK,
    REPORT)."""
    return bool(message) and message[0] in _LANE_MESSAGES


def parse_header(data: bytes) -> tuple[int, int]:
    """(epoch, counter) of a lane datagram; ParseError when it is not one (too short for a
    header and a tag, or another version)."""
    if len(data) < HEADER_BYTES + TAG_BYTES:
        raise ParseError(f"media lane: {len(data)} bytes, at least {HEADER_BYTES + TAG_BYTES}")
    first = data[0]
    if first & VERSION_MASK != VERSION:
        raise ParseError(f"media lane: version byte {first:#04x}")
    _, counter = HEADER.unpack_from(data)
    return first & (EPOCHS - 1), int(counter)


def _same_address(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    # asyncio gives IPv6 sources as 4-tuples (host, port, flowinfo, scope id).
    return a[:2] == b[:2]


class MediaLane:
    """Both directions of one node link's sealed lane: our key, the peer's, the counters."""

    __slots__ = (
        "_acked",
        "_blocked_until",
        "_closed",
        "_drops",
        "_messages",
        "_next",
        "_next_report",
        "_peer_opened",
        "_random",
        "_report",
        "_retry_s",
        "_samples",
        "blocked",
        "opener",
        "peer_address",
        "sealer",
    )

    def __init__(
        self,
        peer_address: tuple[Any, ...],
        *,
        now: float,
        random: Random | None = None,
        kernels: LaneKernels | None = None,
    ) -> None:
        #: The only address lane datagrams are accepted from (the link peer's).
        self.peer_address = peer_address
        if random is None:
            random = os.urandom
        self._random = random
        epoch = random(1)[0] % EPOCHS
        key = random(KEY_BYTES)
        #: Our direction's key, epoch and counter (a kernel object: the forwarder seals the
        #: relayed packets it forwards through it too, so the counter is one for both).
        kernels = kernels or REFERENCE_LANE
        self.sealer: LaneSealing = kernels.sealer(epoch, key, limit=KEY_LIMIT)
        #: The peer's keys, the replay window, what was opened and dropped (a kernel object
        #: too: the receiving half).
        self.opener: LaneOpening = kernels.opener()
        self._acked = False
        self._closed = False
        #: The next key, announced and not yet acknowledged: (epoch, key).
        self._next: tuple[int, bytes] | None = None
        #: Control messages for the peer (KEY, KEY_ACK), taken by the link.
        self._messages: list[bytes] = []
        self._messages.append(self._key_message(epoch, key))
        #: Datagrams opened, and drops by reason (LANE_DROP_REASONS).
        #: Drops the opener does not see: other addresses, malformed control messages.
        self._drops = {"not_peer": 0, "malformed": 0}
        # Liveness: when the next REPORT is due; the peer's last count and, at its arrival,
        # (time, our sealed count, its count); those samples over the window; when a
        # blocked lane is retried (None: not blocked) and the backoff of the next block.
        self._next_report = now + REPORT_INTERVAL_S
        self._peer_opened = 0
        self._report: tuple[float, int, int] | None = None
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=_SAMPLES_KEPT)
        self._blocked_until: float | None = None
        self._retry_s = RETRY_AFTER_S
        #: Times the lane was found blocked and media went back to QUIC DATAGRAMs.
        self.blocked = 0

    @property
    def up(self) -> bool:
        """Whether media goes sealed: the peer acknowledged our key, we hold its, and the
        lane is not in fallback after going silent."""
        return self._allowed() and self.sealer.used < self.sealer.limit

    @property
    def sealed(self) -> int:
        """Datagrams sealed in our direction, by the lane and the forwarder together."""
        return self.sealer.sealed

    def _allowed(self) -> bool:
        return (
            self._acked
            and self.opener.has_keys
            and self._blocked_until is None
            and not self._closed
        )

    def close(self) -> None:
        """The link is gone: seal nothing more (the sealer is shared with the data plane)."""
        self._closed = True
        self._update()

    def _update(self) -> None:
        """After any change of state: let the sealer seal (or not), and announce the next
        key once the current one has sealed REKEY_AFTER datagrams, whoever sealed them."""
        self.sealer.active = self._allowed()
        if self.sealer.used >= REKEY_AFTER and self._next is None:
            self._announce_next()

    @property
    def in_fallback(self) -> bool:
        """Whether sealing is suspended because the peer stopped opening what we sealed."""
        return self._blocked_until is not None

    @property
    def has_messages(self) -> bool:
        """Whether control messages wait for :meth:`take_messages`."""
        return bool(self._messages)

    def take_messages(self) -> list[bytes]:
        """Control messages for the peer (our key first), to send on the control stream."""
        out, self._messages = self._messages, []
        return out

    # -- sending -----------------------------------------------------------------------------

    def seal(self, datagram: bytes) -> bytes | None:
        """The lane datagram of one pipe datagram; None while the lane is not up (the link
        sends it as a QUIC DATAGRAM instead)."""
        sealed = self.sealer.seal(datagram)
        if self.sealer.used >= REKEY_AFTER and self._next is None:
            self._announce_next()
        return sealed

    def _announce_next(self) -> None:
        epoch = (self.sealer.epoch + 1) % EPOCHS
        key = self._random(KEY_BYTES)
        self._next = (epoch, key)
        self._messages.append(self._key_message(epoch, key))

    @staticmethod
    def _key_message(epoch: int, key: bytes) -> bytes:
        return bytes((MESSAGE_KEY, epoch)) + key

    # -- control -----------------------------------------------------------------------------

    def receive_message(self, message: bytes, *, now: float) -> bool:
        """One of the lane's control messages from the peer (reliable, in order); False
        when malformed (counted), never raised. A REPORT whose count goes back or exceeds
        what we sealed is malformed: the stream is ordered and the count cumulative."""
        kind = message[0] if message else -1
        if kind == MESSAGE_REPORT and len(message) == REPORT_MESSAGE_BYTES:
            _, opened = _REPORT.unpack(message)
            if self._peer_opened <= opened <= self.sealed:
                self._peer_opened = opened
                self._report = (now, self.sealed, opened)
                if self._blocked_until is None:
                    self._check()
                    self._update()
                return True
        if kind == MESSAGE_KEY and len(message) == KEY_MESSAGE_BYTES and message[1] < EPOCHS:
            epoch = message[1]
            self.opener.add_key(epoch, message[2:])
            self._messages.append(bytes((MESSAGE_KEY_ACK, epoch)))
            self._update()
            return True
        if kind == MESSAGE_KEY_ACK and len(message) == KEY_ACK_MESSAGE_BYTES:
            epoch = message[1]
            if epoch == self.sealer.epoch:
                self._acked = True
            elif self._next is not None and epoch == self._next[0]:
                self.sealer.rekey(*self._next)
                self._next = None
            self._update()
            return True
        self._drops["malformed"] += 1
        return False

    # -- liveness ----------------------------------------------------------------------------

    def next_timer(self) -> float:
        """When :meth:`handle_timer` is next due: our next REPORT, or the retry of a
        blocked lane if sooner."""
        if self._blocked_until is not None and self._blocked_until < self._next_report:
            return self._blocked_until
        return self._next_report

    def handle_timer(self, *, now: float) -> None:
        """Once :meth:`next_timer` is due: retry a blocked lane whose backoff ran out, and
        queue our REPORT (once we hold the peer's key, so the peer may seal: sent whether
        or not anything arrived, since a blocked lane brings nothing). The peer's reports
        are judged as they arrive."""
        if self._blocked_until is not None and now >= self._blocked_until:
            # Seal again; reports that arrive from now on judge it afresh.
            self._blocked_until = None
            self._report = None
            self._samples.clear()
            log.debug("media lane: retrying the sealed lane")
        self._update()
        if now < self._next_report:
            return
        self._next_report += REPORT_INTERVAL_S
        if self._next_report <= now:  # called late: keep the interval from now
            self._next_report = now + REPORT_INTERVAL_S
        if self.opener.has_keys:
            self._messages.append(_REPORT.pack(MESSAGE_REPORT, self.received))

    def _check(self) -> None:
        """Judge the window that the peer's latest report closes: the datagrams we had
        sealed when two earlier reports arrived against the peer's counts."""
        report = self._report
        if report is None:
            return
        samples = self._samples
        if not samples or samples[-1] is not report:
            samples.append(report)
        if len(samples) < 3:
            return
        at, _, opened = report
        # The window's datagrams are those sealed between two earlier reports (``base`` and
        # ``end``, the one before this): a report later, every one of them that arrived is
        # in the peer's count, whatever burst was in flight as this report came.
        end = samples[-2]
        base: tuple[float, int, int] | None = None
        for i in range(len(samples) - 2):
            if end[0] - samples[i][0] >= BLOCKED_WINDOW_S - WINDOW_SLACK_S:
                base = samples[i]
        if base is None:
            return
        while samples[0] is not base:
            samples.popleft()
        sent, got = end[1] - base[1], opened - base[2]
        if sent < BLOCKED_MIN_SEALED:
            return
        if got >= sent * BLOCKED_DELIVERY_RATIO:
            self._retry_s = RETRY_AFTER_S  # the lane works: the next block backs off anew
            return
        self.blocked += 1
        self._blocked_until = at + self._retry_s
        log.info(
            "media lane: the peer opened %d of %d sealed datagrams in %.1f s; relayed media "
            "goes as QUIC DATAGRAMs, the lane is tried again in %.0f s",
            got,
            sent,
            end[0] - base[0],
            self._retry_s,
        )
        self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        samples.clear()
        self._report = None

    # -- receiving ---------------------------------------------------------------------------

    def open(self, data: bytes, addr: tuple[Any, ...]) -> bytes | None:
        """The pipe datagram a lane datagram from ``addr`` seals; None (counted) when it is
        dropped: another address, malformed, unknown key, replayed, or forged."""
        if not _same_address(addr, self.peer_address):
            self._drops["not_peer"] += 1
            return None
        return self.opener.open(data)

    @property
    def received(self) -> int:
        """Datagrams opened (what our REPORTs tell the peer)."""
        return self.opener.received

    @property
    def drops(self) -> dict[str, int]:
        """Datagrams (and control messages) dropped, by reason (LANE_DROP_REASONS)."""
        o = self.opener
        return {
            "not_peer": self._drops["not_peer"],
            "malformed": self._drops["malformed"] + o.malformed,
            "unknown_key": o.unknown_key,
            "replayed": o.replayed,
            "auth_failed": o.auth_failed,
        }
