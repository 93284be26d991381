# cython: language_level=3
# C-level RTP header rewrite, shared by rewrite_rtp and the munger (_munger.pyx): validates the
# framing and writes ``s`` into ``d`` with SSRC, sequence number, timestamp, payload type and
# (unless ``marker`` is -1) the marker bit replaced. Returns the length, -1 (MALFORMED) or
# -2 (NO_ROOM).
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef inline Py_ssize_t rtp_rewrite(
    const uint8_t* s, Py_ssize_t n, uint8_t* d, Py_ssize_t dn,
    uint64_t ssrc, uint64_t seq, uint64_t ts, int payload_type, int marker,
) noexcept nogil:
    cdef Py_ssize_t header
    cdef uint8_t b0, mbit, pad
    if n < 12:
        return -1
    b0 = s[0]
    if (b0 >> 6) != 2:
        return -1
    header = 12 + 4 * (b0 & 0x0F)
    if n < header:
        return -1
    if b0 & 0x10:
        if n < header + 4:
            return -1
        header += 4 + 4 * ((<Py_ssize_t>s[header + 2] << 8) | s[header + 3])
        if n < header:
            return -1
    if b0 & 0x20:
        pad = s[n - 1]
        if pad == 0 or header + pad > n:
            return -1
    if dn < n:
        return -2
    mbit = (s[1] & 0x80) if marker < 0 else <uint8_t>(marker << 7)
    memcpy(d, s, n)
    d[1] = mbit | <uint8_t>payload_type
    d[2] = <uint8_t>(seq >> 8)
    d[3] = <uint8_t>seq
    d[4] = <uint8_t>(ts >> 24)
    d[5] = <uint8_t>(ts >> 16)
    d[6] = <uint8_t>(ts >> 8)
    d[7] = <uint8_t>ts
    d[8] = <uint8_t>(ssrc >> 24)
    d[9] = <uint8_t>(ssrc >> 16)
    d[10] = <uint8_t>(ssrc >> 8)
    d[11] = <uint8_t>ssrc
    return n
