# cython: language_level=3
"""Compiled RTP header rewrite kernel; the contract is documented in ``_rewrite_py.py``.

Buffers are taken through the raw buffer protocol (PyObject_GetBuffer) rather than typed
memoryviews: acquiring a typed memoryview costs more than the rewrite itself.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint8_t, uint64_t


def rewrite_rtp(
    object src,
    object dst,
    uint64_t ssrc,
    uint64_t sequence_number,
    uint64_t timestamp,
    int payload_type,
    int marker,
):
    """Copy RTP packet ``src`` into ``dst`` with SSRC, sequence, timestamp, PT (and marker) rewritten."""
    cdef Py_buffer sb
    cdef Py_buffer db
    cdef Py_ssize_t result
    if payload_type < 0 or payload_type > 127:
        raise ValueError("payload_type must be in 0..127")
    if marker < -1 or marker > 1:
        raise ValueError("marker must be -1 (keep), 0 or 1")
    PyObject_GetBuffer(src, &sb, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(dst, &db, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            result = rtp_rewrite(
                <const uint8_t*>sb.buf, sb.len, <uint8_t*>db.buf, db.len,
                ssrc, sequence_number, timestamp, payload_type, marker,
            )
        finally:
            PyBuffer_Release(&db)
    finally:
        PyBuffer_Release(&sb)
    return result
