# cython: language_level=3
"""Compiled egress pacer: the contract (and the constants' reasons) of ``_pacer_py.py``.

The queue lives in C (a slot table with one doubly linked list per class and a free list;
each slot owns a malloc'd copy of its packet), so the compiled forwarder can queue a packet
without the GIL (``pacer_push``). The same floating-point operations run in the same order as
the reference, so both agree exactly; the build compiles this module without contraction."""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.math cimport INFINITY
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy

from sfu._fastpath._bwe cimport SendHistory, history_restamp, history_t, history_withdraw

from sfu._fastpath._pacer_py import (
    BURST_TIME,
    CATCH_UP,
    CLASSES,
    EXPIRY_SLACK,
    MAX_QUEUE_TIME,
    QUEUE_BYTES,
    QUEUE_PACKETS,
    SLACK,
    WITHDRAWN_CAPACITY,
)

cdef enum:
    _AUDIO = 0
    _PROBE = 1
    _CLASSES = 4
    _WITHDRAWN_CAPACITY = 512

assert CLASSES == _CLASSES
assert WITHDRAWN_CAPACITY == _WITHDRAWN_CAPACITY

cdef double _BURST = BURST_TIME
cdef double _CATCH_UP = CATCH_UP
cdef double _MAX_QUEUE_TIME = MAX_QUEUE_TIME
cdef double _EXPIRY_SLACK = EXPIRY_SLACK
cdef double _SLACK = SLACK


cdef inline void _drain(pacer_t* p, double now) noexcept nogil:
    cdef double elapsed = now - p.last
    cdef double floor
    if elapsed > 0.0:
        if p.rate > 0.0:
            p.debt -= elapsed * p.rate
            floor = -p.rate * _CATCH_UP if p.backlog else 0.0
            if p.debt < floor:
                p.debt = floor
        else:
            p.debt = 0.0
        p.last = now


cdef inline void _unlink(pacer_t* p, int cls, int i) noexcept nogil:
    cdef slot_t* s = &p.slots[i]
    if s.prev >= 0:
        p.slots[s.prev].next = s.next
    else:
        p.head[cls] = s.next
    if s.next >= 0:
        p.slots[s.next].prev = s.prev
    else:
        p.tail[cls] = s.prev
    p.count[cls] -= 1
    p.packets -= 1
    p.bytes -= s.size
    free(s.data)
    s.data = NULL
    s.next = p.free
    p.free = i


cdef inline void _discard(pacer_t* p, long long tag) noexcept nogil:
    """A numbered packet was discarded: remembered for the next pop to withdraw."""
    if tag >= 0 and p.n_withdrawn < _WITHDRAWN_CAPACITY:
        p.withdrawn[p.n_withdrawn] = tag
        p.n_withdrawn += 1


cdef inline int _head_class(const pacer_t* p) noexcept nogil:
    """The class whose head was queued first (-1: empty)."""
    cdef int cls = -1
    cdef int i
    for i in range(_CLASSES):
        if p.count[i] and (cls < 0 or p.slots[p.head[i]].order < p.slots[p.head[cls]].order):
            cls = i
    return cls


cdef int _evict_below(pacer_t* p, int cls) noexcept nogil:
    cdef int lowest = _CLASSES - 1
    while lowest > cls:
        if p.count[lowest]:
            _discard(p, p.slots[p.tail[lowest]].tag)
            _unlink(p, lowest, p.tail[lowest])
            p.evicted += 1
            return 1
        lowest -= 1
    return 0


cdef int pacer_push(pacer_t* p, const unsigned char* data, int size, int cls, long long tag,
                    double now) noexcept nogil:
    cdef int i
    cdef slot_t* s
    cdef unsigned char* copy
    if size > p.max_bytes:
        p.dropped += 1
        _discard(p, tag)
        return 0
    while p.packets >= p.max_packets or p.bytes + size > p.max_bytes:
        if not _evict_below(p, cls):
            p.dropped += 1
            _discard(p, tag)
            return 0
    copy = <unsigned char*>malloc(size if size > 0 else 1)
    if copy == NULL:
        p.dropped += 1
        _discard(p, tag)
        return 0
    memcpy(copy, data, size)
    i = p.free
    s = &p.slots[i]
    p.free = s.next
    s.data = copy
    s.size = size
    s.tag = tag
    s.order = p.order
    p.order += 1
    s.queued = now
    s.next = -1
    s.prev = p.tail[cls]
    if s.prev >= 0:
        p.slots[s.prev].next = i
    else:
        p.head[cls] = i
    p.tail[cls] = i
    p.count[cls] += 1
    p.packets += 1
    p.bytes += size
    return 1


