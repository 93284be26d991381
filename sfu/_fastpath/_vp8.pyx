# cython: language_level=3
"""Compiled VP8 kernels: ``sfu.codecs.vp8.parse_vp8`` / ``rewrite_vp8_descriptor`` and
``sfu.core.vp8_munger.Vp8Munger`` (with its ``SkipHistory``) in C.

The Python functions and the ``Vp8Munger`` class have the references' contract (the tests run
both side by side); the C functions declared in ``_vp8.pxd`` do the same work on C structs
without the GIL, for the forwarding loop.
"""

from libc.stdlib cimport free, malloc

from sfu.codecs import vp8 as _reference
from sfu.codecs.vp8 import Vp8Descriptor
from sfu._fastpath.values import Vp8Translation
from sfu.packet.errors import ParseError

# Required octet, RFC 7741 §4.2: |X|R|N|S|R| PID |
cdef enum:
    _X = 0x80
    _N = 0x20
    _S = 0x10
    _PID_MASK = 0x07
    # Extension octet: |I|L|T|K| RSV |
    _I = 0x80
    _L = 0x40
    _T = 0x20
    _K = 0x10
    # T/K octet: |TID|Y| KEYIDX |
    _Y = 0x20
    _KEYIDX_MASK = 0x1F
    _PICTURE_ID_M = 0x80

# Parse / rewrite failures, one per message of the references.
cdef enum:
    _E_EMPTY = -1
    _E_EXT = -2
    _E_PID = -3
    _E_PID15 = -4
    _E_TL0 = -5
    _E_TK = -6
    _E_NO_PAYLOAD = -7
    _E_OFFSET = -8
    _E_TRUNCATED = -9

_MESSAGES = {
    _E_EMPTY: "VP8: empty payload",
    _E_EXT: "VP8: truncated extension octet",
    _E_PID: "VP8: truncated picture id",
    _E_PID15: "VP8: truncated 15-bit picture id",
    _E_TL0: "VP8: truncated TL0PICIDX",
    _E_TK: "VP8: truncated T/K octet",
    _E_NO_PAYLOAD: "VP8: descriptor without payload",
    _E_OFFSET: "VP8: offset outside the buffer",
    _E_TRUNCATED: "VP8: truncated descriptor",
}

cdef long long _PID_BASE = 1 << 16
cdef long long _PID_LIMIT = 1 << 62  # picture ids (extended or not) kept below this
cdef unsigned char _EMPTY[1]  # stands in for the data pointer of an empty buffer


# Buffers a typed memoryview cannot take (read-only where a write is needed, non-contiguous)
# go to the pure-Python reference, so that they behave exactly as there.
_UNTYPED = (TypeError, ValueError, BufferError)


# -- parse ----------------------------------------------------------------------------------

cdef int _parse(const unsigned char* buf, Py_ssize_t offset, Py_ssize_t end,
                vp8_desc_t* out) noexcept nogil:
    """parse_vp8 on ``buf[offset:end]``: 0, or the _E_* code of the ParseError it raises."""
    cdef unsigned char b0, ext, p0, tk
    cdef Py_ssize_t pos
    if offset < 0 or offset >= end:
        return _E_EMPTY
    b0 = buf[offset]
    pos = offset + 1
    out.temporal_id = -1
    out.layer_sync = False
    out.picture_id = -1
    out.picture_id_15bit = False
    out.tl0picidx = -1
    out.keyidx = -1
    out.is_start_of_frame = (b0 & _S) != 0 and (b0 & _PID_MASK) == 0
    if b0 & _X:
        if pos >= end:
            return _E_EXT
        ext = buf[pos]
        pos += 1
        if ext & _I:
            if pos >= end:
                return _E_PID
            p0 = buf[pos]
            pos += 1
            if p0 & _PICTURE_ID_M:
                if pos >= end:
                    return _E_PID15
                out.picture_id = ((p0 & 0x7F) << 8) | buf[pos]
                out.picture_id_15bit = True
                pos += 1
            else:
                out.picture_id = p0
        if ext & _L:
            if pos >= end:
                return _E_TL0
            out.tl0picidx = buf[pos]
            pos += 1
        if ext & (_T | _K):
            if pos >= end:
                return _E_TK
            tk = buf[pos]
            pos += 1
            if ext & _T:
                out.temporal_id = tk >> 6
                out.layer_sync = (tk & _Y) != 0
            if ext & _K:
                out.keyidx = tk & _KEYIDX_MASK
    if pos >= end:
        return _E_NO_PAYLOAD
    # RFC 7741 §4.3: the payload header's lowest bit P is the inverse keyframe flag.
    out.is_keyframe = out.is_start_of_frame and not (buf[pos] & 0x01)
    out.size = <int>(pos - offset)
    return 0


