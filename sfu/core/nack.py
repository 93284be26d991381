"""Receiver-side NACK generation for streams a publisher sends us (RFC 4585 §6.2.1).

The SFU is the receiver of every publisher's streams, so it asks publishers to retransmit what
was lost on their uplink before forwarding gaps to every subscriber. :class:`NackGenerator`
watches the extended sequence numbers of one stream, remembers the holes and says which
sequence numbers to request when; :func:`build_nacks` turns them into RTCP packets.

Timing choices:

* **First request after a short reorder delay** (default 10 ms) rather than immediately.
  Reordering on real uplinks is mostly within a burst (a frame's packets leave the sender
  within a millisecond or two), so a packet that is only late arrives within a few ms; asking
  for it anyway costs the publisher's uplink a useless retransmission exactly when it may be
  congested. 10 ms is small next to any RTT a retransmission needs and next to receivers'
  jitter buffers. ``reorder_delay=0`` gives the immediate behaviour of mediasoup.
* **Repeats every max(RTT, 20 ms)**: sooner than one RTT the retransmission cannot have
  arrived; the 20 ms floor keeps a LAN's tiny RTT from turning into a NACK storm.
* **At most 10 requests** per packet; a packet still missing one interval after its last
  request is given up and counted.
* **At most 1000 outstanding** packets. A forward jump that alone would exceed that resets the
  generator (like libwebrtc after a jump) and raises a keyframe request, since recovery by
  retransmission is hopeless; otherwise the oldest holes are given up to make room.
  Packets older than the newest one are reordered or late arrivals: they only ever clear
  holes, they never move the stream backwards.

Sans-I/O: ``now`` is passed in; :meth:`NackGenerator.next_timer` says when to poll next.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import islice

from sfu.packet.rtcp import Nack, nack_pairs_from_seqs

__all__ = [
    "DEFAULT_MAX_OUTSTANDING",
    "DEFAULT_MAX_REQUESTS",
    "DEFAULT_MIN_INTERVAL",
    "DEFAULT_REORDER_DELAY",
    "MAX_PAIRS_PER_NACK",
    "NackGenerator",
    "build_nacks",
]

DEFAULT_REORDER_DELAY = 0.010  # seconds between detecting a hole and the first request
DEFAULT_MIN_INTERVAL = 0.020  # seconds; lower bound on the spacing of repeated requests
DEFAULT_MAX_REQUESTS = 10  # requests per missing packet before giving up
DEFAULT_MAX_OUTSTANDING = 1000  # missing packets tracked at once (libwebrtc's kMaxNackPackets)
# 64 (PID, BLP) pairs = up to 1088 sequence numbers in a 268-byte packet: small enough to
# share a datagram with a receiver report and SRTCP overhead, large enough that one packet
# covers everything we track in the usual case.
MAX_PAIRS_PER_NACK = 64


class _Missing:
    """A hole: when to request it next and how often it was requested already."""

    __slots__ = ("requests", "send_at")

    def __init__(self, send_at: float) -> None:
        self.send_at = send_at
        self.requests = 0


class NackGenerator:
    """Tracks missing packets of one received stream and schedules their NACKs.

    Feed it every arriving packet with :meth:`on_packet` (extended sequence numbers, e.g.
    from :class:`sfu.packet.seqnum.SequenceUnwrapper`; for RTX packets the original sequence
    number from the RTX payload, with ``is_rtx=True``). Call :meth:`poll` at or after
    :meth:`next_timer` to get the 16-bit sequence numbers to request now. The in-order case
    (the next sequence number) is one comparison and one assignment.
    """

    __slots__ = (
        "_keyframe_wanted",
        "_max_outstanding",
        "_max_requests",
        "_min_interval",
        "_missing",
        "_newest",
        "_next_due",
        "_recovered_ahead",
        "_reorder_delay",
        "given_up",
        "keyframe_requests",
        "recovered",
        "requested",
        "resets",
    )

    def __init__(
        self,
        *,
        reorder_delay: float = DEFAULT_REORDER_DELAY,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        max_requests: int = DEFAULT_MAX_REQUESTS,
        max_outstanding: int = DEFAULT_MAX_OUTSTANDING,
    ) -> None:
        if reorder_delay < 0 or min_interval <= 0:
            raise ValueError("reorder_delay must be >= 0 and min_interval > 0")
        if max_requests < 1 or max_outstanding < 1:
            raise ValueError("max_requests and max_outstanding must be at least 1")
        self._reorder_delay = reorder_delay
        self._min_interval = min_interval
        self._max_requests = max_requests
        self._max_outstanding = max_outstanding
        # Insertion order is ascending sequence order: holes are only ever added above the
        # newest packet, so the first key is always the oldest hole.
        self._missing: dict[int, _Missing] = {}
        # RTX packets that arrived ahead of the newest original (e.g. RTX probing): holes
        # for them are not created when the gap is later seen.
        self._recovered_ahead: set[int] = set()
        self._newest: int | None = None
        self._next_due: float | None = None
        self._keyframe_wanted = False
        self.requested = 0  # sequence numbers returned by poll(), repeats included
        self.recovered = 0  # holes filled by a late or retransmitted packet
        self.given_up = 0  # holes dropped after max_requests, or to make room
        self.resets = 0  # jumps too large to track
        self.keyframe_requests = 0  # times a keyframe request was raised

    @property
    def newest(self) -> int | None:
        """The highest extended sequence number received (not counting RTX ahead of it)."""
        return self._newest

    @property
    def outstanding(self) -> int:
        """Number of holes currently tracked."""
        return len(self._missing)

    def missing(self) -> list[int]:
        """The extended sequence numbers currently tracked as missing, ascending."""
        return list(self._missing)

    def on_packet(self, ext_seq: int, now: float, is_rtx: bool = False) -> None:
        """Account for one arriving packet with extended sequence number ``ext_seq``."""
        newest = self._newest
        if newest is None:
            if not is_rtx:
                self._newest = ext_seq
            return
        d = ext_seq - newest
        if d == 1:  # the common case: next in order (an RTX of it counts the same)
            self._newest = ext_seq
            if self._recovered_ahead:
                self._recovered_ahead.discard(ext_seq)
            return
        if d <= 0:  # late, reordered, duplicate or retransmitted: may fill a hole
            missing = self._missing
            if missing and missing.pop(ext_seq, None) is not None:
                self.recovered += 1
                if not missing:
                    self._next_due = None
            return
        if is_rtx:  # recovered before its hole was even seen
            if len(self._recovered_ahead) < self._max_outstanding:
                self._recovered_ahead.add(ext_seq)
            return
        self._add_gap(newest + 1, ext_seq, now)
        self._newest = ext_seq

    def _add_gap(self, first: int, end: int, now: float) -> None:
        """Record ``first .. end-1`` as missing, keeping within ``max_outstanding``."""
        gap = end - first
        missing = self._missing
        if gap > self._max_outstanding:
            # Too large to recover by retransmission: start over from here.
            self._clear()
            self.resets += 1
            self._request_keyframe()
            return
        excess = len(missing) + gap - self._max_outstanding
        if excess > 0:
            for seq in list(islice(missing, excess)):
                del missing[seq]
            self.given_up += excess
        ahead = self._recovered_ahead
        send_at = now + self._reorder_delay
        if ahead:
            for seq in range(first, end):
                if seq not in ahead:
                    missing[seq] = _Missing(send_at)
            self._recovered_ahead = {s for s in ahead if s > end}
        else:
            for seq in range(first, end):
                missing[seq] = _Missing(send_at)
        if missing and (self._next_due is None or send_at < self._next_due):
            self._next_due = send_at

    def poll(self, now: float, rtt: float) -> list[int]:
        """Return the 16-bit sequence numbers to NACK now (ascending, wrap-aware order).

        ``rtt`` is the current round-trip estimate to the publisher, in seconds.
        """
        due = self._next_due
        if due is None or now < due:
            return []
        interval = max(rtt, self._min_interval)
        max_requests = self._max_requests
        out: list[int] = []
        expired: list[int] = []
        next_due = math.inf
        for seq, entry in self._missing.items():
            if entry.send_at <= now:
                if entry.requests >= max_requests:
                    expired.append(seq)
                    continue
                entry.requests += 1
                entry.send_at = now + interval
                out.append(seq & 0xFFFF)
            if entry.send_at < next_due:
                next_due = entry.send_at
        if expired:
            for seq in expired:
                del self._missing[seq]
            self.given_up += len(expired)
        self._next_due = None if next_due == math.inf else next_due
        self.requested += len(out)
        return out

    def next_timer(self) -> float | None:
        """When :meth:`poll` may next have something to do, or None when nothing is missing.

        May be earlier than necessary after holes were filled; never later.
        """
        return self._next_due

    def take_keyframe_request(self) -> bool:
        """True once after a reset: the caller should send a PLI/FIR to the publisher."""
        wanted = self._keyframe_wanted
        self._keyframe_wanted = False
        return wanted

    def reset(self) -> None:
        """Forget the stream entirely (e.g. the publisher's SSRC restarted)."""
        self._clear()
        self._newest = None

    def _clear(self) -> None:
        self._missing.clear()
        self._recovered_ahead.clear()
        self._next_due = None

    def _request_keyframe(self) -> None:
        self._keyframe_wanted = True
        self.keyframe_requests += 1


def build_nacks(
    sender_ssrc: int,
    media_ssrc: int,
    seqs: Iterable[int],
    max_pairs: int = MAX_PAIRS_PER_NACK,
) -> list[bytes]:
    """Encode ``seqs`` (16-bit, any order) as Generic NACK packets (RFC 4585 §6.2.1).

    Each packet carries at most ``max_pairs`` (PID, BLP) pairs (12 + 4 * max_pairs bytes).
    The packets are plain RTCP feedback packets: the caller sends them in a compound with a
    receiver report, or alone where reduced-size RTCP (RFC 5506) was negotiated.
    """
    if max_pairs < 1:
        raise ValueError("max_pairs must be at least 1")
    pairs = nack_pairs_from_seqs(s & 0xFFFF for s in seqs)
    return [
        Nack(sender_ssrc, media_ssrc, pairs[i : i + max_pairs]).serialize()
        for i in range(0, len(pairs), max_pairs)
    ]
