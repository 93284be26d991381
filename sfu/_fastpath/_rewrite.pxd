# cython: language_level=3
# C-level RTP header rewrite, shared by rewrite_rtp and the munger (_munger.pyx): writes ``s``
# into ``d`` with SSRC, sequence number, timestamp, payload type and (unless ``marker`` is -1)
# the marker bit replaced. Returns the length, -1 (MALFORMED) or -2 (NO_ROOM).
#
# ``rtp_rewrite_view`` takes the framing from a parse already made (``_rtp.pxd``: the forwarder
# parses each packet once); ``rtp_rewrite`` parses first, for callers that hold only bytes.
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy

from sfu._fastpath._rtp cimport RTP_OK, rtp_parse, rtp_rewritable, rtp_view_t


cdef inline Py_ssize_t rtp_rewrite_view(
    const rtp_view_t* v, const uint8_t* s, uint8_t* d, Py_ssize_t dn,
    uint64_t ssrc, uint64_t seq, uint64_t ts, int payload_type, int marker,
) noexcept nogil:
    """The rewrite of ``s`` (``v.size`` bytes), whose parse ``v`` returned RTP_OK."""
    cdef Py_ssize_t n = v.size
    cdef uint8_t mbit
    if not rtp_rewritable(v):
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


cdef inline Py_ssize_t rtp_rewrite(
    const uint8_t* s, Py_ssize_t n, uint8_t* d, Py_ssize_t dn,
    uint64_t ssrc, uint64_t seq, uint64_t ts, int payload_type, int marker,
) noexcept nogil:
    cdef rtp_view_t v
    if rtp_parse(&v, s, n, 0, 0) != RTP_OK:
        return -1
    return rtp_rewrite_view(&v, s, d, dn, ssrc, seq, ts, payload_type, marker)