cdef int vp8_parse(const unsigned char* buf, Py_ssize_t offset, Py_ssize_t end,
                   vp8_desc_t* out) noexcept nogil:
    return -1 if _parse(buf, offset, end, out) < 0 else 0


cdef const unsigned char* _data(const unsigned char[::1] mv) noexcept:
    return &mv[0] if mv.shape[0] > 0 else _EMPTY


cdef Py_ssize_t _window(Py_ssize_t n, object offset, object end) except -1:
    """payload_end: validate ``[offset, end)`` against a buffer of ``n`` bytes; return end."""
    if end is None:
        end = n
    if not 0 <= offset <= end <= n:
        raise ParseError("VP8: offset/end outside the buffer")
    return end


def parse_vp8(buf, offset=0, end=None):
    """Parse the descriptor at ``buf[offset:end]``: ``sfu.codecs.vp8.parse_vp8``'s contract."""
    cdef const unsigned char[::1] mv
    try:
        mv = buf
    except _UNTYPED:
        return _reference.parse_vp8(buf, offset, end)
    cdef Py_ssize_t stop = _window(mv.shape[0], offset, end)
    cdef Py_ssize_t start = offset
    cdef vp8_desc_t d
    cdef int rc = _parse(_data(mv), start, stop, &d)
    if rc < 0:
        raise ParseError(_MESSAGES[rc])
    cdef unsigned char b0 = mv[start]
    return Vp8Descriptor(
        extended=bool(b0 & _X),
        non_reference=bool(b0 & _N),
        start_of_partition=bool(b0 & _S),
        partition_index=b0 & _PID_MASK,
        picture_id=None if d.picture_id < 0 else d.picture_id,
        picture_id_15bit=d.picture_id_15bit,
        tl0picidx=None if d.tl0picidx < 0 else d.tl0picidx,
        temporal_id=None if d.temporal_id < 0 else d.temporal_id,
        layer_sync=d.layer_sync,
        keyidx=None if d.keyidx < 0 else d.keyidx,
        is_keyframe=d.is_keyframe,
    )


# -- rewrite --------------------------------------------------------------------------------

cdef int _rewrite_check(const unsigned char* buf, Py_ssize_t offset, Py_ssize_t end) noexcept nogil:
    """rewrite_vp8_descriptor's layout validation: 0, or the _E_* code it raises."""
    cdef unsigned char ext
    cdef Py_ssize_t pos
    if offset < 0 or offset >= end:
        return _E_OFFSET
    if not buf[offset] & _X:
        return 0
    pos = offset + 1
    if pos >= end:
        return _E_EXT
    ext = buf[pos]
    pos += 1
    if ext & _I:
        if pos >= end:
            return _E_PID
        pos += 2 if buf[pos] & _PICTURE_ID_M else 1
    if ext & _L:
        pos += 1
    if ext & (_T | _K):
        pos += 1
    if pos > end:
        return _E_TRUNCATED
    return 0


