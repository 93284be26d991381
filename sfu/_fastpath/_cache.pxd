# cython: language_level=3
# C-level interface of the compiled retransmission cache (``sfu.core.retransmission``'s
# RetransmissionBuffer), for other Cython modules (the forwarding loop):
#
#     from sfu._fastpath._cache cimport RetransmissionBuffer, cache_t, cache_put
#
#     cdef cache_t* c = &(<RetransmissionBuffer>buf).c   # keep a reference to buf
#     with nogil:
#         cache_put(c, pkt, n, ext_seq, now)
#
# One malloc'd block holds, per slot, the extended seq (int64, -1 = empty), the insertion
# time (double), the length (int32) and max_size packet bytes. Not locked: one thread at a time.

from libc.stdint cimport int32_t, int64_t


cdef struct cache_t:
    Py_ssize_t capacity         # slots (a power of two)
    Py_ssize_t mask             # capacity - 1
    Py_ssize_t max_size         # bytes per slot
    double max_age              # seconds a packet stays retrievable
    long long newest            # highest ext seq stored since the last clear; -1 = none
    int64_t* seqs               # [capacity] extended seq per slot, -1 = empty
    double* times               # [capacity] insertion time per slot
    int32_t* lengths            # [capacity] packet length per slot
    unsigned char* data         # [capacity * max_size] packet bytes
    void* block                 # the single allocation the four arrays live in
    long long stored            # counters, as the reference's public attributes
    long long too_large
    long long too_old
    long long hits
    long long misses


cdef class RetransmissionBuffer:
    cdef cache_t c
    cdef object _max_age        # as given (the reference returns it unconverted)
    cdef Py_ssize_t _store_len  # bytes of the packet store (shape of the exported buffer)
    cdef Py_ssize_t _exports    # buffer views alive (re-initialising is refused meanwhile)


# Store ``packet[:n]`` under ``ext_seq`` (>= 0); counts too_large / too_old like the reference.
cdef void cache_put(cache_t* c, const unsigned char* packet, Py_ssize_t n, long long ext_seq,
                    double now) noexcept nogil
# The stored packet for ``ext_seq`` (its length in *n), or NULL (counted as a miss) when absent,
# overwritten or older than max_age; counts hits / misses. Valid until the slot is reused.
cdef const unsigned char* cache_get(cache_t* c, long long ext_seq, double now,
                                    Py_ssize_t* n) noexcept nogil
# Forget every stored packet (counters kept).
cdef void cache_clear(cache_t* c) noexcept nogil
