# cython: language_level=3
"""Compiled header-extension id rewriter: ``sfu.core.header_extensions.ExtensionRewriter`` in C.

The tables are built by ``sfu._fastpath.ext_tables.build_tables`` (as the reference's are) and
copied into C arrays; :func:`ext_apply` (declared in ``_extensions.pxd``) rewrites a packet
without the GIL.
"""

from sfu._fastpath.ext_tables import ONE_BYTE_PROFILE, ONE_BYTE_STOP_ID, apply_tables, build_tables

cdef enum:
    _ONE_BYTE_PROFILE = 0xBEDE  # ext_tables.ONE_BYTE_PROFILE (checked below)
    _ONE_BYTE_STOP_ID = 15  # ext_tables.ONE_BYTE_STOP_ID
    _OUT_OF_RANGE = -1  # _ext_run: the reference would have raised IndexError here


assert (ONE_BYTE_PROFILE, ONE_BYTE_STOP_ID) == (_ONE_BYTE_PROFILE, _ONE_BYTE_STOP_ID)


cdef int _ext_walk(const ext_rewriter_t* r, unsigned char* buf, unsigned int profile,
                   Py_ssize_t pos, Py_ssize_t end, Py_ssize_t cap,
                   unsigned int abs_send_time, int twcc_seq) noexcept nogil:
    """The reference's element loop over the block body ``buf[pos:end]``; returns 1 when it
    stamped ``twcc_seq``, else 0, or _OUT_OF_RANGE where its next access would leave a buffer
    of ``cap`` bytes."""
    cdef Py_ssize_t size, k
    cdef unsigned int b, ext_id
    cdef unsigned char stamp[3]
    cdef int stamped = 0
    cdef bint stamping = twcc_seq >= 0 and r.twcc_dest != 0
    stamp[0] = (abs_send_time >> 16) & 0xFF
    stamp[1] = (abs_send_time >> 8) & 0xFF
    stamp[2] = abs_send_time & 0xFF
    if profile == _ONE_BYTE_PROFILE:
        while pos < end:
            if pos >= cap:
                return _OUT_OF_RANGE
            b = buf[pos]
            if b == 0:
                pos += 1
                continue
            ext_id = b >> 4
            if ext_id == _ONE_BYTE_STOP_ID:
                return stamped
            size = (b & 0x0F) + 1
            if pos + 1 + size > end:
                return stamped
            if (stamping and r.twcc[ext_id] and size == 2 and not stamped
                    and r.twcc_dest < _ONE_BYTE_STOP_ID):
                buf[pos] = (r.twcc_dest << 4) | 1
                if pos + 1 >= cap:
                    return _OUT_OF_RANGE
                buf[pos + 1] = (twcc_seq >> 8) & 0xFF
                if pos + 2 >= cap:
                    return _OUT_OF_RANGE
                buf[pos + 2] = twcc_seq & 0xFF
                stamped = 1
                pos += 3
                continue
            buf[pos] = (r.one[ext_id] << 4) | (b & 0x0F)
            if r.abs_ids[ext_id] and size == 3:
                for k in range(3):
                    if pos + 1 + k >= cap:
                        return _OUT_OF_RANGE
                    buf[pos + 1 + k] = stamp[k]
            pos += 1 + size
    elif profile >> 4 == 0x100:
        while pos < end:
            if pos >= cap:
                return _OUT_OF_RANGE
            ext_id = buf[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return stamped
            if pos + 1 >= cap:
                return _OUT_OF_RANGE
            size = buf[pos + 1]
            if pos + 2 + size > end:
                return stamped
            if stamping and r.twcc[ext_id] and size == 2 and not stamped:
                buf[pos] = r.twcc_dest
                if pos + 2 >= cap:
                    return _OUT_OF_RANGE
                buf[pos + 2] = (twcc_seq >> 8) & 0xFF
                if pos + 3 >= cap:
                    return _OUT_OF_RANGE
                buf[pos + 3] = twcc_seq & 0xFF
                stamped = 1
                pos += 4
                continue
            buf[pos] = r.two[ext_id]
            if r.abs_ids[ext_id] and size == 3:
                for k in range(3):
                    if pos + 2 + k >= cap:
                        return _OUT_OF_RANGE
                    buf[pos + 2 + k] = stamp[k]
            pos += 2 + size
    return stamped


cdef int _ext_run(const ext_rewriter_t* r, unsigned char* buf, Py_ssize_t length,
                  Py_ssize_t cap, unsigned int abs_send_time, int twcc_seq) noexcept nogil:
    """The reference's ``apply`` on a buffer of ``cap`` bytes: same reads and writes in the same
    order; returns _OUT_OF_RANGE where the reference's next access would leave the buffer.
    (The Python entry point: it locates the block itself, on a packet nobody has parsed.)"""
    cdef Py_ssize_t start, end
    if r.identity:
        return 0
    if cap < 1:
        return _OUT_OF_RANGE
    if not buf[0] & 0x10:
        return 0
    start = 12 + 4 * (buf[0] & 0x0F)
    if start + 3 >= cap:
        return _OUT_OF_RANGE
    end = start + 4 + 4 * ((buf[start + 2] << 8) | buf[start + 3])
    if length < end:
        end = length
    return _ext_walk(r, buf, (buf[start] << 8) | buf[start + 1], start + 4, end, cap,
                     abs_send_time, twcc_seq)


cdef void ext_apply(const ext_rewriter_t* r, unsigned char* buf, Py_ssize_t length,
                    unsigned int abs_send_time) noexcept nogil:
    _ext_run(r, buf, length, length, abs_send_time, -1)


cdef int ext_apply_view(const ext_rewriter_t* r, unsigned char* buf, const rtp_view_t* v,
                        unsigned int abs_send_time, int twcc_seq) noexcept nogil:
    # The rewritten copy keeps the parsed packet's layout, and a rewritable parse has its
    # block inside the packet: the walk needs no bounds beyond the block's own.
    if r.identity or not v.has_ext:
        return 0
    return _ext_walk(r, buf, <unsigned int>v.ext_profile, v.ext_start, v.ext_end, v.size,
                     abs_send_time, twcc_seq)


cdef class ExtensionRewriter:
    """Rewrites one publisher section's extension ids to one subscriber section's, in place
    (see the reference ``sfu.core.header_extensions.ExtensionRewriter``)."""

    def __init__(self, source, dest):
        # The tables come from the reference's own builder, so every input behaves the same.
        tables = build_tables(source, dest)
        # Kept for buffers the C path cannot take: the reference's loop runs on them.
        self._one = tables.one
        self._two = tables.two
        self._abs_ids = tables.abs_ids
        self._twcc_ids = tables.twcc_ids
        cdef int i
        for i in range(16):
            self.r.one[i] = self._one[i]
        for i in range(256):
            self.r.two[i] = self._two[i]
            self.r.abs_ids[i] = i in self._abs_ids
            self.r.twcc[i] = i in self._twcc_ids
        self.r.twcc_dest = tables.twcc_dest
        self.r.identity = tables.identity

    @property
    def identity(self) -> bool:
        """True when nothing needs changing (same ids, nothing hidden, no restamp)."""
        return self.r.identity

    @identity.setter
    def identity(self, value):
        self.r.identity = bool(value)

    def apply(self, buf, length, abs_send_time, twcc_seq=-1) -> bool:
        """Rewrite the extension ids of the RTP packet ``buf[:length]`` (already validated by
        the rewrite kernel); ``abs_send_time`` is the 24-bit 6.18 send time to stamp; with
        ``twcc_seq`` >= 0 the transport-cc element carries it (returns whether it did)."""
        if self.r.identity:
            return False
        cdef unsigned char[::1] mv
        try:
            mv = buf
        except (TypeError, ValueError, BufferError):  # read-only or non-contiguous
            return apply_tables(self._one, self._two, self._abs_ids, buf, length,
                                abs_send_time, self._twcc_ids, self.r.twcc_dest, twcc_seq)
        cdef Py_ssize_t cap = mv.shape[0]
        cdef unsigned char dummy = 0
        cdef unsigned char* p = &mv[0] if cap > 0 else &dummy
        cdef Py_ssize_t n = length
        cdef unsigned int stamp = abs_send_time & 0xFFFFFF
        cdef int seq = twcc_seq if 0 <= twcc_seq <= 0xFFFF else -1
        cdef int result = _ext_run(&self.r, p, n, cap, stamp, seq)
        if result == _OUT_OF_RANGE:
            raise IndexError("bytearray index out of range")
        return result == 1
