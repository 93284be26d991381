# cython: language_level=3
"""Compiled retransmission cache: ``sfu.core.retransmission.RetransmissionBuffer`` in C.

Same Python contract as the reference (the tests run both side by side); the C functions
declared in ``_cache.pxd`` let the forwarding loop store packets without the GIL. Storage is
one allocation: per-slot seqs, times and lengths, then ``capacity x max_size`` packet bytes.
"""

from cpython.buffer cimport PyBUF_FORMAT, PyBUF_ND, PyBUF_STRIDES, PyBUF_WRITABLE
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy

from sfu._fastpath.values import CACHE_CAPACITY, CACHE_MAX_AGE, CACHE_MAX_SIZE, check_power_of_two

cdef enum:
    _SLOT_OVERHEAD = 20  # bytes of per-slot bookkeeping: seq (int64) + time (f64) + length (i32)

_SEQ_LIMIT = 1 << 63  # extended sequence numbers are stored as int64
cdef char* _FORMAT_B = b"B"  # buffer format of the packet store: unsigned bytes


cdef void cache_put(cache_t* c, const unsigned char* packet, Py_ssize_t n, long long ext_seq,
                    double now) noexcept nogil:
    cdef Py_ssize_t idx
    if n > c.max_size:
        c.too_large += 1
        return
    idx = <Py_ssize_t>(ext_seq & c.mask)
    if c.seqs[idx] > ext_seq:
        c.too_old += 1
        return
    if n > 0:
        memcpy(c.data + idx * c.max_size, packet, <size_t>n)
    c.lengths[idx] = <int32_t>n
    c.seqs[idx] = ext_seq
    c.times[idx] = now
    if ext_seq > c.newest:
        c.newest = ext_seq
    c.stored += 1


cdef const unsigned char* cache_get(cache_t* c, long long ext_seq, double now,
                                    Py_ssize_t* n) noexcept nogil:
    cdef Py_ssize_t idx
    if ext_seq < 0:
        c.misses += 1
        return NULL
    idx = <Py_ssize_t>(ext_seq & c.mask)
    if c.seqs[idx] != ext_seq or now - c.times[idx] > c.max_age:
        c.misses += 1
        return NULL
    c.hits += 1
    n[0] = c.lengths[idx]
    return c.data + idx * c.max_size


cdef void cache_clear(cache_t* c) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(c.capacity):
        c.seqs[i] = -1
        c.lengths[i] = 0
    c.newest = -1