cdef void vp8_apply(unsigned char* buf, Py_ssize_t offset, const vp8_translation_t* t) noexcept nogil:
    cdef unsigned char ext
    cdef Py_ssize_t pos, pic_pos = -1, tl0_pos = -1, tk_pos = -1
    cdef int pic_size = 0
    cdef long long pid
    if not buf[offset] & _X:
        return
    pos = offset + 1
    ext = buf[pos]
    pos += 1
    if ext & _I:
        pic_pos = pos
        pic_size = 2 if buf[pos] & _PICTURE_ID_M else 1
        pos += pic_size
    if ext & _L:
        tl0_pos = pos
        pos += 1
    if ext & (_T | _K):
        tk_pos = pos
        pos += 1
    pid = t.picture_id
    if pid >= 0 and pic_pos >= 0:
        # Truncated to the field's width; the M bit stays as it is.
        if pic_size == 2:
            buf[pic_pos] = _PICTURE_ID_M | ((pid >> 8) & 0x7F)
            buf[pic_pos + 1] = pid & 0xFF
        else:
            buf[pic_pos] = pid & 0x7F
    if t.tl0picidx >= 0 and tl0_pos >= 0:
        buf[tl0_pos] = t.tl0picidx & 0xFF
    if t.keyidx >= 0 and ext & _K:
        buf[tk_pos] = (buf[tk_pos] & (0xFF ^ _KEYIDX_MASK)) | (t.keyidx & _KEYIDX_MASK)


cdef void _rewrite(object buf, object offset, object picture_id, object tl0picidx,
                   object keyidx) except *:
    """rewrite_vp8_descriptor with Python arguments (None: leave the field)."""
    cdef unsigned char[::1] mv
    try:
        mv = buf
    except _UNTYPED:
        _reference.rewrite_vp8_descriptor(buf, offset, picture_id, tl0picidx, keyidx)
        return
    cdef Py_ssize_t n = mv.shape[0]
    if not 0 <= offset < n:
        raise ParseError(_MESSAGES[_E_OFFSET])
    cdef Py_ssize_t off = offset
    cdef unsigned char* p = &mv[0]
    cdef int rc = _rewrite_check(p, off, n)
    if rc < 0:
        raise ParseError(_MESSAGES[rc])
    cdef vp8_translation_t t
    # Only the low bits are ever written, so masking keeps any int's effect and frees -1.
    t.picture_id = -1 if picture_id is None else picture_id & 0x7FFF
    t.tl0picidx = -1 if tl0picidx is None else tl0picidx & 0xFF
    t.keyidx = -1 if keyidx is None else keyidx & _KEYIDX_MASK
    vp8_apply(p, off, &t)


def rewrite_vp8_descriptor(buf, offset, picture_id, tl0picidx, keyidx):
    """Overwrite picture id / TL0PICIDX / KEYIDX in place, keeping the descriptor length:
    ``sfu.codecs.vp8.rewrite_vp8_descriptor``'s contract."""
    _rewrite(buf, offset, picture_id, tl0picidx, keyidx)


# -- SkipHistory ----------------------------------------------------------------------------

cdef void _skips_reset(vp8_skips_t* s, long long floor) noexcept nogil:
    s.head = 0
    s.count = 0
    s.floor = floor


cdef void _skips_skip(vp8_skips_t* s, long long x) noexcept nogil:
    """Record that ``x`` (above every input recorded so far) is skipped."""
    cdef Py_ssize_t i, k, cap
    cdef long long* grown
    if s.count:
        i = s.head + s.count - 1
        if i >= s.cap:
            i -= s.cap
        if s.ends[i] == x:
            s.ends[i] = x + 1
            return
    if s.count == s.cap and s.cap < s.limit:
        cap = s.cap * 2 if s.cap <= s.limit // 2 else s.limit
        grown = <long long*>malloc(<size_t>cap * 2 * sizeof(long long))
        if grown != NULL:  # out of memory: keep the smaller ring (older runs are forgotten)
            for k in range(s.count):
                i = s.head + k
                if i >= s.cap:
                    i -= s.cap
                grown[k] = s.starts[i]
                grown[cap + k] = s.ends[i]
            free(s.starts)
            s.starts = grown
            s.ends = grown + cap
            s.cap = cap
            s.head = 0
    if s.count == s.cap:
        s.floor = s.ends[s.head]
        s.head += 1
        if s.head == s.cap:
            s.head = 0
        s.count -= 1
    i = s.head + s.count
    if i >= s.cap:
        i -= s.cap
    s.starts[i] = x
    s.ends[i] = x + 1
    s.count += 1


