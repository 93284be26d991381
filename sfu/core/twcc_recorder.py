"""Transport-wide congestion control feedback for a publisher's transport.

A browser's send-side bandwidth estimator only ramps up when the receiver tells it, packet
by packet, when each one arrived: that is transport-wide CC feedback
(draft-holmer-rmcat-transport-wide-cc-extensions-01). Without it Chromium keeps its estimate
low and never enables its higher simulcast layers. :class:`TwccRecorder` records the arrival
time of every packet carrying the transport-wide sequence number extension (§2) and, every
``interval``, turns the arrivals since the last feedback into RTPFB FMT 15 packets (§3.1).

Choices:

* **Each sequence number is reported once.** A feedback starts at the first sequence number
  not yet reported; packets arriving for sequence numbers already covered are late and are
  dropped, as are duplicates. Sequence numbers never seen inside a feedback's range are
  reported as not received.
* **Split, never fail.** A feedback ends before a receive delta that does not fit signed
  16 bits of 250 µs (about ±8 s), before its status count would exceed 16 bits, and before
  it would outgrow ``max_feedback_bytes`` (so it fits one datagram with SRTCP overhead).
  (Arrivals are unwrapped within ±32767 of the newest, so a gap longer than one status
  count cannot build up; should one appear anyway, it is skipped, never reported.)
* **Bounded memory.** At most ``max_packets`` arrivals wait for feedback; beyond that the
  lowest sequence numbers are dropped and the next feedback starts above them.

Sans-I/O: ``now`` is any monotonic clock in seconds. Arrival times are kept in whole µs since
the first packet's ``now``; the reference time field (64 ms units, 24 bits) wraps on the wire
while the receiver of the feedback unwraps it.
"""

from __future__ import annotations

import heapq

from sfu.packet.seqnum import SequenceUnwrapper
from sfu.packet.twcc import DELTA_TICK_US, REFERENCE_TICK_US, build_transport_feedback

__all__ = [
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_FEEDBACK_BYTES",
    "DEFAULT_MAX_PACKETS",
    "MAX_STATUS_COUNT",
    "TwccRecorder",
]

DEFAULT_INTERVAL = 0.05  # seconds between feedbacks; libwebrtc's receivers send every 50-250 ms
DEFAULT_MAX_PACKETS = 8192  # arrivals awaiting feedback: ~1 s of a 100 Mbit/s publisher
# Serialized size cap per feedback: leaves room for SRTCP's trailer and tag, and for the
# IP/UDP headers, under a 1200-octet path MTU.
DEFAULT_MAX_FEEDBACK_BYTES = 1100
MAX_STATUS_COUNT = 0xFFFF  # the packet status count field is 16 bits (§3.1)

_MIN_DELTA = -0x8000  # receive deltas in 250 µs ticks: signed 16 bits at most (§3.1.5)
_MAX_DELTA = 0x7FFF
_MIN_FEEDBACK_BYTES = 64  # enough for a few packets, so every feedback makes progress


