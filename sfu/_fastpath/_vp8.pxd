# cython: language_level=3
# C-level interface of the compiled VP8 kernels (``sfu.codecs.vp8.parse_vp8`` and
# ``sfu.core.vp8_munger.Vp8Munger``), for other Cython modules (the forwarding loop):
#
#     from sfu._fastpath._vp8 cimport (Vp8Munger, vp8_desc_t, vp8_translation_t,
#                                      vp8_parse, vp8_translate, vp8_drop, vp8_apply)
#
#     cdef vp8_munger_t* m = &(<Vp8Munger>munger).m       # keep a reference to munger
#     with nogil:
#         if vp8_parse(pkt, off, end, &d) < 0: ...           # malformed: drop
#         if vp8_translate(m, &d, ssrc, &t): vp8_apply(out, off, &t)
#
# Optional values use -1 for None. A munger is not locked: one thread at a time.


cdef struct vp8_desc_t:
    int size               # descriptor length in bytes
    bint is_keyframe
    bint is_start_of_frame
    int temporal_id        # -1 = None
    bint layer_sync
    long long picture_id   # -1 = None
    bint picture_id_15bit
    int tl0picidx          # -1 = None
    int keyidx             # -1 = None


cdef struct vp8_translation_t:
    long long picture_id   # -1 = None (leave field)
    int tl0picidx          # -1 = None
    int keyidx             # -1 = None


# SkipHistory (sfu.core.munger) as a ring of at most ``limit`` [start, end) runs.
cdef struct vp8_skips_t:
    long long* starts      # [cap], malloc'd by the owning Vp8Munger
    long long* ends        # [cap]
    Py_ssize_t limit       # most runs kept (the reference's ``limit``)
    Py_ssize_t cap         # runs allocated (grows by doubling up to limit)
    Py_ssize_t head        # ring index of the oldest run
    Py_ssize_t count       # runs kept
    long long floor        # lowest input whose offset is still known


cdef struct vp8_munger_t:
    bint pending           # the next translate starts a new source
    bint has_source
    long long source
    bint has_pid_offset
    long long pid_offset
    long long pid_mask     # 0x7FFF or 0x7F, from the source's first picture id
    long long pid_half
    long long first_pid
    long long hi_pid
    bint hi_dropped
    bint has_tl0_offset
    int tl0_offset
    bint has_key_offset
    int key_offset
    bint has_last_pid
    long long last_pid
    int last_tl0           # -1 = None
    int last_keyidx        # -1 = None
    long long switches     # counters, as the reference's public attributes
    long long dropped_pictures
    long long rejected
    vp8_skips_t skips


cdef class Vp8Munger:
    cdef vp8_munger_t m


# 0 = parsed, -1 = malformed (where parse_vp8 raises ParseError). `end` exclusive; the
# reference's payload_end handling (padding) is the caller's job: pass the end it would use.
cdef int vp8_parse(const unsigned char* buf, Py_ssize_t offset, Py_ssize_t end,
                   vp8_desc_t* out) noexcept nogil
# 1 = forward with *out filled, 0 = reject (reference returns None). source < 0 = None.
cdef int vp8_translate(vp8_munger_t* m, const vp8_desc_t* desc, long long source,
                       vp8_translation_t* out) noexcept nogil
cdef void vp8_drop(vp8_munger_t* m, const vp8_desc_t* desc) noexcept nogil
cdef void vp8_switch_source(vp8_munger_t* m) noexcept nogil
# Write ``t`` into the (already parsed, intact) descriptor at ``buf[offset]``, keeping its length.
cdef void vp8_apply(unsigned char* buf, Py_ssize_t offset, const vp8_translation_t* t) noexcept nogil
