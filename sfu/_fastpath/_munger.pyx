# cython: language_level=3
"""Compiled RTP munger: ``sfu.core.munger.RtpMunger`` (and its ``SkipHistory``) with the state in a
C struct, so the forwarding engine can translate and rewrite packets without the GIL (see
``_munger.pxd``).

The Python classes have the reference's exact API and behaviour (the differential tests prove
it). Differences, all outside any real stream: extended sequence numbers, timestamps and SSRCs
are signed 64-bit (Python ints beyond raise OverflowError; results are exact within +-2**62), and
a SkipHistory keeps at most 256 runs (a larger ``limit``/``history`` raises ValueError).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.math cimport nearbyint
from libc.stdint cimport int16_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memset

from sfu._fastpath._rewrite cimport rtp_rewrite, rtp_rewrite_view
from sfu._fastpath._rtp cimport rtp_parse, rtp_view_t

from sfu._fastpath.values import (
    DROP_DROPPED,
    DROP_DUPLICATE,
    DROP_PRE_SWITCH,
    DROP_TOO_OLD,
    REORDER_WINDOW,
    REWIND_LIMIT,
    TranslationParams,
)

__all__ = ["RtpMunger", "SkipHistory", "munge_nogil"]

cdef long long _SEQ_BASE = 1LL << 16
cdef long long _TS_BASE = 1LL << 32
cdef double _MAX_TICKS = <double>(1LL << 62)
cdef long long _REWIND_LIMIT = REWIND_LIMIT

# Results of _translate: > 0 forward, < 0 drop (the reason).
cdef enum:
    _FORWARD = 1
    _FORWARD_SWITCHED = 2
    _FORWARD_LATE = 3
    _DROP_DUPLICATE = -1
    _DROP_TOO_OLD = -2
    _DROP_PRE_SWITCH = -3
    _DROP_DROPPED = -4

# The reference's decision type and shared drop answers (sfu._fastpath.values, a leaf).
cdef dict _DROPS = {
    _DROP_DUPLICATE: DROP_DUPLICATE,
    _DROP_TOO_OLD: DROP_TOO_OLD,
    _DROP_PRE_SWITCH: DROP_PRE_SWITCH,
    _DROP_DROPPED: DROP_DROPPED,
}
assert REORDER_WINDOW == MUNGER_WINDOW, "_munger.pxd is out of date"


# -- SkipHistory: a ring of [start, end) runs ------------------------------------------------

cdef inline void _skips_reset(skiphist_t* h, long long floor) noexcept nogil:
    """Forget every run; inputs below ``floor`` are unknown from now on."""
    h.head = 0
    h.count = 0
    h.floor = floor


cdef inline void _skips_skip(skiphist_t* h, long long x) noexcept nogil:
    """Record that input ``x`` (above every input recorded so far) is skipped."""
    cdef int idx
    if h.count:
        idx = (h.head + h.count - 1) & (MUNGER_MAX_HISTORY - 1)
        if h.ends[idx] == x:
            h.ends[idx] = x + 1
            return
        if h.count == h.limit:  # the oldest run falls off: its end becomes the floor
            h.floor = h.ends[h.head]
            h.head = (h.head + 1) & (MUNGER_MAX_HISTORY - 1)
            h.count -= 1
    idx = (h.head + h.count) & (MUNGER_MAX_HISTORY - 1)
    h.starts[idx] = x
    h.ends[idx] = x + 1
    h.count += 1


cdef inline long long _skips_offset_after(const skiphist_t* h, long long x) noexcept nogil:
    """How many recorded skipped inputs are above ``x``; -1 if ``x`` was skipped or is below
    the floor."""
    cdef long long n = 0
    cdef int i, idx
    if x < h.floor:
        return -1
    i = h.count - 1
    while i >= 0:
        idx = (h.head + i) & (MUNGER_MAX_HISTORY - 1)
        if h.ends[idx] <= x:
            break
        if h.starts[idx] <= x:
            return -1
        n += h.ends[idx] - h.starts[idx]
        i -= 1
    return n


cdef int _check_limit(object limit) except -1:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if limit > MUNGER_MAX_HISTORY:
        raise ValueError(f"limit must be at most {MUNGER_MAX_HISTORY}")
    return 0


cdef class SkipHistory:
    """A bounded history of input values deliberately skipped, to place late inputs correctly.

    Same contract as ``sfu.core.munger.SkipHistory``, for ``limit`` up to 256.
    """

    def __init__(self, limit=64):
        _check_limit(limit)
        self.h.limit = limit
        _skips_reset(&self.h, 0)

    def reset(self, long long floor):
        """Forget every run; inputs below ``floor`` are unknown from now on."""
        _skips_reset(&self.h, floor)

    @property
    def floor(self):
        """The lowest input whose offset is still known."""
        return self.h.floor

    @property
    def runs(self):
        """The kept ``[start, end)`` runs of skipped inputs, oldest first (a copy)."""
        cdef int i, idx
        out = []
        for i in range(self.h.count):
            idx = (self.h.head + i) & (MUNGER_MAX_HISTORY - 1)
            out.append((self.h.starts[idx], self.h.ends[idx]))
        return out

    def skip(self, long long x):
        """Record that input ``x`` (above every input recorded so far) is skipped."""
        _skips_skip(&self.h, x)

    def offset_after(self, long long x):
        """How many recorded skipped inputs are above ``x``; None if ``x`` itself was skipped
        or lies below the floor (its offset is no longer known)."""
        cdef long long n = _skips_offset_after(&self.h, x)
        return None if n < 0 else n


# -- the 512-bit duplicate window ------------------------------------------------------------

cdef inline void _seen_shift(uint64_t* w, long long d) noexcept nogil:
    """``w = (w << d) & (2**512 - 1)`` for ``d > 0`` (bit k of the window is bit k % 64 of
    word k // 64)."""
    cdef int i, j, q, r
    cdef uint64_t v
    if d >= MUNGER_WINDOW:
        memset(w, 0, MUNGER_WINDOW_WORDS * sizeof(uint64_t))
        return
    q = <int>(d >> 6)
    r = <int>(d & 63)
    i = MUNGER_WINDOW_WORDS - 1
    while i >= 0:
        j = i - q
        if j < 0:
            w[i] = 0
        else:
            v = w[j] << r
            if r and j > 0:
                v |= w[j - 1] >> (64 - r)
            w[i] = v
        i -= 1


cdef inline bint _seen_test(const uint64_t* w, long long k) noexcept nogil:
    return (w[k >> 6] >> (k & 63)) & 1


cdef inline void _seen_set(uint64_t* w, long long k) noexcept nogil:
    w[k >> 6] |= (<uint64_t>1) << (k & 63)


# -- the munger -------------------------------------------------------------------------------

cdef inline long long _near(long long hi, long long x, uint64_t mask, long long half) noexcept nogil:
    """``x`` placed next to ``hi``, wrap-aware: ``hi + ((x - hi + half) & mask) - half``."""
    return hi + <long long>((<uint64_t>(x - hi + half)) & mask) - half


cdef void _switch(
    munger_t* m, long long first_ext_seq, long long first_ts, double now, long long ssrc,
    bint has_ssrc,
) noexcept nogil:
    """The reference's ``switch_source`` (the clock rate already applied)."""
    cdef long long seq0, ts0, out_seq, out_ts, ticks
    cdef double t
    if not (m.has_last_out_seq and m.has_last_out_ts and m.has_last_out_time):
        seq0 = m.initial_seq if m.has_initial_seq else first_ext_seq
        ts0 = m.initial_ts if m.has_initial_ts else first_ts
        out_seq = _SEQ_BASE + <long long>(<uint64_t>seq0 & 0xFFFF)
        out_ts = _TS_BASE + <long long>(<uint64_t>ts0 & 0xFFFFFFFFULL)
    else:
        out_seq = m.last_out_seq + 1
        # Python's round() rounds half to even, as nearbyint does in the default rounding mode.
        t = nearbyint((now - m.last_out_time) * <double>m.clock_rate)
        if not t >= 1.0:
            ticks = 1
        elif t > _MAX_TICKS:
            ticks = <long long>_MAX_TICKS
        else:
            ticks = <long long>t
        out_ts = m.last_out_ts + ticks
    m.sn_offset = out_seq - first_ext_seq
    m.ts_offset = out_ts - first_ts
    m.first_in_seq = first_ext_seq
    m.hi_in_seq = first_ext_seq - 1
    m.hi_in_ts = first_ts
    memset(m.seen, 0, sizeof(m.seen))
    _skips_reset(&m.skips, first_ext_seq)
    m.has_source_ssrc = has_ssrc
    m.source_ssrc = ssrc if has_ssrc else 0
    m.active = True
    m.switches += 1


cdef int _translate(
    munger_t* m, long long in_ext_seq, long long in_ts, double now, long long ssrc,
    bint has_ssrc, long long* out_seq, long long* out_ts,
) noexcept nogil:
    """The reference's ``translate``: > 0 forward with ``out_seq``/``out_ts`` set, < 0 drop."""
    cdef bint switched = False
    cdef long long hi, seq, ts, d, extra
    if not m.active:
        _switch(m, in_ext_seq, in_ts, now, ssrc, has_ssrc)
        switched = True
    elif has_ssrc and not (m.has_source_ssrc and ssrc == m.source_ssrc):
        if not m.has_source_ssrc:
            m.has_source_ssrc = True  # a source started without its SSRC adopts it
            m.source_ssrc = ssrc
        else:
            _switch(m, in_ext_seq, in_ts, now, ssrc, True)
            switched = True
    hi = m.hi_in_seq
    seq = _near(hi, in_ext_seq, 0xFFFF, 0x8000)
    ts = _near(m.hi_in_ts, in_ts, 0xFFFFFFFFULL, 0x80000000LL)
    d = seq - hi
    if d > 0:
        m.hi_in_seq = seq
        m.hi_in_ts = ts
        _seen_shift(m.seen, d)
        m.seen[0] |= 1
        out_seq[0] = seq + m.sn_offset
        out_ts[0] = ts + m.ts_offset
        m.has_last_out_seq = True
        m.last_out_seq = out_seq[0]
        if not m.has_last_out_ts or out_ts[0] > m.last_out_ts:
            m.has_last_out_ts = True
            m.last_out_ts = out_ts[0]
        m.has_last_out_time = True
        m.last_out_time = now
        m.forwarded += 1
        return _FORWARD_SWITCHED if switched else _FORWARD
    if d == 0:
        m.duplicates += 1
        return _DROP_DUPLICATE
    if seq < m.first_in_seq:
        m.too_old += 1
        return _DROP_PRE_SWITCH
    if -d >= MUNGER_WINDOW:
        m.too_old += 1
        return _DROP_TOO_OLD
    if _seen_test(m.seen, -d):
        m.duplicates += 1
        return _DROP_DUPLICATE
    extra = _skips_offset_after(&m.skips, seq)
    if extra < 0:
        if seq < m.skips.floor:
            m.too_old += 1
            return _DROP_TOO_OLD
        m.duplicates += 1
        return _DROP_DROPPED
    _seen_set(m.seen, -d)
    m.forwarded += 1
    out_seq[0] = seq + m.sn_offset + extra
    out_ts[0] = ts + m.ts_offset
    return _FORWARD_LATE


cdef bint munger_drop(munger_t* m, long long in_ext_seq) noexcept nogil:
    """The reference's ``drop``: True when no hole is left, False when it came too late."""
    cdef long long hi, seq, d
    if not m.active:
        return True
    hi = m.hi_in_seq
    seq = _near(hi, in_ext_seq, 0xFFFF, 0x8000)
    d = seq - hi
    if d > 0:
        m.hi_in_seq = seq
        _seen_shift(m.seen, d)
        _skips_skip(&m.skips, seq)
        m.sn_offset -= 1
        m.skipped += 1
        return True
    if seq < m.first_in_seq or -d >= MUNGER_WINDOW:
        return True  # never had a place in this source's outgoing sequence
    if _seen_test(m.seen, -d) or _skips_offset_after(&m.skips, seq) < 0:
        return True  # already forwarded or already dropped: nothing to change
    _seen_set(m.seen, -d)  # a later copy must not fill the hole with stale data
    m.holes += 1
    return False


cdef void munger_switch_source(munger_t* m, long long first_ext_seq, long long first_ts,
                               double now, long long ssrc) noexcept nogil:
    """The reference's ``switch_source`` without a clock-rate change (``ssrc`` < 0: None)."""
    _switch(m, first_ext_seq, first_ts, now, ssrc, ssrc >= 0)


cdef bint munger_last_out_seq(const munger_t* m, long long* out) noexcept nogil:
    """Store the newest outgoing extended sequence number in ``out``; False before the first."""
    if not m.has_last_out_seq:
        return False
    out[0] = m.last_out_seq
    return True


cdef inline void _retract_newest(munger_t* m) noexcept nogil:
    """Turn the newest forwarded packet, which could not be written, into a dropped one."""
    cdef long long seq = m.hi_in_seq
    m.seen[0] &= ~(<uint64_t>1)
    _skips_skip(&m.skips, seq)
    m.sn_offset -= 1
    m.has_last_out_seq = True
    m.last_out_seq = seq + m.sn_offset
    m.forwarded -= 1
    m.skipped += 1


cdef inline uint32_t _be32(const unsigned char* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef Py_ssize_t munger_munge_view(munger_t* m, const rtp_view_t* v, const unsigned char* packet,
                                  long long in_ext_seq, double now,
                                  unsigned char* dst, Py_ssize_t dst_len) noexcept nogil:
    """The reference's ``munge`` of ``packet``, parsed into ``v`` (any parse result): translate
    it and write it, rewritten, into ``dst``."""
    cdef int pt
    cdef long long out_seq = 0, out_ts = 0
    cdef Py_ssize_t written
    if v.size < 12:
        return MUNGER_MALFORMED
    pt = v.payload_type
    if m.has_pt_map:
        pt = m.pt_map[pt]
        if pt == MUNGER_PT_DROP:
            munger_drop(m, in_ext_seq)
            return 0
    if _translate(m, in_ext_seq, v.timestamp, now, v.ssrc, True, &out_seq, &out_ts) < 0:
        return 0  # a duplicate or a drop: the reference decides this before writing
    if pt == MUNGER_PT_INVALID:
        return MUNGER_MALFORMED  # where the reference's write raises
    written = rtp_rewrite_view(
        v, packet, dst, dst_len, m.out_ssrc, <uint64_t>out_seq, <uint64_t>out_ts, pt, -1
    )
    if written < 0 and m.has_last_out_seq and out_seq == m.last_out_seq:
        _retract_newest(m)
    return written


cdef Py_ssize_t munger_munge(munger_t* m, const unsigned char* packet, Py_ssize_t n,
                             long long in_ext_seq, double now,
                             unsigned char* dst, Py_ssize_t dst_len) noexcept nogil:
    """The reference's ``munge``: translate ``packet`` and write it, rewritten, into ``dst``."""
    cdef rtp_view_t v
    rtp_parse(&v, packet, n, 0, 0)
    return munger_munge_view(m, &v, packet, in_ext_seq, now, dst, dst_len)


cdef Py_ssize_t _write_py(
    RtpMunger munger, object packet, object dst, long long out_seq, long long out_ts, object pt
) except? -3:
    """Write through the Python-level kernel, for values the C one cannot take (it raises as the
    reference does there)."""
    from sfu._fastpath import KEEP_MARKER, rewrite_rtp

    cdef Py_ssize_t written = rewrite_rtp(
        packet, dst, munger.m.out_ssrc, out_seq, out_ts, pt, KEEP_MARKER
    )
    if written < 0 and out_seq == munger.m.last_out_seq:
        _retract_newest(&munger.m)
    return written


cdef class RtpMunger:
    """Keeps one subscription's outgoing RTP sequence numbers and timestamps continuous.

    Same contract as ``sfu.core.munger.RtpMunger``; the state lives in ``self.m``.
    """

    def __init__(
        self,
        out_ssrc,
        out_payload_type_map=None,
        *,
        clock_rate=90000,
        initial_seq=None,
        initial_ts=None,
        history=64,
    ):
        if not 0 <= out_ssrc <= 0xFFFFFFFF:
            raise ValueError("out_ssrc must be a 32-bit value")
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        pt_map = None if out_payload_type_map is None else dict(out_payload_type_map)
        _check_limit(history)
        cdef munger_t* m = &self.m
        cdef int pt
        memset(m, 0, sizeof(munger_t))
        m.out_ssrc = out_ssrc
        self.pt_map_obj = pt_map
        m.has_pt_map = pt_map is not None
        if pt_map is not None:
            for pt in range(128):
                mapped = pt_map.get(pt)
                if mapped is None:
                    m.pt_map[pt] = MUNGER_PT_DROP
                elif isinstance(mapped, int) and 0 <= mapped <= 127:
                    m.pt_map[pt] = mapped
                else:  # the reference fails when such a packet is written; so does munge()
                    m.pt_map[pt] = MUNGER_PT_INVALID
        m.clock_rate = clock_rate
        m.has_initial_seq = initial_seq is not None
        m.initial_seq = 0 if initial_seq is None else initial_seq & 0xFFFF
        m.has_initial_ts = initial_ts is not None
        m.initial_ts = 0 if initial_ts is None else initial_ts & 0xFFFFFFFF
        m.skips.limit = history

    # -- state ------------------------------------------------------------------------------

    @property
    def last_out_seq(self):
        """Extended sequence number of the newest outgoing packet (None before the first)."""
        return self.m.last_out_seq if self.m.has_last_out_seq else None

    @property
    def last_out_ts(self):
        """Extended timestamp of the newest outgoing packet (None before the first)."""
        return self.m.last_out_ts if self.m.has_last_out_ts else None

    @property
    def source_ssrc(self):
        """SSRC of the current source, when known (implicit switches record it)."""
        return self.m.source_ssrc if self.m.has_source_ssrc else None

    @property
    def clock_rate(self):
        """RTP clock rate used to turn elapsed wall-clock time into timestamp ticks."""
        return self.m.clock_rate

    @property
    def out_ssrc(self):
        """The SSRC every outgoing packet carries."""
        return self.m.out_ssrc

    @out_ssrc.setter
    def out_ssrc(self, uint32_t value):
        self.m.out_ssrc = value

    @property
    def forwarded(self):
        """Packets translated for sending."""
        return self.m.forwarded

    @forwarded.setter
    def forwarded(self, long long value):
        self.m.forwarded = value

    @property
    def skipped(self):
        """Packets removed by :meth:`drop` without a hole in the outgoing sequence."""
        return self.m.skipped

    @skipped.setter
    def skipped(self, long long value):
        self.m.skipped = value

    @property
    def holes(self):
        """Packets dropped too late to close their place (:meth:`drop` returned False)."""
        return self.m.holes

    @holes.setter
    def holes(self, long long value):
        self.m.holes = value

    @property
    def duplicates(self):
        """Packets dropped as already forwarded or already dropped."""
        return self.m.duplicates

    @duplicates.setter
    def duplicates(self, long long value):
        self.m.duplicates = value

    @property
    def too_old(self):
        """Packets dropped as older than the switch or than the known history."""
        return self.m.too_old

    @too_old.setter
    def too_old(self, long long value):
        self.m.too_old = value

    @property
    def switches(self):
        """Source switches (the first source included)."""
        return self.m.switches

    @switches.setter
    def switches(self, long long value):
        self.m.switches = value

    # -- decisions --------------------------------------------------------------------------

    def switch_source(
        self, long long first_ext_seq, long long first_ts, double now, clock_rate=None, ssrc=None
    ):
        """Start a new source whose first forwarded packet is ``first_ext_seq`` / ``first_ts``."""
        cdef long long source = 0 if ssrc is None else ssrc
        if clock_rate is not None:
            if clock_rate <= 0:
                raise ValueError("clock_rate must be positive")
            self.m.clock_rate = clock_rate
        _switch(&self.m, first_ext_seq, first_ts, now, source, ssrc is not None)

    def rewind(self, discarded):
        """Take back the newest outgoing numbers that never left (``discarded``: 16-bit
        numbers); returns how many (the reference's contract)."""
        if not self.m.has_last_out_seq:
            return 0
        cdef set gone = {seq & 0xFFFF for seq in discarded}
        cdef long long last = self.m.last_out_seq
        cdef long long back = 0
        while back < _REWIND_LIMIT and ((last - back) & 0xFFFF) in gone:
            back += 1
        if back:
            self.m.last_out_seq = last - back
            self.m.active = False
        return back

    def translate(self, long long in_ext_seq, long long in_ts, double now, ssrc=None):
        """Decide the outgoing sequence number and timestamp of one packet to forward."""
        cdef long long source = 0 if ssrc is None else ssrc
        cdef long long out_seq = 0, out_ts = 0
        cdef int code = _translate(
            &self.m, in_ext_seq, in_ts, now, source, ssrc is not None, &out_seq, &out_ts
        )
        if code < 0:
            return _DROPS[code]
        return TranslationParams(out_seq, out_ts, False, code == _FORWARD_SWITCHED)

    def drop(self, long long in_ext_seq):
        """Take a packet deliberately out of the outgoing sequence so that it leaves no hole."""
        return munger_drop(&self.m, in_ext_seq)

    # -- decide and apply -------------------------------------------------------------------

    def munge(self, packet, long long in_ext_seq, double now, dst):
        """Translate ``packet`` and write it, rewritten, into ``dst``: the length written, 0
        when dropped, or the kernel's negative ``MALFORMED`` / ``NO_ROOM``."""
        cdef munger_t* m = &self.m
        cdef Py_buffer sb
        cdef Py_buffer db
        cdef const unsigned char* p
        cdef int pt, code, mapped
        cdef long long out_seq = 0, out_ts = 0
        cdef uint32_t ts, ssrc
        cdef Py_ssize_t written
        PyObject_GetBuffer(packet, &sb, PyBUF_SIMPLE)
        try:
            if sb.len < 12:
                return MUNGER_MALFORMED
            p = <const unsigned char*>sb.buf
            pt = p[1] & 0x7F
            ts = _be32(p + 4)
            ssrc = _be32(p + 8)
            if m.has_pt_map:
                mapped = m.pt_map[pt]
                if mapped == MUNGER_PT_DROP:
                    munger_drop(m, in_ext_seq)
                    return 0
                if mapped == MUNGER_PT_INVALID:
                    code = _translate(m, in_ext_seq, ts, now, ssrc, True, &out_seq, &out_ts)
                    if code < 0:
                        return 0
                    return _write_py(
                        self, packet, dst, out_seq, out_ts & 0xFFFFFFFF, self.pt_map_obj.get(pt)
                    )
                pt = mapped
            code = _translate(m, in_ext_seq, ts, now, ssrc, True, &out_seq, &out_ts)
            if code < 0:
                return 0
            # A publisher's timestamps may walk the extended value below zero (steps back of
            # almost 2**31): it goes out modulo 2**32 like any other (the wire's 32 bits).
            if out_seq < 0:  # the kernel refuses these: raise as it does
                return _write_py(self, packet, dst, out_seq, out_ts & 0xFFFFFFFF, pt)
            PyObject_GetBuffer(dst, &db, PyBUF_SIMPLE | PyBUF_WRITABLE)
            try:
                written = rtp_rewrite(
                    p, sb.len, <uint8_t*>db.buf, db.len, m.out_ssrc, <uint64_t>out_seq,
                    <uint64_t>out_ts, pt, -1,
                )
            finally:
                PyBuffer_Release(&db)
            if written < 0 and out_seq == m.last_out_seq:
                _retract_newest(m)
            return written
        finally:
            PyBuffer_Release(&sb)


def munge_nogil(RtpMunger munger, packet, long long in_ext_seq, double now, dst):
    """``munger.munge`` through the engine's C entry point ``munger_munge``, without the GIL
    (so the tests can hold it to the reference too). Where the reference raises (a payload type
    mapped outside 0..127, a negative extended value) it returns -1 or writes the low bits."""
    cdef Py_buffer sb
    cdef Py_buffer db
    cdef Py_ssize_t written
    PyObject_GetBuffer(packet, &sb, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(dst, &db, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            with nogil:
                written = munger_munge(
                    &munger.m, <const unsigned char*>sb.buf, sb.len, in_ext_seq, now,
                    <unsigned char*>db.buf, db.len,
                )
        finally:
            PyBuffer_Release(&db)
    finally:
        PyBuffer_Release(&sb)
    return written
