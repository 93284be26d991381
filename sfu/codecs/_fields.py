"""Wire fields shared by the codec payload parsers (stdlib only, per-packet hot path).

* the ``[offset, end)`` payload window check of ``parse_vp8`` / ``parse_vp9`` / ``parse_h264``;
* the VP8 / VP9 picture id (RFC 7741 §4.2, RFC 9628 §4.2): one octet ``|M| 7 bits |``,
  or with M=1 two octets ``|M| 15 bits |``. Both codecs lay it out identically.

Plain functions that allocate nothing on success; ``codec`` ("VP8", "VP9", "H.264") only
prefixes the ParseError / ValueError message, so it is formatted on the error path only.
"""

from __future__ import annotations

from typing import Protocol

from sfu.packet.errors import ParseError

BytesLike = bytes | bytearray | memoryview

#: First picture id octet: the M bit selects the 15-bit (two-octet) form.
PICTURE_ID_M = 0x80


class HasPictureId(Protocol):
    """A descriptor with the two picture id fields (``Vp8Descriptor``, ``Vp9Descriptor``)."""

    picture_id: int | None
    picture_id_15bit: bool


def payload_end(buf: BytesLike, offset: int, end: int | None, codec: str) -> int:
    """Validate the ``[offset, end)`` window of ``buf`` and return ``end`` (``None``: all)."""
    n = len(buf)
    if end is None:
        end = n
    if not 0 <= offset <= end <= n:
        raise ParseError(f"{codec}: offset/end outside the buffer")
    return end


def read_picture_id(d: HasPictureId, buf: BytesLike, pos: int, end: int, codec: str) -> int:
    """Parse the picture id at ``buf[pos]`` into ``d``; return the position after it."""
    if pos >= end:
        raise ParseError(f"{codec}: truncated picture id")
    p0 = buf[pos]
    pos += 1
    if p0 & PICTURE_ID_M:
        if pos >= end:
            raise ParseError(f"{codec}: truncated 15-bit picture id")
        d.picture_id = ((p0 & 0x7F) << 8) | buf[pos]
        d.picture_id_15bit = True
        pos += 1
    else:
        d.picture_id = p0
    return pos


def append_picture_id(out: bytearray, picture_id: int, wide: bool) -> None:
    """Serialize ``picture_id`` in its 15-bit (``wide``) or 7-bit form; ValueError if too big."""
    if wide:
        if not 0 <= picture_id <= 0x7FFF:
            raise ValueError("15-bit picture_id out of range")
        out += bytes((PICTURE_ID_M | (picture_id >> 8), picture_id & 0xFF))
    else:
        if not 0 <= picture_id <= 0x7F:
            raise ValueError("7-bit picture_id out of range")
        out.append(picture_id)


def picture_id_size(buf: BytesLike, pos: int, end: int, codec: str) -> int:
    """Octets (1 or 2) of the picture id at ``buf[pos]``, from its M bit."""
    if pos >= end:
        raise ParseError(f"{codec}: truncated picture id")
    return 2 if buf[pos] & PICTURE_ID_M else 1


def write_picture_id(buf: bytearray | memoryview, pos: int, size: int, picture_id: int) -> None:
    """Overwrite the ``size``-octet picture id at ``buf[pos]``, truncating the value to fit.

    The M bit is kept as it is (set for 2 octets, clear for 1).
    """
    if size == 2:
        buf[pos] = PICTURE_ID_M | ((picture_id >> 8) & 0x7F)
        buf[pos + 1] = picture_id & 0xFF
    else:
        buf[pos] = picture_id & 0x7F