cdef long long _skips_offset_after(const vp8_skips_t* s, long long x) noexcept nogil:
    """How many skipped inputs lie above ``x``; -1 (None) if ``x`` was skipped or is below
    the floor."""
    cdef Py_ssize_t k, i
    cdef long long n = 0, start, end
    if x < s.floor:
        return -1
    k = s.count - 1
    while k >= 0:
        i = s.head + k
        if i >= s.cap:
            i -= s.cap
        end = s.ends[i]
        if end <= x:
            break
        start = s.starts[i]
        if start <= x:
            return -1
        n += end - start
        k -= 1
    return n


# -- munger ---------------------------------------------------------------------------------

cdef void vp8_switch_source(vp8_munger_t* m) noexcept nogil:
    m.pending = True


cdef void _start(vp8_munger_t* m, long long source) noexcept nogil:
    m.pending = False
    m.has_source = source >= 0
    m.source = source
    m.has_pid_offset = False
    m.has_tl0_offset = False
    m.has_key_offset = False
    m.hi_dropped = False
    m.switches += 1


cdef void _pid_start(vp8_munger_t* m, long long pid, bint wide) noexcept nogil:
    cdef long long out
    m.pid_mask = 0x7FFF if wide else 0x7F
    m.pid_half = 0x4000 if wide else 0x40
    out = m.last_pid + 1 if m.has_last_pid else _PID_BASE + pid
    m.pid_offset = out - pid
    m.has_pid_offset = True
    m.first_pid = pid
    m.hi_pid = pid - 1
    m.hi_dropped = False
    _skips_reset(&m.skips, pid)


cdef int vp8_translate(vp8_munger_t* m, const vp8_desc_t* desc, long long source,
                       vp8_translation_t* out) noexcept nogil:
    cdef long long pid, hi, half, p, d, offset, extra
    cdef int tl0, key
    cdef bint newest = True  # an older picture's packet must not move the "last" counters
    if m.pending:
        _start(m, source)
    elif source >= 0 and not (m.has_source and source == m.source):
        if not m.has_source:
            m.source = source
            m.has_source = True
        else:
            _start(m, source)
    out.picture_id = -1
    out.tl0picidx = -1
    out.keyidx = -1
    pid = desc.picture_id
    if pid >= 0:
        if not m.has_pid_offset:
            _pid_start(m, pid, desc.picture_id_15bit)
        hi = m.hi_pid
        half = m.pid_half
        p = hi + ((pid - hi + half) & m.pid_mask) - half
        d = p - hi
        offset = m.pid_offset
        if d > 0:
            m.hi_pid = p
            m.hi_dropped = False
            out.picture_id = p + offset
            m.last_pid = out.picture_id
            m.has_last_pid = True
        elif d == 0:
            if m.hi_dropped:
                m.rejected += 1
                return 0
            out.picture_id = p + offset
        else:
            extra = -1 if p < m.first_pid else _skips_offset_after(&m.skips, p)
            if extra < 0:
                m.rejected += 1
                return 0
            out.picture_id = p + offset + extra
            newest = False
    tl0 = desc.tl0picidx
    if tl0 >= 0:
        if not m.has_tl0_offset:
            m.tl0_offset = 0 if m.last_tl0 < 0 else (m.last_tl0 + 1 - tl0) & 0xFF
            m.has_tl0_offset = True
        out.tl0picidx = (tl0 + m.tl0_offset) & 0xFF
        if newest:
            m.last_tl0 = out.tl0picidx
    key = desc.keyidx
    if key >= 0:
        if not m.has_key_offset:
            m.key_offset = 0 if m.last_keyidx < 0 else (m.last_keyidx + 1 - key) & 0x1F
            m.has_key_offset = True
        out.keyidx = (key + m.key_offset) & 0x1F
        if newest:
            m.last_keyidx = out.keyidx
    return 1


