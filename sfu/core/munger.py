"""Per-subscription RTP munging: one continuous outgoing stream from a changing source.

A subscriber must see a single RTP stream (RFC 3550 §5.1: one SSRC whose sequence numbers go up
by one per packet and whose timestamps follow the sampling clock) even though what the SFU sends
it changes underneath: simulcast layer switches hop between SSRCs with unrelated sequence numbers
and timestamps, temporal layers or paused tracks are dropped on purpose, and packets arrive out
of order. ``RtpMunger`` *decides* the outgoing sequence number and timestamp of each packet
(:meth:`RtpMunger.translate`, a small :class:`~sfu._fastpath.values.TranslationParams`
value); the fast-path kernel ``rewrite_rtp`` then *applies* it to the bytes
(:meth:`RtpMunger.munge` does both).

Everything inside is an extended (64-bit) value (the outgoing sequence starts at ``2**16`` plus
its wire value and the timestamp at ``2**32`` plus its wire value, so late packets never go
negative); the kernel truncates them to 16 and 32 bits on the wire. Sans-I/O: ``now`` (seconds,
any monotonic origin) is passed in. The offset bookkeeping follows the idea of LiveKit's
``rtpmunger.go`` (a sequence-number offset that shrinks by one per deliberately dropped packet,
with a history of dropped ranges for late arrivals) and mediasoup's ``SeqManager``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from sfu._fastpath import KEEP_MARKER, rewrite_rtp
from sfu._fastpath.values import (
    DROP_DROPPED,
    DROP_DUPLICATE,
    DROP_PRE_SWITCH,
    DROP_TOO_OLD,
    REORDER_WINDOW,
    REWIND_LIMIT,
    TranslationParams,
)
from sfu.core.skip_history import SkipHistory

__all__ = ["DROPPED", "REWIND_LIMIT", "RtpMunger", "SkipHistory"]

#: :meth:`RtpMunger.munge` result: the packet is not to be forwarded (nothing was written).
DROPPED = 0

_HEADER = struct.Struct("!xB2xII")  # RFC 3550 §5.1: M/PT, timestamp, SSRC
_SEQ_BASE = 1 << 16
_TS_BASE = 1 << 32
_WINDOW_MASK = (1 << REORDER_WINDOW) - 1


class RtpMunger:
    """Keeps one subscription's outgoing RTP sequence numbers and timestamps continuous.

    * A new source (explicitly with :meth:`switch_source`, or implicitly when a packet comes
      with a different SSRC, or the very first packet) continues at ``last_out_seq + 1``, with
      a timestamp advanced from ``last_out_ts`` by the wall-clock time since the last outgoing
      packet (at least 1 tick), so players see neither a jump nor a stall. The caller switches
      only at a packet it wants to start with (a keyframe of the new layer).
    * :meth:`drop` removes a packet from the outgoing sequence without leaving a hole.
    * Late (reordered, or repaired by the publisher's retransmission) packets of the current
      source land on the outgoing number they would have had; duplicates, packets from before
      the switch and packets older than the known history are dropped.
    * Packets lost upstream leave holes on purpose, so the subscriber can NACK them.

    Inputs may be extended (from ``sfu.packet.seqnum.Unwrapper``) or wire values: each is
    placed next to the newest input of its source, wrap-aware (RFC 3550 §A.1).
    """

    __slots__ = (
        "_active",
        "_clock_rate",
        "_first_in_seq",
        "_hi_in_seq",
        "_hi_in_ts",
        "_initial_seq",
        "_initial_ts",
        "_last_out_seq",
        "_last_out_time",
        "_last_out_ts",
        "_pt_map",
        "_seen",
        "_skips",
        "_sn_offset",
        "_source_ssrc",
        "_ts_offset",
        "duplicates",
        "forwarded",
        "holes",
        "out_ssrc",
        "skipped",
        "switches",
        "too_old",
    )

    def __init__(
        self,
        out_ssrc: int,
        out_payload_type_map: Mapping[int, int] | None = None,
        *,
        clock_rate: int = 90000,
        initial_seq: int | None = None,
        initial_ts: int | None = None,
        history: int = 64,
    ) -> None:
        """``out_payload_type_map`` maps the publisher's payload types to the subscriber's
        (None: unchanged; a type missing from a map is not forwarded). ``initial_seq`` /
        ``initial_ts`` are the first outgoing wire values (RFC 3550 §5.1 wants them random;
        None: those of the first source). ``history`` bounds the runs of dropped packets kept
        for placing late packets."""
        if not 0 <= out_ssrc <= 0xFFFFFFFF:
            raise ValueError("out_ssrc must be a 32-bit value")
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.out_ssrc = out_ssrc
        self._pt_map = None if out_payload_type_map is None else dict(out_payload_type_map)
        self._clock_rate = clock_rate
        self._initial_seq = initial_seq
        self._initial_ts = initial_ts
        self._active = False
        self._source_ssrc: int | None = None
        self._sn_offset = 0
        self._ts_offset = 0
        self._first_in_seq = 0
        self._hi_in_seq = 0
        self._hi_in_ts = 0
        self._seen = 0
        self._skips = SkipHistory(history)
        self._last_out_seq: int | None = None
        self._last_out_ts: int | None = None
        self._last_out_time: float | None = None
        self.forwarded = 0
        """Packets translated for sending."""
        self.skipped = 0
        """Packets removed by :meth:`drop` without a hole in the outgoing sequence."""
        self.holes = 0
        """Packets dropped too late to close their place (:meth:`drop` returned False)."""
        self.duplicates = 0
        """Packets dropped as already forwarded or already dropped."""
        self.too_old = 0
        """Packets dropped as older than the switch or than the known history."""
        self.switches = 0
        """Source switches (the first source included)."""

    # -- state ---------------------------------------------------------------------------

    @property
    def last_out_seq(self) -> int | None:
        """Extended sequence number of the newest outgoing packet (None before the first)."""
        return self._last_out_seq

    @property
    def last_out_ts(self) -> int | None:
        """Extended timestamp of the newest outgoing packet (None before the first)."""
        return self._last_out_ts

    @property
    def source_ssrc(self) -> int | None:
        """SSRC of the current source, when known (implicit switches record it)."""
        return self._source_ssrc

    @property
    def clock_rate(self) -> int:
        """RTP clock rate used to turn elapsed wall-clock time into timestamp ticks."""
        return self._clock_rate

    # -- decisions -----------------------------------------------------------------------

    def switch_source(
        self,
        first_ext_seq: int,
        first_ts: int,
        now: float,
        clock_rate: int | None = None,
        ssrc: int | None = None,
    ) -> None:
        """Start a new source whose first forwarded packet is ``first_ext_seq`` / ``first_ts``.

        That packet will go out as ``last_out_seq + 1`` with timestamp ``last_out_ts`` plus the
        time since the last outgoing packet in clock ticks (at least 1). Packets of the source
        older than it are dropped. Also how a paused subscription resumes (at a keyframe).
        """
        if clock_rate is not None:
            if clock_rate <= 0:
                raise ValueError("clock_rate must be positive")
            self._clock_rate = clock_rate
        last_seq = self._last_out_seq
        last_ts = self._last_out_ts
        if last_seq is None or last_ts is None or self._last_out_time is None:
            seq0 = first_ext_seq if self._initial_seq is None else self._initial_seq
            ts0 = first_ts if self._initial_ts is None else self._initial_ts
            out_seq = _SEQ_BASE + (seq0 & 0xFFFF)
            out_ts = _TS_BASE + (ts0 & 0xFFFFFFFF)
        else:
            out_seq = last_seq + 1
            ticks = round((now - self._last_out_time) * self._clock_rate)
            out_ts = last_ts + max(1, ticks)
        self._sn_offset = out_seq - first_ext_seq
        self._ts_offset = out_ts - first_ts
        self._first_in_seq = first_ext_seq
        self._hi_in_seq = first_ext_seq - 1
        self._hi_in_ts = first_ts
        self._seen = 0
        self._skips.reset(first_ext_seq)
        self._source_ssrc = ssrc
        self._active = True
        self.switches += 1

    def translate(
        self, in_ext_seq: int, in_ts: int, now: float, ssrc: int | None = None
    ) -> TranslationParams:
        """Decide the outgoing sequence number and timestamp of one packet to forward.

        ``ssrc`` (optional) is the packet's source SSRC: a value different from the current
        source's starts a new source at this packet (a source started by :meth:`switch_source`
        without an SSRC adopts the first one it sees). Returns a shared drop value (``drop``
        set) for duplicates, packets from before the switch and packets too old to place.
        """
        switched = False
        if not self._active:
            self.switch_source(in_ext_seq, in_ts, now, ssrc=ssrc)
            switched = True
        elif ssrc is not None and ssrc != self._source_ssrc:
            if self._source_ssrc is None:
                self._source_ssrc = ssrc  # a source started without its SSRC adopts it
            else:
                self.switch_source(in_ext_seq, in_ts, now, ssrc=ssrc)
                switched = True
        hi = self._hi_in_seq
        seq = hi + ((in_ext_seq - hi + 0x8000) & 0xFFFF) - 0x8000
        hts = self._hi_in_ts
        ts = hts + ((in_ts - hts + 0x80000000) & 0xFFFFFFFF) - 0x80000000
        d = seq - hi
        if d > 0:
            self._hi_in_seq = seq
            self._hi_in_ts = ts
            self._seen = ((self._seen << d) | 1) & _WINDOW_MASK
            out_seq = seq + self._sn_offset
            out_ts = ts + self._ts_offset
            self._last_out_seq = out_seq
            last_ts = self._last_out_ts
            if last_ts is None or out_ts > last_ts:
                self._last_out_ts = out_ts
            self._last_out_time = now
            self.forwarded += 1
            return TranslationParams(out_seq, out_ts, False, switched)
        if d == 0:
            self.duplicates += 1
            return DROP_DUPLICATE
        if seq < self._first_in_seq:
            self.too_old += 1
            return DROP_PRE_SWITCH
        if -d >= REORDER_WINDOW:
            self.too_old += 1
            return DROP_TOO_OLD
        bit = 1 << -d
        if self._seen & bit:
            self.duplicates += 1
            return DROP_DUPLICATE
        extra = self._skips.offset_after(seq)
        if extra is None:
            if seq < self._skips.floor:
                self.too_old += 1
                return DROP_TOO_OLD
            self.duplicates += 1
            return DROP_DROPPED
        self._seen |= bit
        self.forwarded += 1
        return TranslationParams(seq + self._sn_offset + extra, ts + self._ts_offset)

    def drop(self, in_ext_seq: int) -> bool:
        """Take a packet deliberately out of the outgoing sequence (temporal layer filtered,
        padding, unknown payload type) so that it leaves no hole.

        Returns True when no hole is left (or the packet was already accounted for), False when
        it came too late: a newer packet already went out past its place, which stays a hole.
        Before any source exists there is nothing to keep continuous (True).
        """
        if not self._active:
            return True
        hi = self._hi_in_seq
        seq = hi + ((in_ext_seq - hi + 0x8000) & 0xFFFF) - 0x8000
        d = seq - hi
        if d > 0:
            self._hi_in_seq = seq
            self._seen = (self._seen << d) & _WINDOW_MASK
            self._skips.skip(seq)
            self._sn_offset -= 1
            self.skipped += 1
            return True
        if seq < self._first_in_seq or -d >= REORDER_WINDOW:
            return True  # never had a place in this source's outgoing sequence
        bit = 1 << -d
        if self._seen & bit or self._skips.offset_after(seq) is None:
            return True  # already forwarded or already dropped: nothing to change
        self._seen |= bit  # a later copy must not fill the hole with stale data
        self.holes += 1
        return False

    def rewind(self, discarded: Iterable[int]) -> int:
        """Take back the newest outgoing numbers that never left: ``discarded`` holds the
        16-bit numbers of packets an egress pacer dropped, and the run of them that ends at
        the newest number is given again, from the next packet forwarded, which starts a
        source. Returns how many numbers were taken back (0: nothing changed).

        Without it the receiver counts every discarded number as lost (RFC 3550 §A.3: a gap in
        the sequence is loss): at a cap, a fifth of the real-client test's video packets. Only
        while no packet of this munger is being forwarded (all video paused or abandoned), so
        the next one is a keyframe that starts a source. Numbers before a gap in the run stay
        lost: one of them may have left (a late packet queued behind newer ones). Their SRTP
        indexes are protected again with new payloads, safe only because the first
        ciphertexts were never sent. At most :data:`REWIND_LIMIT` numbers.
        """
        last = self._last_out_seq
        if last is None:
            return 0
        gone = {seq & 0xFFFF for seq in discarded}
        back = 0
        while back < REWIND_LIMIT and (last - back) & 0xFFFF in gone:
            back += 1
        if back:
            self._last_out_seq = last - back
            self._active = False
        return back

    # -- decide and apply ----------------------------------------------------------------

    def munge(
        self, packet: bytes | bytearray | memoryview, in_ext_seq: int, now: float, dst: bytearray
    ) -> int:
        """Translate ``packet`` and write it, rewritten, into ``dst``.

        SSRC, sequence number, timestamp and payload type (mapped) are replaced by the fast-path
        kernel; a packet with a new SSRC starts a new source. Returns the length written,
        :data:`DROPPED` (0) when the packet is not to be forwarded, or the kernel's negative
        ``MALFORMED`` / ``NO_ROOM``; a packet that fails to be written leaves no hole.
        """
        if len(packet) < 12:
            return -1
        b1, ts, ssrc = _HEADER.unpack_from(packet)
        pt = b1 & 0x7F
        pt_map = self._pt_map
        if pt_map is not None:
            mapped = pt_map.get(pt)
            if mapped is None:
                self.drop(in_ext_seq)
                return DROPPED
            pt = mapped
        params = self.translate(in_ext_seq, ts, now, ssrc)
        if params.drop:
            return DROPPED
        # The extended timestamp goes out modulo 2**32 (RFC 3550 §5.1): a publisher's steps
        # back of almost 2**31 each can walk it below zero, which must not raise here.
        out_ts = params.out_ts & 0xFFFFFFFF
        n = rewrite_rtp(packet, dst, self.out_ssrc, params.out_seq, out_ts, pt, KEEP_MARKER)
        if n < 0 and params.out_seq == self._last_out_seq:
            self._retract_newest()
        return n

    def _retract_newest(self) -> None:
        """Turn the newest forwarded packet, which could not be written, into a dropped one."""
        seq = self._hi_in_seq
        self._seen &= ~1
        self._skips.skip(seq)
        self._sn_offset -= 1
        self._last_out_seq = seq + self._sn_offset
        self.forwarded -= 1
        self.skipped += 1
