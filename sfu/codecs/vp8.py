"""VP8 RTP payload descriptor (RFC 7741 §4.2): parse, serialize and in-place rewrite.

The SFU only ever reads the descriptor and the first byte of the VP8 payload header
(RFC 7741 §4.3) for keyframe detection; the VP8 bitstream itself is never decoded, so
end-to-end encrypted payloads pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.codecs._fields import (
    append_picture_id,
    payload_end,
    picture_id_size,
    read_picture_id,
    write_picture_id,
)
from sfu.packet.errors import ParseError

__all__ = [
    "VP8_MAX_DESCRIPTOR_SIZE",
    "Vp8Descriptor",
    "parse_vp8",
    "rewrite_vp8_descriptor",
]

BytesLike = bytes | bytearray | memoryview

#: Largest possible descriptor: required byte, X byte, 2-byte picture id, TL0PICIDX, T/K byte.
VP8_MAX_DESCRIPTOR_SIZE = 6

# Required octet, RFC 7741 §4.2: |X|R|N|S|R| PID |
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


@dataclass(slots=True)
class Vp8Descriptor:
    """One parsed VP8 payload descriptor; ``None`` marks an absent optional field.

    Reserved bits are ignored on parse and written as zero, as are the TID/Y bits when
    T=0 and the KEYIDX bits when K=0 (RFC 7741 §4.2 says receivers ignore them).
    """

    extended: bool = False
    """X bit: the extension octet is present (even if it announces no field)."""
    non_reference: bool = False
    """N bit: the frame can be discarded without affecting any other frame."""
    start_of_partition: bool = False
    """S bit: the first payload octet starts a VP8 partition."""
    partition_index: int = 0
    """PID: 3-bit index of the partition this packet belongs to."""
    picture_id: int | None = None
    """I: running picture index, 7 or 15 bits wide (see ``picture_id_15bit``)."""
    picture_id_15bit: bool = False
    """M bit: the picture id uses the 2-octet (15-bit) form."""
    tl0picidx: int | None = None
    """L: 8-bit running index of the temporal base layer frames."""
    temporal_id: int | None = None
    """T: 2-bit temporal layer index."""
    layer_sync: bool = False
    """Y bit: the frame depends only on the base layer (meaningful only when T=1)."""
    keyidx: int | None = None
    """K: 5-bit running index of keyframes (for decoders that need the key)."""
    is_keyframe: bool = False
    """Derived on parse from the payload header P bit (§4.3); not part of the descriptor."""

    @property
    def size(self) -> int:
        """Descriptor length in octets; the VP8 payload starts this far in."""
        n = 1
        if self.extended:
            n += 1
            if self.picture_id is not None:
                n += 2 if self.picture_id_15bit else 1
            if self.tl0picidx is not None:
                n += 1
            if self.temporal_id is not None or self.keyidx is not None:
                n += 1
        return n

    @property
    def is_start_of_frame(self) -> bool:
        """The packet carries the first octet of a frame (S=1 and PID=0)."""
        return self.start_of_partition and self.partition_index == 0

    def serialize(self) -> bytes:
        """Encode the descriptor (without payload); raises ValueError on inconsistent fields."""
        has_ext = (
            self.picture_id is not None
            or self.tl0picidx is not None
            or self.temporal_id is not None
            or self.keyidx is not None
        )
        if has_ext and not self.extended:
            raise ValueError("extension fields set but extended (X) is False")
        if not 0 <= self.partition_index <= _PID_MASK:
            raise ValueError("partition_index out of range")
        out = bytearray()
        first = self.partition_index
        if self.extended:
            first |= _X
        if self.non_reference:
            first |= _N
        if self.start_of_partition:
            first |= _S
        out.append(first)
        if not self.extended:
            return bytes(out)
        ext = 0
        if self.picture_id is not None:
            ext |= _I
        if self.tl0picidx is not None:
            ext |= _L
        if self.temporal_id is not None:
            ext |= _T
        if self.keyidx is not None:
            ext |= _K
        out.append(ext)
        if self.picture_id is not None:
            append_picture_id(out, self.picture_id, self.picture_id_15bit)
        if self.tl0picidx is not None:
            if not 0 <= self.tl0picidx <= 0xFF:
                raise ValueError("tl0picidx out of range")
            out.append(self.tl0picidx)
        if self.temporal_id is not None or self.keyidx is not None:
            tk = 0
            if self.temporal_id is not None:
                if not 0 <= self.temporal_id <= 3:
                    raise ValueError("temporal_id out of range")
                tk = self.temporal_id << 6
                if self.layer_sync:
                    tk |= _Y
            if self.keyidx is not None:
                if not 0 <= self.keyidx <= _KEYIDX_MASK:
                    raise ValueError("keyidx out of range")
                tk |= self.keyidx
            out.append(tk)
        return bytes(out)


def parse_vp8(buf: BytesLike, offset: int = 0, end: int | None = None) -> Vp8Descriptor:
    """Parse the descriptor at ``buf[offset:end]`` (an RTP payload) without copying it.

    At least one VP8 payload octet must follow the descriptor (an empty payload carries
    nothing to forward, and the first octet is needed for keyframe detection).
    """
    end = payload_end(buf, offset, end, "VP8")
    if offset >= end:
        raise ParseError("VP8: empty payload")
    b0 = buf[offset]
    pos = offset + 1
    d = Vp8Descriptor(
        non_reference=bool(b0 & _N),
        start_of_partition=bool(b0 & _S),
        partition_index=b0 & _PID_MASK,
    )
    if b0 & _X:
        d.extended = True
        if pos >= end:
            raise ParseError("VP8: truncated extension octet")
        ext = buf[pos]
        pos += 1
        if ext & _I:
            pos = read_picture_id(d, buf, pos, end, "VP8")
        if ext & _L:
            if pos >= end:
                raise ParseError("VP8: truncated TL0PICIDX")
            d.tl0picidx = buf[pos]
            pos += 1
        if ext & (_T | _K):
            if pos >= end:
                raise ParseError("VP8: truncated T/K octet")
            tk = buf[pos]
            pos += 1
            if ext & _T:
                d.temporal_id = tk >> 6
                d.layer_sync = bool(tk & _Y)
            if ext & _K:
                d.keyidx = tk & _KEYIDX_MASK
    if pos >= end:
        raise ParseError("VP8: descriptor without payload")
    # RFC 7741 §4.3: the payload header is only present at the start of partition 0;
    # its lowest bit P is the *inverse* keyframe flag.
    d.is_keyframe = d.is_start_of_frame and not buf[pos] & 0x01
    return d


def rewrite_vp8_descriptor(
    buf: bytearray | memoryview,
    offset: int,
    picture_id: int | None,
    tl0picidx: int | None,
    keyidx: int | None,
) -> None:
    """Overwrite picture id / TL0PICIDX / KEYIDX in place, keeping the descriptor length.

    Used when switching simulcast layers to keep the receiver's sequence continuous.
    Values are truncated to the field's existing width (7 or 15 bits, 8, 5); a ``None``
    value, or a field the descriptor does not carry, is left alone. The M bit, the TID/Y
    bits and every VP8 payload octet are never touched, so this is safe for end-to-end
    encrypted payloads. Raises ParseError if the descriptor at ``offset`` is truncated.
    """
    end = len(buf)
    if not 0 <= offset < end:
        raise ParseError("VP8: offset outside the buffer")
    b0 = buf[offset]
    if not b0 & _X:
        return
    pos = offset + 1
    if pos >= end:
        raise ParseError("VP8: truncated extension octet")
    ext = buf[pos]
    pos += 1
    # Validate the whole layout before writing, so a truncated buffer is never half-edited.
    pic_pos = tl0_pos = tk_pos = -1
    pic_size = 0
    if ext & _I:
        pic_pos = pos
        pic_size = picture_id_size(buf, pos, end, "VP8")
        pos += pic_size
    if ext & _L:
        tl0_pos = pos
        pos += 1
    if ext & (_T | _K):
        tk_pos = pos
        pos += 1
    if pos > end:
        raise ParseError("VP8: truncated descriptor")
    if picture_id is not None and pic_pos >= 0:
        write_picture_id(buf, pic_pos, pic_size, picture_id)
    if tl0picidx is not None and tl0_pos >= 0:
        buf[tl0_pos] = tl0picidx & 0xFF
    if keyidx is not None and ext & _K:
        buf[tk_pos] = (buf[tk_pos] & ~_KEYIDX_MASK & 0xFF) | (keyidx & _KEYIDX_MASK)