cdef void pacer_begin(pacer_t* p, double now) noexcept nogil:
    _drain(p, now)


cdef int pacer_next(pacer_t* p, double now, int* cls) noexcept nogil:
    """The slot of the packet due next (expired video and retransmissions discarded on the
    way, counted); -1 when nothing is due. ``cls`` receives its class."""
    cdef int c, i
    while p.packets:
        c = _head_class(p)
        i = p.head[c]
        if (c > _PROBE and now - p.slots[i].queued >= _MAX_QUEUE_TIME
                and <double>p.bytes > p.rate * _MAX_QUEUE_TIME):
            _discard(p, p.slots[i].tag)
            _unlink(p, c, i)
            p.expired += 1
            continue
        if c > _PROBE and p.rate > 0.0 and p.debt > p.rate * _BURST + _SLACK:
            return -1
        cls[0] = c
        return i
    return -1


cdef void pacer_take(pacer_t* p, int cls, int i, double now, history_t* h) noexcept nogil:
    """Release slot ``i`` of class ``cls`` (from pacer_next; its bytes were copied out): the
    budget, the delay statistics, its number restamped in ``h``, the slot freed."""
    cdef slot_t* s = &p.slots[i]
    cdef double delay = now - s.queued
    if h != NULL and s.tag >= 0:
        history_restamp(h, s.tag & 0xFFFF, now)
    if cls != _PROBE:
        p.debt += s.size
    p.sent_packets += 1
    p.sent_bytes += s.size
    p.delay_count += 1
    p.delay_sum += delay
    if delay > p.delay_max:
        p.delay_max = delay
    _unlink(p, cls, i)


cdef void pacer_end(pacer_t* p, history_t* h) noexcept nogil:
    """After a release: whether packets were left waiting, and the numbers of the packets
    discarded since the last release withdrawn from ``h`` (kept pending without one)."""
    cdef int i
    p.backlog = p.packets > 0
    if h != NULL:
        for i in range(p.n_withdrawn):
            history_withdraw(h, p.withdrawn[i] & 0xFFFF)
        p.n_withdrawn = 0


cdef double pacer_next_deadline(const pacer_t* p, double now) noexcept nogil:
    """When a release next lets something go (``now`` if at once); INFINITY when empty."""
    cdef double rate, debt, excess, expiry, due
    cdef int cls
    if not p.packets:
        return INFINITY
    if p.rate <= 0.0:
        return now
    cls = _head_class(p)
    if cls <= _PROBE:
        return now
    rate = p.rate
    expiry = p.slots[p.head[cls]].queued + _MAX_QUEUE_TIME + _EXPIRY_SLACK
    if <double>p.bytes <= rate * _MAX_QUEUE_TIME:
        expiry = INFINITY  # the queue leaves within the limit: nothing expires
    elif expiry <= now:
        return now
    debt = p.debt - (now - p.last) * rate
    excess = debt - rate * _BURST
    if excess <= 0.0:
        return now
    due = now + excess / rate
    return expiry if expiry < due else due


