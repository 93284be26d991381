# cython: language_level=3
# C-level interface of the compiled RTP munger, for the forwarding engine:
#
#     from sfu._fastpath._munger cimport RtpMunger, munger_t, munger_munge
#
#     cdef munger_t* m = &(<RtpMunger>munger).m          # keep a reference to munger
#     with nogil:
#         n = munger_munge(m, packet, length, ext_seq, now, dst, capacity)
#
# The functions never raise, never touch Python objects and may run without the GIL; one munger
# must not be used by two threads at once. The Python contract is the reference's,
# sfu.core.munger.RtpMunger. Extended sequence numbers and timestamps are signed 64-bit here
# (Python ints in the reference); they must stay within +-2**62, far beyond any real stream.

from libc.stdint cimport int16_t, uint32_t, uint64_t

from sfu._fastpath._rtp cimport rtp_view_t

cdef enum:
    MUNGER_WINDOW = 512            # sfu._fastpath.values.REORDER_WINDOW: the duplicate bitmap's width
    MUNGER_WINDOW_WORDS = 8        # MUNGER_WINDOW / 64
    MUNGER_MAX_HISTORY = 256       # the most skipped runs a SkipHistory keeps
    MUNGER_PT_DROP = -1            # pt_map entry: the payload type is not forwarded
    MUNGER_PT_INVALID = -2         # pt_map entry: mapped to a value that is not a payload type
    MUNGER_MALFORMED = -1          # same as sfu._fastpath.MALFORMED / NO_ROOM
    MUNGER_NO_ROOM = -2


# SkipHistory: the [start, end) runs of deliberately skipped inputs, oldest first, in a ring.
ctypedef struct skiphist_t:
    long long starts[MUNGER_MAX_HISTORY]
    long long ends[MUNGER_MAX_HISTORY]
    int head                       # ring index of the oldest run
    int count                      # runs kept
    int limit                      # at most this many (1..MUNGER_MAX_HISTORY)
    long long floor                # below it, offsets are unknown


ctypedef struct munger_t:
    uint32_t out_ssrc
    bint has_pt_map                # False: payload types pass unchanged
    int16_t pt_map[128]            # 0..127, MUNGER_PT_DROP or MUNGER_PT_INVALID
    long long clock_rate
    bint has_initial_seq
    long long initial_seq          # already & 0xFFFF
    bint has_initial_ts
    long long initial_ts           # already & 0xFFFFFFFF
    bint active                    # a source exists
    bint has_source_ssrc
    long long source_ssrc
    long long sn_offset
    long long ts_offset
    long long first_in_seq
    long long hi_in_seq
    long long hi_in_ts
    uint64_t seen[MUNGER_WINDOW_WORDS]   # bit k: input hi_in_seq - k was forwarded (or filled)
    skiphist_t skips
    bint has_last_out_seq
    long long last_out_seq
    bint has_last_out_ts
    long long last_out_ts
    bint has_last_out_time
    double last_out_time
    long long forwarded
    long long skipped
    long long holes
    long long duplicates
    long long too_old
    long long switches


cdef class SkipHistory:
    cdef skiphist_t h


cdef class RtpMunger:
    cdef munger_t m
    cdef object pt_map_obj         # the reference's dict copy (only read for invalid entries)


# Same as RtpMunger.munge: returns length written, 0 when dropped, -1 malformed, -2 no room.
# (A payload type mapped to a non-payload-type value gives -1 without any state change; the
# reference raises there. Extended values are truncated to the wire without range checks.)
cdef Py_ssize_t munger_munge(munger_t* m, const unsigned char* packet, Py_ssize_t n,
                             long long in_ext_seq, double now,
                             unsigned char* dst, Py_ssize_t dst_len) noexcept nogil
# munger_munge on a packet already parsed into ``v`` (``_rtp.pxd``; any parse result): the
# forwarder parses once per packet and every route's munger reads the parse.
cdef Py_ssize_t munger_munge_view(munger_t* m, const rtp_view_t* v, const unsigned char* packet,
                                  long long in_ext_seq, double now,
                                  unsigned char* dst, Py_ssize_t dst_len) noexcept nogil
cdef bint munger_drop(munger_t* m, long long in_ext_seq) noexcept nogil
# ssrc < 0 means None.
cdef void munger_switch_source(munger_t* m, long long first_ext_seq, long long first_ts,
                               double now, long long ssrc) noexcept nogil
cdef bint munger_last_out_seq(const munger_t* m, long long* out) noexcept nogil  # False = None
