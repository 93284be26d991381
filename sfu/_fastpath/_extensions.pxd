# cython: language_level=3
# C-level interface of the compiled header-extension id rewriter (``sfu.core.header_extensions``'s
# ExtensionRewriter), for other Cython modules (the forwarding loop):
#
#     from sfu._fastpath._extensions cimport ExtensionRewriter, ext_rewriter_t, ext_apply
#
#     cdef const ext_rewriter_t* r = &(<ExtensionRewriter>rw).r   # keep a reference to rw
#     with nogil:
#         ext_apply(r, buf, n, abs_send_time)
#
# The tables are read-only after construction, so one rewriter may serve several threads.

from sfu._fastpath._rtp cimport rtp_view_t


cdef struct ext_rewriter_t:
    bint identity                   # nothing to change: apply returns at once
    unsigned char one[16]           # one-byte form (RFC 8285 §4.2): source id -> subscriber id
    unsigned char two[256]          # two-byte form (RFC 8285 §4.3): source id -> subscriber id
    unsigned char abs_ids[256]      # 1 for source ids whose element is restamped abs-send-time
    unsigned char twcc[256]         # 1 for source ids whose element is transport-cc
    unsigned char twcc_dest         # the subscriber's transport-cc id (0: never stamped)


cdef class ExtensionRewriter:
    cdef ext_rewriter_t r
    cdef readonly bytes _one        # the tables as the reference keeps them, for its apply on
    cdef readonly bytes _two        # buffers the C path cannot take (read-only, non-contiguous)
    cdef readonly frozenset _abs_ids
    cdef readonly frozenset _twcc_ids


# Rewrite the extension ids of the RTP packet ``buf[:length]`` in place (every access stays
# below ``length``); ``abs_send_time`` is the 24-bit 6.18 send time stamped into abs-send-time.
cdef void ext_apply(const ext_rewriter_t* r, unsigned char* buf, Py_ssize_t length,
                    unsigned int abs_send_time) noexcept nogil

# ext_apply on the rewritten copy ``buf`` (``v.size`` bytes) of a packet parsed into ``v``
# (``_rtp.pxd``), whose framing the rewrite accepted (``rtp_rewritable``): the block's place
# comes from the parse instead of the header bytes. With ``twcc_seq`` >= 0 the packet's
# transport-cc element is restamped with it (see ext_tables); returns 1 when it was.
cdef int ext_apply_view(const ext_rewriter_t* r, unsigned char* buf, const rtp_view_t* v,
                        unsigned int abs_send_time, int twcc_seq) noexcept nogil