cdef void vp8_drop(vp8_munger_t* m, const vp8_desc_t* desc) noexcept nogil:
    cdef long long pid = desc.picture_id, hi, half, p
    if m.pending or pid < 0 or not m.has_pid_offset:
        return
    hi = m.hi_pid
    half = m.pid_half
    p = hi + ((pid - hi + half) & m.pid_mask) - half
    if p > hi:
        m.hi_pid = p
        m.hi_dropped = True
        _skips_skip(&m.skips, p)
        m.pid_offset -= 1
        m.dropped_pictures += 1


cdef int _from_python(object desc, vp8_desc_t* out, bint full) except -1:
    """Fill the fields translate / drop read from a ``Vp8Descriptor`` (``full``: all of them).

    TL0PICIDX and KEYIDX only matter modulo 256 / 32, so they are masked; picture ids must be
    non-negative (as parsed ones are) since -1 stands for None.
    """
    pid = desc.picture_id
    if pid is None:
        out.picture_id = -1
    else:
        if not 0 <= pid < _PID_LIMIT:
            raise ValueError("picture_id must be None or a non-negative int below 2**62")
        out.picture_id = pid
    if not full:
        return 0
    out.picture_id_15bit = bool(desc.picture_id_15bit)
    tl0 = desc.tl0picidx
    out.tl0picidx = -1 if tl0 is None else tl0 & 0xFF
    key = desc.keyidx
    out.keyidx = -1 if key is None else key & _KEYIDX_MASK
    return 0


cdef long long _source(object source) except? -2:
    if source is None:
        return -1
    if not 0 <= source < (1 << 63):
        raise ValueError("source must be None or a non-negative int below 2**63")
    return source


cdef object _translation(const vp8_translation_t* t):
    return Vp8Translation(
        None if t.picture_id < 0 else t.picture_id,
        None if t.tl0picidx < 0 else t.tl0picidx,
        None if t.keyidx < 0 else t.keyidx,
    )


