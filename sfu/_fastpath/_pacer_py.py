"""Egress pacer of one subscriber transport, pure-Python reference of ``_pacer.pyx``.

A leaky bucket (libwebrtc's ``PacingController`` "media debt"): every packet released adds
its size to a debt that drains at the pacing rate (the caller sets it to a pacing factor
times the bandwidth estimate); paced packets go while the debt is within a short burst
allowance, so a keyframe's burst leaves spread over time instead of at the publisher's own
pace into a small bottleneck queue.

Packets leave in the order they were queued. They carry their transport-wide CC number
already (stamped when forwarded, inside SRTP's authenticated header), and a receiver reports
a number as lost once a higher one arrived before it and a feedback went out in between
(libwebrtc's periodic feedback never reports it later): letting audio or a retransmission
overtake queued video read as 20-80 % loss in the real-client test and collapsed the
estimate. Four classes, each deciding what a packet at the head of the queue needs:

* ``AUDIO``: never waits for the budget (libwebrtc does not pace audio: it is small, steady
  and the most sensitive to delay); its bytes still add to the debt;
* ``PROBE``: padding clusters of the prober go at once, as the cluster the prober shaped,
  and add nothing to the debt (the cluster *is* the measurement of the link);
* ``RETRANSMISSION`` and ``VIDEO``: within the budget.

Priority shows when the queue is full (below). libwebrtc releases audio and retransmissions
first because it numbers packets as they leave; numbering at release here needs SRTP at
release too (a next step).

The queue is bounded in packets and bytes. Drop policy ``DROP_LOWEST_NEWEST``: a packet that
does not fit evicts the newest queued packet of a strictly lower-priority class (the one
with the least decoding value: later packets of a frame are useless without the earlier
ones); if there is none, the arriving packet is dropped. Both are counted. While more is
queued than the rate sends in ``MAX_QUEUE_TIME``, a video or retransmission packet that
waited that long is dropped when it reaches the head (``expired``, counted): when the link
fell under what was queued, sending it late would keep the bottleneck full for longer and
take the audio behind it down too (the real-client test's cap below the lowest layer lost
5 % of its audio while an earlier rule, libwebrtc's, raised the rate to send such a queue
within the limit instead). A keyframe queued behind a layer's steady rate may wait longer
than the limit without expiring, as long as the queue itself leaves within it.

Each packet carries an integer tag returned with it: the transport-wide sequence number it
was stamped with (or -1), so the send history can record when it really left, or that it
never did: a packet the pacer discards (dropped, evicted, expired, cleared) was numbered, and
the receiver reports that number lost; read as the link's loss, the pacer's own expiries
lowered the estimate, which expired more (a 5 %-loss subscriber fell from 1.5 Mbit/s to
340 kbit/s and froze), so the next pop withdraws them from the history. Times are
float seconds; the compiled twin performs the same floating-point operations in the same
order, so both agree exactly (hypothesis checks it).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Final

#: What :meth:`Pacer.push` accepts.
Buffer = bytes | bytearray | memoryview

__all__ = [
    "AUDIO",
    "BURST_TIME",
    "CATCH_UP",
    "CLASSES",
    "EXPIRY_SLACK",
    "MAX_QUEUE_TIME",
    "PROBE",
    "QUEUE_BYTES",
    "QUEUE_PACKETS",
    "RETRANSMISSION",
    "SLACK",
    "VIDEO",
    "WITHDRAWN_CAPACITY",
    "Buffer",
    "Pacer",
]

#: Packet classes, by priority (what a full queue keeps); packets leave in queue order.
AUDIO: Final = 0
PROBE: Final = 1
RETRANSMISSION: Final = 2
VIDEO: Final = 3
CLASSES: Final = 4

#: Seconds of pacing rate that may leave back to back (libwebrtc's 5 ms burst interval):
#: fewer timer wakeups than one per packet, still far below a 50 ms bottleneck queue.
BURST_TIME: Final = 0.005
#: Seconds of rate a backlogged pacer catches up on when it is released late: its owner's
#: timers run on a 20 ms grid (and the media reader releases between), so a pacer that only
#: sent BURST_TIME of rate per wakeup released about half its rate under load (recvmmsg
#: batches grow, wakeups thin out): a viewer paced at 1.3 Mbit/s got 0.6, its 1 Mbit/s layer
#: queued to the expiry limit and froze. Owed time beyond this is forgiven (a stall is not
#: made up with a burst of seconds).
CATCH_UP: Final = 0.02
#: Video and retransmissions that waited longer than this are dropped, not sent: longer than
#: a top-layer keyframe takes at the pacing rate (about 0.3 s for 100 kB at 2.7 Mbit/s), short
#: enough that audio behind a stale queue is not held long.
MAX_QUEUE_TIME: Final = 0.5
#: Seconds past MAX_QUEUE_TIME at which :meth:`Pacer.next_deadline` wakes for an expiry
#: (so rounding cannot make that wakeup find the packet not yet expired).
EXPIRY_SLACK: Final = 1e-6
#: Bounds of the queue of one transport: 256 packets or 384 kB. Half a second (the queue
#: time limit) at 1.5 x a 3 Mbit/s estimate is about 190 packets of 1200 bytes; the slot table
#: is allocated per transport (48 bytes a slot: 12 kB), the packets only while queued.
QUEUE_PACKETS: Final = 256
QUEUE_BYTES: Final = 393216
#: Transport-wide numbers of discarded packets (dropped, evicted, expired, cleared) remembered
#: until the next :meth:`Pacer.pop` with a send history withdraws them there: twice the queue,
#: for the drops of a burst between two releases. Beyond it a discarded packet reads as lost.
WITHDRAWN_CAPACITY: Final = 512
#: Bytes of debt forgiven when a packet is released (deadlines aim at the allowance itself),
#: so rounding at a deadline from :meth:`Pacer.next_deadline` cannot leave the packet waiting
#: for another wakeup.
SLACK: Final = 1.0


class Pacer:
    """Leaky-bucket egress pacer with four priority classes and a bounded queue."""

    def __init__(self, max_packets: int = QUEUE_PACKETS, max_bytes: int = QUEUE_BYTES) -> None:
        if max_packets <= 0 or max_bytes <= 0:
            raise ValueError("max_packets and max_bytes must be positive")
        self._max_packets = max_packets
        self._max_bytes = max_bytes
        self._queues: list[deque[tuple[bytes, int, float, int]]] = [deque() for _ in range(CLASSES)]
        self._order = 0  # push counter: the release order across classes
        self._packets = 0
        self._bytes = 0
        self._rate = 0.0  # bytes per second; 0: unpaced
        self._debt = 0.0
        self._last = 0.0
        self.sent_packets = 0
        self.sent_bytes = 0
        self.dropped = 0  # arriving packets that did not fit
        self.evicted = 0  # queued packets pushed out by a higher class
        self.expired = 0  # video and retransmissions that waited past MAX_QUEUE_TIME
        self._withdrawn: list[int] = []  # tags of numbered packets discarded since the last pop
        self._backlog = False  # packets were left waiting at the last pop
        self._delay_count = 0
        self._delay_sum = 0.0
        self._delay_max = 0.0

    @property
    def rate_bps(self) -> float:
        """The pacing rate (bits per second); 0 while unpaced."""
        return self._rate * 8.0

    @property
    def withdrawn_pending(self) -> int:
        """Numbered packets discarded since the last pop with a history."""
        return len(self._withdrawn)

    @property
    def queued_packets(self) -> int:
        return self._packets

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def set_rate(self, bps: float, now: float) -> None:
        """Pace at ``bps`` from ``now`` on (0 or less: release everything at once)."""
        self._drain(now)
        self._rate = bps / 8.0 if bps > 0.0 else 0.0

    def push(self, packet: Buffer, cls: int, tag: int, now: float) -> bool:
        """Queue ``packet`` of class ``cls``; False when it was dropped (queue full)."""
        if not 0 <= cls < CLASSES:
            raise ValueError("unknown packet class")
        size = len(packet)
        if size > self._max_bytes:
            self.dropped += 1
            self._discard(tag)
            return False
        while self._packets >= self._max_packets or self._bytes + size > self._max_bytes:
            if not self._evict_below(cls):
                self.dropped += 1
                self._discard(tag)
                return False
        self._queues[cls].append((bytes(packet), tag, now, self._order))
        self._order += 1
        self._packets += 1
        self._bytes += size
        return True

    def pop(self, now: float, history: Any = None) -> list[tuple[bytes, int]]:
        """The packets due at ``now``, in queue order: (packet, tag). With a send history
        (``_bwe_py.SendHistory``), a packet whose tag is not negative is its transport-wide
        sequence number, and its send time there becomes ``now`` (when it really left); the
        numbered packets discarded since the last such pop are withdrawn from it (they never
        left: the receiver's report of them as lost says nothing about the link)."""
        self._drain(now)
        out: list[tuple[bytes, int]] = []
        queues = self._queues
        while self._packets:
            cls = -1
            for i in range(CLASSES):
                if queues[i] and (cls < 0 or queues[i][0][3] < queues[cls][0][3]):
                    cls = i
            if (
                cls > PROBE
                and now - queues[cls][0][2] >= MAX_QUEUE_TIME
                and self._bytes > self._rate * MAX_QUEUE_TIME
            ):
                packet, tag, _, _ = queues[cls].popleft()
                self._packets -= 1
                self._bytes -= len(packet)
                self.expired += 1
                self._discard(tag)
                continue
            if cls > PROBE and self._rate > 0.0 and self._debt > self._rate * BURST_TIME + SLACK:
                break
            packet, tag, queued, _ = queues[cls].popleft()
            size = len(packet)
            self._packets -= 1
            self._bytes -= size
            if cls != PROBE:
                self._debt += size
            self.sent_packets += 1
            self.sent_bytes += size
            delay = now - queued
            self._delay_count += 1
            self._delay_sum += delay
            if delay > self._delay_max:
                self._delay_max = delay
            if history is not None and tag >= 0:
                history.restamp(tag, now)
            out.append((packet, tag))
        self._backlog = self._packets > 0
        if history is not None:
            for tag in self._withdrawn:
                history.withdraw(tag & 0xFFFF)
            self._withdrawn.clear()
        return out

    def next_deadline(self, now: float) -> float | None:
        """When :meth:`pop` next releases something (``now`` if at once); None when empty."""
        if not self._packets:
            return None
        if self._rate <= 0.0:
            return now
        queues = self._queues
        cls = -1
        for i in range(CLASSES):
            if queues[i] and (cls < 0 or queues[i][0][3] < queues[cls][0][3]):
                cls = i
        if cls <= PROBE:
            return now
        rate = self._rate
        expiry = queues[cls][0][2] + MAX_QUEUE_TIME + EXPIRY_SLACK
        if self._bytes <= rate * MAX_QUEUE_TIME:
            expiry = math.inf  # the queue leaves within the limit: nothing expires
        elif expiry <= now:
            return now
        debt = self._debt - (now - self._last) * rate
        excess = debt - rate * BURST_TIME
        if excess <= 0.0:
            return now
        due = now + excess / rate
        return expiry if expiry < due else due

    def take_delays(self) -> tuple[int, float, float]:
        """(packets, total seconds, longest seconds) queued since the last call."""
        stats = (self._delay_count, self._delay_sum, self._delay_max)
        self._delay_count = 0
        self._delay_sum = 0.0
        self._delay_max = 0.0
        return stats

    def queued_seqs(self, min_class: int = 0) -> dict[int, list[int]]:
        """Per SSRC, the RTP sequence numbers of the queued packets of class ``min_class`` or
        lower priority, in queue order: what :meth:`clear` would discard, for the stream's
        numbering to be taken back (``RtpMunger.rewind``)."""
        if not 0 <= min_class < CLASSES:
            raise ValueError("unknown packet class")
        seqs: dict[int, list[int]] = {}
        for queue in self._queues[min_class:]:
            for packet in queue:
                data = packet[0]
                if len(data) >= 12:
                    ssrc = int.from_bytes(data[8:12], "big")
                    seqs.setdefault(ssrc, []).append((data[2] << 8) | data[3])
        return seqs

    def clear(self, min_class: int = 0) -> int:
        """Drop every queued packet of class ``min_class`` or lower priority (0: everything,
        the transport closed); returns how many packets. With ``RETRANSMISSION``: the video
        of a transport whose allocation paused all of it (sending it late into a link that
        cannot carry the lowest layer takes the audio behind it down)."""
        if not 0 <= min_class < CLASSES:
            raise ValueError("unknown packet class")
        dropped = 0
        for queue in self._queues[min_class:]:
            for packet in queue:
                self._bytes -= len(packet[0])
                self._discard(packet[1])
            dropped += len(queue)
            queue.clear()
        self._packets -= dropped
        if not self._packets:
            self._backlog = False
        return dropped

    # -- internals ----------------------------------------------------------------------------

    def _drain(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0.0:
            if self._rate > 0.0:
                self._debt -= elapsed * self._rate
                # Idle, the debt stops at zero; if packets were left waiting at the last
                # pop, what a late wakeup could not send is owed, up to CATCH_UP of rate.
                floor = -self._rate * CATCH_UP if self._backlog else 0.0
                if self._debt < floor:
                    self._debt = floor
            else:
                self._debt = 0.0
            self._last = now

    def _discard(self, tag: int) -> None:
        """A numbered packet was discarded: remembered for the next pop to withdraw."""
        if tag >= 0 and len(self._withdrawn) < WITHDRAWN_CAPACITY:
            self._withdrawn.append(tag)

    def _evict_below(self, cls: int) -> bool:
        """Drop the newest packet of the lowest class below ``cls``; False if none."""
        lowest = CLASSES - 1
        while lowest > cls:
            queue = self._queues[lowest]
            if queue:
                packet, tag, _, _ = queue.pop()
                self._discard(tag)
                self._packets -= 1
                self._bytes -= len(packet)
                self.evicted += 1
                return True
            lowest -= 1
        return False
