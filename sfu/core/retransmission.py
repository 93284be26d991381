"""Sender-side retransmission support: a packet cache per source stream and a resend guard.

An SFU answers a subscriber's Generic NACK (RFC 4585 §6.2.1) itself, from packets it has
already forwarded, and sends them again (usually on the RTX stream, RFC 4588 §4) instead of
passing the NACK upstream. :class:`RetransmissionBuffer` keeps the recent packets of one source
SSRC; :class:`RetransmissionThrottle` stops a subscriber that repeats its NACKs from getting the
same packet more than once per round trip.

Both are sans-I/O: every call that depends on time takes ``now`` (seconds, any monotonic
origin) and nothing here reads a clock.
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import numpy.typing as npt

from sfu._fastpath.values import CACHE_CAPACITY, CACHE_MAX_AGE, CACHE_MAX_SIZE, check_power_of_two

Buffer: TypeAlias = bytes | bytearray | memoryview  # byte-oriented buffers (itemsize 1)

__all__ = [
    "DEFAULT_RTT",
    "MIN_RTT",
    "RTX_BURST",
    "RTX_SHARE",
    "RetransmissionBudget",
    "RetransmissionBuffer",
    "RetransmissionThrottle",
]

DEFAULT_RTT = 0.050  # seconds, until the caller has a measured round-trip time
MIN_RTT = 0.010  # seconds; below this a "repeat" NACK is more likely a duplicate than a retry
#: Share of a transport's bandwidth estimate retransmissions may use. On a congested link the
#: NACKs multiply with the loss; resending without a bound turns loss into more loss (the
#: issue measured 2.4-3.3 resends per original packet into a capped link). 0.2 keeps repairs
#: possible while media keeps most of the link.
RTX_SHARE = 0.2
#: Seconds of that rate the budget may save up: a burst of losses as large as a keyframe
#: (a socket buffer overflowing on a starved receiver loses dozens of packets at once) can
#: still be repaired, where a freeze until the next keyframe would cost more.
RTX_BURST = 1.0


class RetransmissionBuffer:
    """Ring of the last ``capacity`` packets of one source stream, indexed by extended seq.

    Storage is allocated once: one ``uint8`` array of ``capacity x max_size`` bytes for the
    packets plus per-slot lengths (int32), extended sequence numbers (int64, ``-1`` = empty)
    and insertion times (float64). Memory is therefore ``capacity * (max_size + 20)`` bytes,
    about 1.5 MiB for the defaults (1024 x 1500); see :attr:`memory_bytes`. Slot ``i`` holds
    the packet whose extended sequence number ``s`` has ``s & (capacity - 1) == i``, so a
    lookup is one index and one comparison, and wrap of the 16-bit wire value never matters.

    The hot path (:meth:`put`, once per forwarded packet) copies the bytes into the slot and
    writes three scalars through memoryviews of the arrays (cheaper than numpy scalar
    indexing); it allocates nothing.
    """

    __slots__ = (
        "_capacity",
        "_data",
        "_lengths",
        "_lengths_mv",
        "_mask",
        "_max_age",
        "_max_size",
        "_newest",
        "_seqs",
        "_seqs_mv",
        "_times",
        "_times_mv",
        "_view",
        "hits",
        "misses",
        "stored",
        "too_large",
        "too_old",
    )

    def __init__(
        self,
        capacity: int = CACHE_CAPACITY,
        max_size: int = CACHE_MAX_SIZE,
        max_age: float = CACHE_MAX_AGE,
    ) -> None:
        check_power_of_two("capacity", capacity)
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._capacity = capacity
        self._mask = capacity - 1
        self._max_size = max_size
        self._max_age = max_age
        self._data: npt.NDArray[np.uint8] = np.zeros((capacity, max_size), dtype=np.uint8)
        self._lengths: npt.NDArray[np.int32] = np.zeros(capacity, dtype=np.int32)
        self._seqs: npt.NDArray[np.int64] = np.full(capacity, -1, dtype=np.int64)
        self._times: npt.NDArray[np.float64] = np.zeros(capacity, dtype=np.float64)
        # Flat byte view of the packet store and scalar views of the columns: slicing and
        # item access on a memoryview return plain Python objects without numpy's overhead.
        self._view: memoryview[int] = self._data.reshape(-1).data
        self._lengths_mv: memoryview[int] = self._lengths.data
        self._seqs_mv: memoryview[int] = self._seqs.data
        self._times_mv: memoryview[float] = self._times.data.cast("B").cast("d")
        self._newest = -1
        self.stored = 0  # packets copied in
        self.too_large = 0  # packets longer than max_size, not stored
        self.too_old = 0  # late packets whose slot already holds a newer one, not stored
        self.hits = 0  # get() calls that found the packet
        self.misses = 0  # get() calls that did not (never stored, overwritten, or too old)

    @property
    def capacity(self) -> int:
        """Number of packet slots."""
        return self._capacity

    @property
    def max_size(self) -> int:
        """Largest packet, in bytes, that is stored."""
        return self._max_size

    @property
    def max_age(self) -> float:
        """Seconds after insertion beyond which :meth:`get` no longer returns a packet."""
        return self._max_age

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the preallocated arrays (packets, lengths, seqs, times)."""
        return int(
            self._data.nbytes + self._lengths.nbytes + self._seqs.nbytes + self._times.nbytes
        )

    @property
    def newest(self) -> int | None:
        """Highest extended sequence number stored since the last :meth:`clear`, if any.

        A caller holding only a 16-bit sequence number can place it near this value.
        """
        return None if self._newest < 0 else self._newest

    def put(self, packet: Buffer, ext_seq: int, now: float) -> None:
        """Store a copy of ``packet`` (a whole RTP packet) under extended seq ``ext_seq``.

        Packets longer than :attr:`max_size` are counted in :attr:`too_large` and dropped. A
        late packet whose slot already holds a newer sequence number is counted in
        :attr:`too_old` and dropped, so reordering never evicts fresher data. Storing the
        same ``ext_seq`` again replaces the earlier copy.
        """
        n = len(packet)
        if n > self._max_size:
            self.too_large += 1
            return
        if ext_seq < 0:
            raise ValueError("extended sequence numbers are non-negative")
        idx = ext_seq & self._mask
        seqs = self._seqs_mv
        if seqs[idx] > ext_seq:
            self.too_old += 1
            return
        off = idx * self._max_size
        self._view[off : off + n] = packet
        self._lengths_mv[idx] = n
        seqs[idx] = ext_seq
        self._times_mv[idx] = now
        if ext_seq > self._newest:
            self._newest = ext_seq
        self.stored += 1

    def get(self, ext_seq: int, now: float) -> memoryview | None:
        """Return the stored packet for ``ext_seq``, or None if absent, overwritten or stale.

        The result is a view into the ring, not a copy: it is valid until a later
        :meth:`put` reuses the slot (``capacity`` packets later) or :meth:`clear`, so send or
        rewrite it before storing more packets of this stream.
        """
        if ext_seq < 0:
            self.misses += 1
            return None
        idx = ext_seq & self._mask
        if self._seqs_mv[idx] != ext_seq or now - self._times_mv[idx] > self._max_age:
            self.misses += 1
            return None
        self.hits += 1
        off = idx * self._max_size
        return self._view[off : off + self._lengths_mv[idx]]

    def clear(self) -> None:
        """Forget every stored packet (the counters are cumulative and kept)."""
        self._seqs.fill(-1)
        self._lengths.fill(0)
        self._newest = -1


