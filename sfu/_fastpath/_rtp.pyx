# cython: language_level=3
"""Compiled one-pass RTP header parse (``_rtp.pxd``), with Python entry points that have the
reference's contract (``sfu.packet.rtp.parse_rtp`` and ``find_extension``), so the differential
tests can hold the C parse the forwarder uses to the pure-Python one.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t

from sfu.packet.errors import ParseError
from sfu.packet.rtp import RtpView

__all__ = ["find_extension", "parse_rtp", "rtp_defect"]


def parse_rtp(packet):
    """``sfu.packet.rtp.parse_rtp`` on the C parse: an RtpView, or ParseError."""
    cdef Py_buffer b
    cdef rtp_view_t v
    cdef const uint8_t* p
    cdef Py_ssize_t pos, vpos = 0, vlen = 0
    cdef int ext_id = 0
    cdef dict extensions = {}
    PyObject_GetBuffer(packet, &b, PyBUF_SIMPLE)
    try:
        p = <const uint8_t*>b.buf
        if rtp_parse(&v, p, b.len, 0, 0) != RTP_OK:
            raise ParseError("not an RTP packet")
        if v.payload_offset < 0 or v.ext_bad:
            raise ParseError("malformed RTP CSRC list or header extension block")
        if v.has_ext:
            pos = v.ext_start
            while rtp_ext_next(p, v.ext_profile, &pos, v.ext_end, &ext_id, &vpos, &vlen) > 0:
                if ext_id not in extensions:  # the first element of an id, as find_extension
                    extensions[ext_id] = (<const char*>p)[vpos:vpos + vlen]
        return RtpView(v.ssrc, v.seq, v.timestamp, v.payload_type, v.marker, v.payload_offset,
                       v.payload_end, extensions)
    finally:
        PyBuffer_Release(&b)


def find_extension(packet, ext_id):
    """``sfu.packet.rtp.find_extension`` through the forwarder's wanted-element lookup."""
    cdef Py_buffer b
    cdef rtp_view_t v
    cdef int r
    if ext_id <= 0:
        return None
    cdef int want = ext_id if ext_id < 256 else 256  # no element has an id above 255
    PyObject_GetBuffer(packet, &b, PyBUF_SIMPLE)
    try:
        if rtp_parse(&v, <const uint8_t*>b.buf, b.len, want, 0) != RTP_OK:
            raise ParseError("not an RTP packet")
        r = rtp_ext_find(&v, &v.twcc)
        if r < 0:
            raise ParseError("malformed RTP header extension block")
        if r == 0:
            return None
        return (<const char*>b.buf)[v.twcc.pos:v.twcc.pos + v.twcc.len]
    finally:
        PyBuffer_Release(&b)


def rtp_defect(packet):
    """``sfu.packet.rtp.rtp_defect`` on the C parse (``rtp_view_t.defect``)."""
    cdef Py_buffer b
    cdef rtp_view_t v
    PyObject_GetBuffer(packet, &b, PyBUF_SIMPLE)
    try:
        rtp_parse(&v, <const uint8_t*>b.buf, b.len, 0, 0)
        return v.defect
    finally:
        PyBuffer_Release(&b)
