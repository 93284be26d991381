"""Pure-Python reference of the RTP header rewrite kernel (same contract as ``_rewrite.pyx``).

The SFU gives every subscriber its own SSRC, sequence numbers, timestamps and payload type;
this kernel copies one packet into a preallocated buffer with those four fields (and
optionally the marker bit) replaced. Payload and header extensions are copied untouched, so
end-to-end encrypted media passes through unchanged.
"""

from __future__ import annotations

from typing import TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview

_U64 = 1 << 64


def rewrite_rtp(
    src: Buffer,
    dst: Buffer,
    ssrc: int,
    sequence_number: int,
    timestamp: int,
    payload_type: int,
    marker: int,
) -> int:
    """Copy RTP packet ``src`` into ``dst`` with its header fields rewritten.

    ``ssrc``, ``sequence_number`` and ``timestamp`` may be extended (up to 64-bit) values; they
    are truncated to 32/16/32 bits on the wire. ``marker`` is 0 or 1, or -1 to keep the source's.
    Returns the number of bytes written, -1 if ``src`` is not well-formed RTP (RFC 3550 §5.1:
    version 2, CSRC list, extension and padding within the packet), or -2 if ``dst`` is too small.
    Raises OverflowError for values outside 0..2**64-1 and ValueError for a bad payload type or
    marker, identically to the compiled kernel.
    """
    for value in (ssrc, sequence_number, timestamp):
        if not 0 <= value < _U64:
            raise OverflowError("value out of range for a 64-bit unsigned integer")
    if not 0 <= payload_type <= 127:
        raise ValueError("payload_type must be in 0..127")
    if marker not in (-1, 0, 1):
        raise ValueError("marker must be -1 (keep), 0 or 1")
    s = memoryview(src).cast("B")
    d = memoryview(dst).cast("B")
    n = len(s)
    if n < 12:
        return -1
    b0 = s[0]
    if b0 >> 6 != 2:
        return -1
    header = 12 + 4 * (b0 & 0x0F)
    if n < header:
        return -1
    if b0 & 0x10:
        if n < header + 4:
            return -1
        header += 4 + 4 * ((s[header + 2] << 8) | s[header + 3])
        if n < header:
            return -1
    if b0 & 0x20:
        pad = s[n - 1]
        if pad == 0 or header + pad > n:
            return -1
    if len(d) < n:
        return -2
    d[:n] = s
    mbit = (s[1] & 0x80) if marker < 0 else (marker << 7)
    d[1] = mbit | payload_type
    seq = sequence_number & 0xFFFF
    d[2] = seq >> 8
    d[3] = seq & 0xFF
    d[4:8] = (timestamp & 0xFFFFFFFF).to_bytes(4, "big")
    d[8:12] = (ssrc & 0xFFFFFFFF).to_bytes(4, "big")
    return n