class RetransmissionThrottle:
    """Per (subscriber, source SSRC) guard: resend a sequence number at most once per RTT.

    A receiver repeats a NACK when it has not seen the retransmission after about one round
    trip (RFC 4585 §3.2 leaves the timing to it), but NACKs are also duplicated by
    aggressive receivers and by a NACK arriving while the first resend is still in flight.
    Resending within one RTT only adds load. State is a fixed ring of ``capacity`` slots
    indexed by ``seq & (capacity - 1)``, so memory is bounded whatever the peer sends; a
    record is forgotten early only when a sequence number ``capacity`` apart reuses its slot.

    ``seq`` may be extended or 16-bit, as long as one throttle sees one kind.
    """

    __slots__ = ("_mask", "_rtt", "_seqs", "_times", "allowed", "throttled")

    def __init__(self, rtt: float = DEFAULT_RTT, capacity: int = CACHE_CAPACITY) -> None:
        check_power_of_two("capacity", capacity)
        self._mask = capacity - 1
        # Plain lists: item access is cheaper than numpy scalars, and the size never changes.
        self._seqs: list[int] = [-1] * capacity
        self._times: list[float] = [0.0] * capacity
        self._rtt = max(rtt, MIN_RTT)
        self.allowed = 0  # resends permitted
        self.throttled = 0  # resends refused as repeats within one RTT

    @property
    def rtt(self) -> float:
        """The RTT estimate in use (never below :data:`MIN_RTT`)."""
        return self._rtt

    def update_rtt(self, rtt: float) -> None:
        """Use a new round-trip estimate (seconds), clamped to at least :data:`MIN_RTT`."""
        self._rtt = max(rtt, MIN_RTT)

    def allow(self, seq: int, now: float, hold: float = 0.0) -> bool:
        """True (and remember) if ``seq`` was not resent within the last RTT. ``hold``: how
        long this resend waits before it leaves (an egress pacer's queue), during which a
        repeated NACK is a duplicate too: a receiver on a short round trip repeats its NACK
        every few milliseconds (libwebrtc up to ten times), and answering each of those while
        the first resend was still queued spent the retransmission budget on copies until
        the repairs that mattered were refused (a keyframe never completed)."""
        idx = seq & self._mask
        if self._seqs[idx] == seq and now - self._times[idx] < self._rtt:
            self.throttled += 1
            return False
        self._seqs[idx] = seq
        self._times[idx] = now + max(hold, 0.0)
        self.allowed += 1
        return True

    def clear(self) -> None:
        """Forget every resend record (for example after the subscriber's stream restarts)."""
        for i in range(len(self._seqs)):
            self._seqs[i] = -1


