# cython: language_level=3
"""Compiled RTP header rewrite kernel; the contract is documented in ``_rewrite_py.py``."""

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


def rewrite_rtp(
    const uint8_t[::1] src,
    uint8_t[::1] dst,
    uint64_t ssrc,
    uint64_t sequence_number,
    uint64_t timestamp,
    int payload_type,
    int marker,
):
    """Copy RTP packet ``src`` into ``dst`` with SSRC, sequence, timestamp, PT (and marker) rewritten."""
    cdef Py_ssize_t n = src.shape[0]
    cdef Py_ssize_t header
    cdef uint8_t b0, mbit, pad
    if payload_type < 0 or payload_type > 127:
        raise ValueError("payload_type must be in 0..127")
    if marker < -1 or marker > 1:
        raise ValueError("marker must be -1 (keep), 0 or 1")
    if n < 12:
        return -1
    b0 = src[0]
    if (b0 >> 6) != 2:
        return -1
    header = 12 + 4 * (b0 & 0x0F)
    if n < header:
        return -1
    if b0 & 0x10:
        if n < header + 4:
            return -1
        header += 4 + 4 * ((<Py_ssize_t>src[header + 2] << 8) | src[header + 3])
        if n < header:
            return -1
    if b0 & 0x20:
        pad = src[n - 1]
        if pad == 0 or header + pad > n:
            return -1
    if dst.shape[0] < n:
        return -2
    with nogil:
        memcpy(&dst[0], &src[0], n)
        if marker < 0:
            mbit = src[1] & 0x80
        else:
            mbit = <uint8_t>(marker << 7)
        dst[1] = mbit | <uint8_t>payload_type
        dst[2] = <uint8_t>(sequence_number >> 8)
        dst[3] = <uint8_t>sequence_number
        dst[4] = <uint8_t>(timestamp >> 24)
        dst[5] = <uint8_t>(timestamp >> 16)
        dst[6] = <uint8_t>(timestamp >> 8)
        dst[7] = <uint8_t>timestamp
        dst[8] = <uint8_t>(ssrc >> 24)
        dst[9] = <uint8_t>(ssrc >> 16)
        dst[10] = <uint8_t>(ssrc >> 8)
        dst[11] = <uint8_t>ssrc
    return n