cdef class RetransmissionBuffer:
    """Ring of the last ``capacity`` packets of one source stream, indexed by extended seq
    (see the reference ``sfu.core.retransmission.RetransmissionBuffer``)."""

    def __cinit__(self):
        self.c.block = NULL
        self.c.newest = -1
        self._exports = 0
        self._store_len = 0

    def __init__(
        self,
        capacity=CACHE_CAPACITY,
        max_size=CACHE_MAX_SIZE,
        max_age=CACHE_MAX_AGE,
    ):
        check_power_of_two("capacity", capacity)
        if max_size <= 0:
            raise ValueError("max_size must be positive")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        if self._exports:
            raise BufferError("packets of this cache are still being viewed")
        cdef Py_ssize_t cap = capacity
        cdef Py_ssize_t size = max_size
        if cap > (<Py_ssize_t>0x7FFFFFFFFFFF) // (size + _SLOT_OVERHEAD):
            raise MemoryError("retransmission cache too large")
        cdef void* block = calloc(<size_t>(cap * (size + _SLOT_OVERHEAD)), 1)
        if block == NULL:
            raise MemoryError("retransmission cache allocation failed")
        free(self.c.block)
        cdef char* base = <char*>block
        self.c.block = block
        self.c.capacity = cap
        self.c.mask = cap - 1
        self.c.max_size = size
        self.c.max_age = max_age
        self._max_age = max_age
        self.c.seqs = <int64_t*>base
        self.c.times = <double*>(base + 8 * cap)
        self.c.lengths = <int32_t*>(base + 16 * cap)
        self.c.data = <unsigned char*>(base + _SLOT_OVERHEAD * cap)
        self._store_len = cap * size
        cache_clear(&self.c)
        self.c.stored = 0
        self.c.too_large = 0
        self.c.too_old = 0
        self.c.hits = 0
        self.c.misses = 0

    def __dealloc__(self):
        free(self.c.block)
        self.c.block = NULL

    # Read-only buffer over the packet store, so the views ``get`` returns keep it alive.
    def __getbuffer__(self, Py_buffer* view, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("the retransmission cache is read-only")
        if self.c.block == NULL:
            raise BufferError("the retransmission cache is not initialised")
        view.buf = <void*>self.c.data
        view.obj = self
        view.len = self._store_len
        view.readonly = 1
        view.itemsize = 1
        view.format = _FORMAT_B if flags & PyBUF_FORMAT else NULL
        view.ndim = 1
        view.shape = &self._store_len if flags & PyBUF_ND else NULL
        view.strides = &view.itemsize if flags & PyBUF_STRIDES == PyBUF_STRIDES else NULL
        view.suboffsets = NULL
        view.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* view):
        self._exports -= 1

    @property
    def capacity(self) -> int:
        """Number of packet slots."""
        return self.c.capacity

    @property
    def max_size(self) -> int:
        """Largest packet, in bytes, that is stored."""
        return self.c.max_size

    @property
    def max_age(self) -> float:
        """Seconds after insertion beyond which :meth:`get` no longer returns a packet."""
        return self._max_age

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the preallocated block (packets, lengths, seqs, times)."""
        return self.c.capacity * (self.c.max_size + _SLOT_OVERHEAD)

    @property
    def newest(self):
        """Highest extended sequence number stored since the last :meth:`clear`, if any."""
        return None if self.c.newest < 0 else self.c.newest

    @property
    def stored(self) -> int:
        """Packets copied in."""
        return self.c.stored

    @stored.setter
    def stored(self, long long value):
        self.c.stored = value

    @property
    def too_large(self) -> int:
        """Packets longer than max_size, not stored."""
        return self.c.too_large

    @too_large.setter
    def too_large(self, long long value):
        self.c.too_large = value

    @property
    def too_old(self) -> int:
        """Late packets whose slot already holds a newer one, not stored."""
        return self.c.too_old

    @too_old.setter
    def too_old(self, long long value):
        self.c.too_old = value

    @property
    def hits(self) -> int:
        """get() calls that found the packet."""
        return self.c.hits

    @hits.setter
    def hits(self, long long value):
        self.c.hits = value

    @property
    def misses(self) -> int:
        """get() calls that did not (never stored, overwritten, or too old)."""
        return self.c.misses

    @misses.setter
    def misses(self, long long value):
        self.c.misses = value

    def put(self, packet, ext_seq, double now) -> None:
        """Store a copy of ``packet`` (a whole RTP packet) under extended seq ``ext_seq``."""
        cdef const unsigned char[::1] mv
        try:
            mv = packet
        except (TypeError, ValueError, BufferError):
            if not isinstance(packet, memoryview):
                raise
            mv = packet.tobytes()  # a non-contiguous view: store its bytes, as the reference
        cdef Py_ssize_t n = mv.shape[0]
        if n > self.c.max_size:
            self.c.too_large += 1
            return
        if ext_seq < 0:
            raise ValueError("extended sequence numbers are non-negative")
        if ext_seq >= _SEQ_LIMIT:  # the reference's int64 column refuses these too
            raise ValueError("extended sequence numbers must be below 2**63")
        cdef long long seq = ext_seq
        cache_put(&self.c, &mv[0] if n > 0 else NULL, n, seq, now)

    def get(self, ext_seq, double now):
        """The stored packet for ``ext_seq`` as a read-only view into the ring (valid until
        its slot is reused or :meth:`clear`), or None if absent, overwritten or stale."""
        cdef long long seq
        try:
            seq = ext_seq
        except OverflowError:  # beyond any stored sequence number
            self.c.misses += 1
            return None
        cdef Py_ssize_t n = 0
        cdef const unsigned char* p = cache_get(&self.c, seq, now, &n)
        if p == NULL:
            return None
        cdef Py_ssize_t off = p - self.c.data
        return memoryview(self)[off : off + n]

    def clear(self) -> None:
        """Forget every stored packet (the counters are cumulative and kept)."""
        cache_clear(&self.c)