class RetransmissionBudget:
    """Token bucket of one subscriber transport for retransmissions, fed by the estimate.

    :meth:`set_rate` follows the transport's bandwidth estimate (the caller passes
    ``RTX_SHARE`` x the estimate); :meth:`allow` takes a resend's bits when the bucket holds
    them and refuses (and counts) it otherwise. Sans-I/O: time comes in as ``now``.
    """

    __slots__ = ("_last", "_rate", "_tokens", "dropped", "sent")

    def __init__(self, rate_bps: float = 0.0) -> None:
        self._rate = max(rate_bps, 0.0)
        self._tokens = self._rate * RTX_BURST
        self._last: float | None = None
        #: Resends allowed and refused for the budget.
        self.sent = 0
        self.dropped = 0

    @property
    def rate_bps(self) -> float:
        """The refill rate in use."""
        return self._rate

    def set_rate(self, rate_bps: float, now: float) -> None:
        """Refill at ``rate_bps`` from ``now`` on (the first rate also fills the bucket)."""
        if self._last is None:
            if self._rate == 0.0:
                self._tokens = max(rate_bps, 0.0) * RTX_BURST
            self._last = now
        else:
            self._refill(now)
        self._rate = max(rate_bps, 0.0)

    def _refill(self, now: float) -> None:
        last = self._last
        if last is not None and now > last:
            self._tokens = min(self._tokens + (now - last) * self._rate, self._rate * RTX_BURST)
        if last is None or now > last:
            self._last = now

    def allow(self, bits: int, now: float) -> bool:
        """Take ``bits`` for one resend at ``now`` if the budget holds them."""
        self._refill(now)
        if self._tokens >= bits:
            self._tokens -= bits
            self.sent += 1
            return True
        self.dropped += 1
        return False
