# cython: language_level=3
# C-level interface of the compiled send history (``_bwe_py.SendHistory``), for the forwarding
# loop: every packet sent on a transport takes the next transport-wide sequence number and is
# recorded here (send time, size, probe cluster) without the GIL.
#
#     from sfu._fastpath._bwe cimport SendHistory, history_t, history_record
#     cdef history_t* h = &(<SendHistory>obj).h          # keep a reference to obj
#     seq16 = h.next & 0xFFFF                              # stamp it, then:
#     history_record(h, size, now, -1)

cdef struct history_t:
    long long next                  # extended sequence number of the next packet
    long long mask                  # capacity - 1 (a power of two)
    long long bytes
    double* sent
    int* size
    int* cluster
    unsigned char* acked
    long long withdrawn             # packets withdrawn so far (numbered, never sent)

cdef class SendHistory:
    cdef history_t h

# Record a packet under ``h.next`` (then incremented); returns its 16-bit sequence number.
cdef int history_record(history_t* h, int size, double now, int cluster) noexcept nogil

# The packet sent with 16-bit ``seq`` left at ``now`` (a pacer held it); 0 if not remembered.
cdef int history_restamp(history_t* h, long long seq, double now) noexcept nogil

# The packet numbered 16-bit ``seq`` never left (a pacer discarded it); 0 if not remembered or
# already acknowledged.
cdef int history_withdraw(history_t* h, long long seq) noexcept nogil