cdef class Vp8Munger:
    """Keeps one subscription's VP8 picture id, TL0PICIDX and KEYIDX continuous
    (see the reference ``sfu.core.vp8_munger.Vp8Munger``)."""

    def __cinit__(self):
        self.m.skips.starts = NULL

    def __init__(self, history=64):
        """``history`` bounds the runs of dropped pictures kept for placing late packets."""
        if history < 1:
            raise ValueError("limit must be at least 1")
        cdef Py_ssize_t limit = min(history, 1 << 40)
        cdef Py_ssize_t cap = min(limit, 64)
        cdef long long* runs = <long long*>malloc(<size_t>cap * 2 * sizeof(long long))
        if runs == NULL:
            raise MemoryError()
        free(self.m.skips.starts)
        self.m.skips.starts = runs
        self.m.skips.ends = runs + cap
        self.m.skips.cap = cap
        self.m.skips.limit = limit
        _skips_reset(&self.m.skips, 0)
        self.m.pending = True
        self.m.has_source = False
        self.m.source = -1
        self.m.has_pid_offset = False
        self.m.pid_offset = 0
        self.m.pid_mask = 0x7FFF
        self.m.pid_half = 0x4000
        self.m.first_pid = 0
        self.m.hi_pid = 0
        self.m.hi_dropped = False
        self.m.has_tl0_offset = False
        self.m.tl0_offset = 0
        self.m.has_key_offset = False
        self.m.key_offset = 0
        self.m.has_last_pid = False
        self.m.last_pid = 0
        self.m.last_tl0 = -1
        self.m.last_keyidx = -1
        self.m.switches = 0
        self.m.dropped_pictures = 0
        self.m.rejected = 0

    def __dealloc__(self):
        free(self.m.skips.starts)
        self.m.skips.starts = NULL

    @property
    def last_picture_id(self):
        """Extended picture id of the newest outgoing picture (None before the first)."""
        return self.m.last_pid if self.m.has_last_pid else None

    @property
    def last_tl0picidx(self):
        """TL0PICIDX of the newest outgoing packet that carried one."""
        return None if self.m.last_tl0 < 0 else self.m.last_tl0

    @property
    def last_keyidx(self):
        """KEYIDX of the newest outgoing packet that carried one."""
        return None if self.m.last_keyidx < 0 else self.m.last_keyidx

    @property
    def switches(self) -> int:
        """Sources started (the first one included)."""
        return self.m.switches

    @switches.setter
    def switches(self, long long value):
        self.m.switches = value

    @property
    def dropped_pictures(self) -> int:
        """Whole pictures removed from the outgoing picture id sequence."""
        return self.m.dropped_pictures

    @dropped_pictures.setter
    def dropped_pictures(self, long long value):
        self.m.dropped_pictures = value

    @property
    def rejected(self) -> int:
        """Packets refused: from before a switch, too old, or part of a dropped picture."""
        return self.m.rejected

    @rejected.setter
    def rejected(self, long long value):
        self.m.rejected = value

    def switch_source(self) -> None:
        """The next packet given to :meth:`translate` starts a new source (a keyframe)."""
        vp8_switch_source(&self.m)

    def translate(self, desc, source=None):
        """Outgoing picture id / TL0PICIDX / KEYIDX (a ``Vp8Translation``) for a packet about
        to be forwarded, or None when it must not be forwarded."""
        cdef vp8_desc_t d
        cdef vp8_translation_t t
        _from_python(desc, &d, True)
        if not vp8_translate(&self.m, &d, _source(source), &t):
            return None
        return _translation(&t)

    def drop(self, desc) -> None:
        """A packet deliberately not forwarded (e.g. its temporal layer is filtered)."""
        cdef vp8_desc_t d
        _from_python(desc, &d, False)
        vp8_drop(&self.m, &d)

    @staticmethod
    def apply(buf, offset, t) -> None:
        """Write ``t`` into the descriptor at ``buf[offset]`` in place (its length is kept)."""
        _rewrite(buf, offset, t.picture_id, t.tl0picidx, t.keyidx)

    def munge(self, buf, offset=0, end=None, desc=None, source=None) -> bool:
        """Parse (unless ``desc`` is given), translate and rewrite the descriptor at
        ``buf[offset:end]`` in place; False when the packet must not be forwarded.
        Raises ParseError on a malformed descriptor."""
        cdef vp8_desc_t d
        cdef vp8_translation_t t
        cdef const unsigned char[::1] mv
        cdef Py_ssize_t stop
        cdef int rc
        if desc is None:
            try:
                mv = buf
            except _UNTYPED:
                return self.munge(buf, offset, end, _reference.parse_vp8(buf, offset, end), source)
            stop = _window(mv.shape[0], offset, end)
            rc = _parse(_data(mv), offset, stop, &d)
            if rc < 0:
                raise ParseError(_MESSAGES[rc])
        else:
            _from_python(desc, &d, True)
        if not vp8_translate(&self.m, &d, _source(source), &t):
            return False
        _rewrite(
            buf,
            offset,
            None if t.picture_id < 0 else t.picture_id,
            None if t.tl0picidx < 0 else t.tl0picidx,
            None if t.keyidx < 0 else t.keyidx,
        )
        return True