class TwccRecorder:
    """Records transport-wide sequence numbers as they arrive and builds their feedback.

    Call :meth:`on_packet` for every packet with the transport-cc extension on this
    transport, and :meth:`poll` at or after :meth:`next_timer` to get serialized feedback
    packets to send to the publisher.
    """

    __slots__ = (
        "_base",
        "_due",
        "_epoch",
        "_fb_count",
        "_heap",
        "_interval",
        "_last_sent_at",
        "_max_feedback_bytes",
        "_max_packets",
        "_media_ssrc",
        "_pending",
        "_unwrapper",
        "dropped",
        "duplicates",
        "feedback_sent",
        "late",
        "sender_ssrc",
    )

    def __init__(
        self,
        sender_ssrc: int,
        *,
        interval: float = DEFAULT_INTERVAL,
        max_packets: int = DEFAULT_MAX_PACKETS,
        max_feedback_bytes: int = DEFAULT_MAX_FEEDBACK_BYTES,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_packets < 1:
            raise ValueError("max_packets must be at least 1")
        if max_feedback_bytes < _MIN_FEEDBACK_BYTES:
            raise ValueError(f"max_feedback_bytes must be at least {_MIN_FEEDBACK_BYTES}")
        self.sender_ssrc = sender_ssrc
        self._interval = interval
        self._max_packets = max_packets
        self._max_feedback_bytes = max_feedback_bytes
        self._unwrapper = SequenceUnwrapper()
        self._epoch: float | None = None  # the first packet's ``now``: arrival time zero
        self._pending: dict[int, int] = {}  # extended seq -> arrival µs since the epoch
        self._heap: list[int] = []  # the keys of _pending, to drop the lowest when full
        self._base: int | None = None  # first extended seq not yet reported
        self._media_ssrc = 0
        self._fb_count = 0
        self._last_sent_at: float | None = None
        self._due: float | None = None  # when the waiting arrivals are to be reported
        self.late = 0  # arrivals for sequence numbers already reported (or skipped)
        self.duplicates = 0  # arrivals for sequence numbers already waiting
        self.dropped = 0  # arrivals dropped unreported because max_packets was exceeded
        self.feedback_sent = 0  # feedback packets returned by poll()

    @property
    def pending(self) -> int:
        """Number of arrivals waiting for the next feedback."""
        return len(self._pending)

    def on_packet(self, transport_seq: int, media_ssrc: int, now: float) -> None:
        """Record the arrival at ``now`` of the packet with 16-bit ``transport_seq``."""
        unwrapper = self._unwrapper
        ext = unwrapper.peek(transport_seq)
        last = unwrapper.last
        if last is None or ext > last:
            unwrapper.unwrap(transport_seq)
        if self._epoch is None:
            self._epoch = now
        self._media_ssrc = media_ssrc
        if self._base is not None and ext < self._base:
            self.late += 1
            return
        pending = self._pending
        if ext in pending:
            self.duplicates += 1
            return
        if not pending:
            # The first arrival since the last feedback: due one interval after that
            # feedback, or after this packet when none was sent yet.
            start = now if self._last_sent_at is None else self._last_sent_at
            self._due = start + self._interval
        pending[ext] = round((now - self._epoch) * 1_000_000)
        heapq.heappush(self._heap, ext)
        if len(pending) > self._max_packets:
            oldest = heapq.heappop(self._heap)
            del pending[oldest]
            self._base = oldest + 1
            self.dropped += 1

    def next_timer(self) -> float | None:
        """When :meth:`poll` will next have feedback to send; None while nothing is waiting."""
        return self._due if self._pending else None

    def poll(self, now: float) -> list[bytes]:
        """Serialized feedback packets for every waiting arrival, when one is due at ``now``."""
        due = self.next_timer()
        if due is None or now < due:
            return []
        items = sorted(self._pending.items())
        self._pending.clear()
        self._heap.clear()
        self._last_sent_at = now
        base = items[0][0] if self._base is None else self._base
        out: list[bytes] = []
        i = 0
        while i < len(items):
            if items[i][0] - base >= MAX_STATUS_COUNT:
                base = items[i][0]  # defensive: a gap no feedback can describe is skipped
            j = _segment_end(items, i, base)
            packet = self._build(items, i, j, base)
            while len(packet) > self._max_feedback_bytes and j - i > 1:
                j = i + max(1, min(j - i - 1, (j - i) * self._max_feedback_bytes // len(packet)))
                packet = self._build(items, i, j, base)
            out.append(packet)
            self._fb_count = (self._fb_count + 1) & 0xFF
            base = items[j - 1][0] + 1
            i = j
        self._base = base
        self.feedback_sent += len(out)
        return out

    def _build(self, items: list[tuple[int, int]], i: int, j: int, base: int) -> bytes:
        """Serialize the feedback for ``base`` through ``items[j - 1]``'s sequence number."""
        arrivals: list[int | None] = [None] * (items[j - 1][0] - base + 1)
        for seq, at in items[i:j]:
            arrivals[seq - base] = at
        return build_transport_feedback(
            self.sender_ssrc,
            self._media_ssrc,
            base & 0xFFFF,
            self._fb_count,
            items[i][1],
            arrivals,
        ).serialize()


def _segment_end(items: list[tuple[int, int]], i: int, base: int) -> int:
    """One past the last of ``items[i:]`` that one feedback starting at ``base`` can hold.

    The reference time is the first arrival rounded down to 64 ms, and each receive delta is
    rounded to 250 µs against it exactly as :func:`build_transport_feedback` does, so the
    deltas checked here are the ones it will encode.
    """
    origin = items[i][1] // REFERENCE_TICK_US * REFERENCE_TICK_US
    half_tick = DELTA_TICK_US // 2
    last = 0
    j = i
    n = len(items)
    while j < n:
        seq, at = items[j]
        if seq - base >= MAX_STATUS_COUNT:
            break
        ticks = (at - origin + half_tick) // DELTA_TICK_US
        if not _MIN_DELTA <= ticks - last <= _MAX_DELTA:
            break
        last = ticks
        j += 1
    return j
