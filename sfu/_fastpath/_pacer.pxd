# cython: language_level=3
# C-level interface of the compiled egress pacer (``_pacer_py.Pacer``), so a forwarding loop
# can queue a protected packet without the GIL:
#
#     from sfu._fastpath._pacer cimport Pacer, pacer_t, pacer_push
#     cdef pacer_t* p = &(<Pacer>obj).p                    # keep a reference to obj
#     pacer_push(p, data, length, cls, tag, now)           # 1: queued, 0: dropped (counted)
#
# and release what is due without the GIL (``Pacer.pop`` is these four):
#
#     pacer_begin(p, now)
#     i = pacer_next(p, now, &cls)                         # -1: nothing (more) due
#     ... copy p.slots[i].data (p.slots[i].size bytes) ...
#     pacer_take(p, cls, i, now, history)                  # history: history_t* or NULL
#     pacer_end(p, history)
#
# and ``pacer_next_deadline(p, now)`` is ``Pacer.next_deadline`` (INFINITY for None).

from sfu._fastpath._bwe cimport history_t

cdef struct slot_t:
    unsigned char* data
    int size
    int next                        # toward the tail of its class (or the free list)
    int prev                        # toward the head
    long long tag
    long long order                 # push counter: packets leave in this order
    double queued

cdef struct pacer_t:
    slot_t* slots
    int max_packets
    long long max_bytes
    int free                        # head of the free-slot list, -1 when none
    int head[4]
    int tail[4]
    int count[4]
    int packets
    long long bytes
    long long order                 # the next push's order
    double rate                     # bytes per second; 0: unpaced
    double debt
    bint backlog                    # packets were left waiting at the last pop
    double last
    long long sent_packets
    long long sent_bytes
    long long dropped
    long long evicted
    long long expired
    long long delay_count
    double delay_sum
    double delay_max
    long long withdrawn[512]        # tags of numbered packets discarded (WITHDRAWN_CAPACITY)
    int n_withdrawn

cdef class Pacer:
    cdef pacer_t p

cdef int pacer_push(pacer_t* p, const unsigned char* data, int size, int cls, long long tag,
                    double now) noexcept nogil

cdef void pacer_begin(pacer_t* p, double now) noexcept nogil
cdef int pacer_next(pacer_t* p, double now, int* cls) noexcept nogil
cdef void pacer_take(pacer_t* p, int cls, int i, double now, history_t* h) noexcept nogil
cdef void pacer_end(pacer_t* p, history_t* h) noexcept nogil
cdef double pacer_next_deadline(const pacer_t* p, double now) noexcept nogil