cdef class Pacer:
    """Leaky-bucket egress pacer with four priority classes and a bounded queue."""

    def __cinit__(self, int max_packets=QUEUE_PACKETS, long long max_bytes=QUEUE_BYTES):
        cdef int i
        if max_packets <= 0 or max_bytes <= 0:
            raise ValueError("max_packets and max_bytes must be positive")
        self.p.slots = <slot_t*>calloc(max_packets, sizeof(slot_t))
        if self.p.slots == NULL:
            raise MemoryError()
        self.p.max_packets = max_packets
        self.p.max_bytes = max_bytes
        for i in range(max_packets):
            self.p.slots[i].next = i + 1 if i + 1 < max_packets else -1
        self.p.free = 0
        for i in range(_CLASSES):
            self.p.head[i] = -1
            self.p.tail[i] = -1
            self.p.count[i] = 0

    def __dealloc__(self):
        cdef int i
        if self.p.slots != NULL:
            for i in range(self.p.max_packets):
                free(self.p.slots[i].data)
            free(self.p.slots)

    @property
    def rate_bps(self):
        """The pacing rate (bits per second); 0 while unpaced."""
        return self.p.rate * 8.0

    @property
    def queued_packets(self):
        return self.p.packets

    @property
    def queued_bytes(self):
        return self.p.bytes

    @property
    def sent_packets(self):
        return self.p.sent_packets

    @property
    def sent_bytes(self):
        return self.p.sent_bytes

    @property
    def withdrawn_pending(self):
        """Numbered packets discarded since the last pop with a history."""
        return self.p.n_withdrawn

    @property
    def dropped(self):
        return self.p.dropped

    @property
    def evicted(self):
        return self.p.evicted

    @property
    def expired(self):
        return self.p.expired

    def set_rate(self, double bps, double now):
        """Pace at ``bps`` from ``now`` on (0 or less: release everything at once)."""
        _drain(&self.p, now)
        self.p.rate = bps / 8.0 if bps > 0.0 else 0.0

    def push(self, const unsigned char[::1] packet, int cls, long long tag, double now):
        """Queue ``packet`` of class ``cls``; False when it was dropped (queue full)."""
        if not 0 <= cls < _CLASSES:
            raise ValueError("unknown packet class")
        cdef int size = packet.shape[0]
        return bool(pacer_push(&self.p, &packet[0] if size else NULL, size, cls, tag, now))

    def pop(self, double now, object history=None):
        """The packets due at ``now``, in queue order: (packet, tag); with a send history,
        non-negative tags are transport-wide sequence numbers restamped to ``now``."""
        cdef pacer_t* p = &self.p
        cdef SendHistory h = <SendHistory?>history if history is not None else None
        cdef history_t* hh = &h.h if h is not None else NULL
        cdef int cls, i
        cdef bytes packet
        cdef list out = []
        pacer_begin(p, now)
        while True:
            i = pacer_next(p, now, &cls)
            if i < 0:
                break
            packet = PyBytes_FromStringAndSize(<char*>p.slots[i].data, p.slots[i].size)
            out.append((packet, p.slots[i].tag))
            pacer_take(p, cls, i, now, hh)
        pacer_end(p, hh)
        return out

    def next_deadline(self, double now):
        """When :meth:`pop` next releases something (``now`` if at once); None when empty."""
        cdef double due = pacer_next_deadline(&self.p, now)
        return None if due == INFINITY else due

    def take_delays(self):
        """(packets, total seconds, longest seconds) queued since the last call."""
        stats = (self.p.delay_count, self.p.delay_sum, self.p.delay_max)
        self.p.delay_count = 0
        self.p.delay_sum = 0.0
        self.p.delay_max = 0.0
        return stats

    def queued_seqs(self, int min_class=0):
        """Per SSRC, the RTP sequence numbers of the queued packets of class ``min_class`` or
        lower priority, in queue order (the reference's contract)."""
        if not 0 <= min_class < _CLASSES:
            raise ValueError("unknown packet class")
        cdef dict seqs = {}
        cdef int cls, i
        cdef unsigned char* d
        cdef long long ssrc
        for cls in range(min_class, _CLASSES):
            i = self.p.head[cls]
            while i >= 0:
                if self.p.slots[i].size >= 12:
                    d = self.p.slots[i].data
                    ssrc = (<long long>d[8] << 24) | (d[9] << 16) | (d[10] << 8) | d[11]
                    seqs.setdefault(ssrc, []).append((d[2] << 8) | d[3])
                i = self.p.slots[i].next
        return seqs

    def clear(self, int min_class=0):
        """Drop every queued packet of class ``min_class`` or lower priority (0: everything,
        the transport closed); returns how many packets."""
        if not 0 <= min_class < _CLASSES:
            raise ValueError("unknown packet class")
        cdef int dropped = 0
        cdef int cls
        for cls in range(min_class, _CLASSES):
            while self.p.count[cls]:
                _discard(&self.p, self.p.slots[self.p.head[cls]].tag)
                _unlink(&self.p, cls, self.p.head[cls])
                dropped += 1
        if not self.p.packets:
            self.p.backlog = False
        return dropped
