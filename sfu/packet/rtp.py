"""RTP packets (RFC 3550 §5.1) and RFC 8285 header extension blocks.

Parsing keeps every raw field (CSRCs, the extension block body, padding bytes) so that
``RtpPacket.parse(x).serialize() == x`` for any well-formed datagram, including real captures
whose extension block contains padding bytes or an unknown profile.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from sfu.packet.errors import ParseError

__all__ = [
    "ONE_BYTE_PROFILE",
    "RTP_DEFECTS",
    "RTP_DEFECT_CSRC",
    "RTP_DEFECT_EXT_BLOCK",
    "RTP_DEFECT_EXT_ELEMENT",
    "RTP_DEFECT_EXT_PROFILE",
    "RTP_DEFECT_HEADER",
    "RTP_DEFECT_NONE",
    "RTP_DEFECT_NO_PAYLOAD",
    "RTP_DEFECT_PADDING",
    "RTP_HEADER_SIZE",
    "TWO_BYTE_PROFILE",
    "Extensions",
    "RtpPacket",
    "RtpView",
    "build_extension_block",
    "find_extension",
    "is_two_byte_profile",
    "parse_extension_elements",
    "parse_rtp",
    "payload_offset",
    "peek_rtp_header",
    "rtp_defect",
]

RTP_HEADER_SIZE = 12
"""Size of the fixed RTP header (RFC 3550 §5.1), without CSRCs or extensions."""

ONE_BYTE_PROFILE = 0xBEDE
"""'defined by profile' value of the one-byte header extension form (RFC 8285 §4.2)."""

TWO_BYTE_PROFILE = 0x1000
"""Two-byte header extension form (RFC 8285 §4.3); the low 4 bits are 'appbits'."""

# What is wrong with an RTP packet, as :func:`rtp_defect` (and the compiled parse's
# ``rtp_view_t.defect``) names it: the first check that fails, in wire order.
RTP_DEFECT_NONE: Final = 0
RTP_DEFECT_HEADER: Final = 1  # shorter than the fixed header, or version != 2
RTP_DEFECT_CSRC: Final = 2  # the CSRC list overruns the packet
RTP_DEFECT_EXT_BLOCK: Final = 3  # the extension block's header or body overruns the packet
RTP_DEFECT_EXT_PROFILE: Final = 4  # a block of neither RFC 8285 form (0xBEDE, 0x100X)
RTP_DEFECT_EXT_ELEMENT: Final = 5  # an RFC 8285 element overruns its block
RTP_DEFECT_PADDING: Final = 6  # P set with a count of 0 or more than follows the header
RTP_DEFECT_NO_PAYLOAD: Final = 7  # nothing after the header and no padding (a bare header)

#: Drop-reason names of the defects (index = code; 0 is no defect): metric label values.
RTP_DEFECTS: Final = (
    "",
    "rtp_header",
    "rtp_csrc_overrun",
    "rtp_extension_block",
    "rtp_extension_profile",
    "rtp_extension_element",
    "rtp_padding",
    "rtp_no_payload",
)

_HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_PEEK = struct.Struct("!BBHII")

_ONE_BYTE_MAX_ID = 14
_ONE_BYTE_MAX_LEN = 16
_ONE_BYTE_STOP_ID = 15  # RFC 8285 §4.2: reserved, stops processing of the whole block
_TWO_BYTE_MAX_LEN = 255


def is_two_byte_profile(profile: int) -> bool:
    """True for the 0x100X 'defined by profile' values of the two-byte form (RFC 8285 §4.3)."""
    return profile & 0xFFF0 == TWO_BYTE_PROFILE


def parse_extension_elements(profile: int, data: bytes) -> list[tuple[int, bytes]]:
    """Split an RFC 8285 extension block body into ``(id, value)`` pairs, in wire order.

    Padding bytes are skipped; in the one-byte form an element with id 15 ends parsing
    (RFC 8285 §4.2). Raises ParseError for an unknown profile or an element that overruns
    the block.
    """
    out: list[tuple[int, bytes]] = []
    n = len(data)
    pos = 0
    if profile == ONE_BYTE_PROFILE:
        while pos < n:
            b = data[pos]
            if b == 0:  # padding byte
                pos += 1
                continue
            ext_id = b >> 4
            if ext_id == _ONE_BYTE_STOP_ID or ext_id == 0:
                # id 15 is a stop marker; id 0 with a non-zero length is not a valid element
                # and, like libwebrtc, we treat it as the end of usable data.
                break
            length = (b & 0x0F) + 1
            start = pos + 1
            end = start + length
            if end > n:
                raise ParseError(f"one-byte header extension {ext_id} overruns the block")
            out.append((ext_id, bytes(data[start:end])))
            pos = end
        return out
    if is_two_byte_profile(profile):
        while pos < n:
            ext_id = data[pos]
            if ext_id == 0:  # padding byte
                pos += 1
                continue
            if pos + 1 >= n:
                raise ParseError(f"two-byte header extension {ext_id} lacks a length byte")
            length = data[pos + 1]
            start = pos + 2
            end = start + length
            if end > n:
                raise ParseError(f"two-byte header extension {ext_id} overruns the block")
            out.append((ext_id, bytes(data[start:end])))
            pos = end
        return out
    raise ParseError(f"extension profile 0x{profile:04x} is not an RFC 8285 form")


def _find_element(profile: int, data: bytes, wanted: int) -> bytes | None:
    """Return the first value for ``wanted`` without building the whole element list."""
    n = len(data)
    pos = 0
    if profile == ONE_BYTE_PROFILE:
        while pos < n:
            b = data[pos]
            if b == 0:
                pos += 1
                continue
            ext_id = b >> 4
            if ext_id == _ONE_BYTE_STOP_ID or ext_id == 0:
                return None
            end = pos + 2 + (b & 0x0F)
            if end > n:
                raise ParseError(f"one-byte header extension {ext_id} overruns the block")
            if ext_id == wanted:
                return data[pos + 1 : end]
            pos = end
        return None
    if is_two_byte_profile(profile):
        while pos < n:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= n:
                raise ParseError(f"two-byte header extension {ext_id} lacks a length byte")
            end = pos + 2 + data[pos + 1]
            if end > n:
                raise ParseError(f"two-byte header extension {ext_id} overruns the block")
            if ext_id == wanted:
                return data[pos + 2 : end]
            pos = end
        return None
    return None


def build_extension_block(
    elements: Sequence[tuple[int, bytes]], *, force_two_byte: bool = False
) -> tuple[int, bytes]:
    """Encode elements as an RFC 8285 block body; returns ``(profile, body)``.

    The one-byte form is used when every id is 1-14 and every value 1-16 bytes long (and
    ``force_two_byte`` is false), otherwise the two-byte form (ids 1-255, 0-255 bytes).
    The body is zero-padded to a multiple of 4 bytes (RFC 3550 §5.3.1). Raises ValueError
    for elements that fit neither form.
    """
    one_byte = not force_two_byte and all(
        1 <= i <= _ONE_BYTE_MAX_ID and 1 <= len(v) <= _ONE_BYTE_MAX_LEN for i, v in elements
    )
    parts: list[bytes] = []
    if one_byte:
        for ext_id, value in elements:
            parts.append(bytes(((ext_id << 4) | (len(value) - 1),)))
            parts.append(bytes(value))
        profile = ONE_BYTE_PROFILE
    else:
        for ext_id, value in elements:
            if not 1 <= ext_id <= 255:
                raise ValueError(f"header extension id {ext_id} out of range 1-255")
            if len(value) > _TWO_BYTE_MAX_LEN:
                raise ValueError(f"header extension {ext_id} value longer than 255 bytes")
            parts.append(bytes((ext_id, len(value))))
            parts.append(bytes(value))
        profile = TWO_BYTE_PROFILE
    body = b"".join(parts)
    rem = len(body) % 4
    if rem:
        body += bytes(4 - rem)
    return profile, body


def find_extension(packet: bytes | bytearray | memoryview, ext_id: int) -> bytes | None:
    """The value of header extension ``ext_id`` in an RTP packet, without a full parse.

    Returns None when the packet has no extension block or no such element; raises
    ParseError when the header or the block is malformed.
    """
    if ext_id <= 0:
        return None
    n = len(packet)
    if n < RTP_HEADER_SIZE or packet[0] >> 6 != 2:
        raise ParseError("not an RTP packet")
    if not packet[0] & 0x10:
        return None
    start = RTP_HEADER_SIZE + 4 * (packet[0] & 0x0F)
    if start + 4 > n:
        raise ParseError("RTP extension header truncated")
    profile = (packet[start] << 8) | packet[start + 1]
    end = start + 4 + 4 * ((packet[start + 2] << 8) | packet[start + 3])
    if end > n:
        raise ParseError("RTP header extension longer than the packet")
    return _find_element(profile, bytes(packet[start + 4 : end]), ext_id)


def payload_offset(buf: bytes | bytearray | memoryview, length: int | None = None) -> int:
    """Offset of the RTP payload in ``buf[:length]``: fixed header, CSRCs and the header
    extension block (RFC 3550 §5.1, §5.3.1). Raises ParseError if they do not fit."""
    n = len(buf) if length is None else length
    if n < 12 or n > len(buf):
        raise ParseError("RTP packet too short")
    b0 = buf[0]
    if b0 >> 6 != 2:
        raise ParseError("RTP version is not 2")
    offset = 12 + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if offset + 4 > n:
            raise ParseError("RTP extension header truncated")
        offset += 4 + 4 * ((buf[offset + 2] << 8) | buf[offset + 3])
    if offset > n:
        raise ParseError("RTP header longer than the packet")
    return offset


def peek_rtp_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int] | None:
    """Cheaply read ``(ssrc, sequence_number, timestamp, payload_type)`` from an RTP datagram.

    Returns None when the buffer is shorter than the fixed header or the version is not 2;
    nothing beyond the fixed 12 bytes is validated.
    """
    if len(data) < RTP_HEADER_SIZE:
        return None
    b0, b1, seq, ts, ssrc = _PEEK.unpack_from(data, 0)
    if b0 >> 6 != 2:
        return None
    return ssrc, seq, ts, b1 & 0x7F


def _elements_ok(profile: int, data: bytes) -> bool:
    try:
        parse_extension_elements(profile, data)
    except ParseError:
        return False
    return True


def rtp_defect(packet: bytes | bytearray | memoryview) -> int:
    """The first thing wrong with an RTP packet (an ``RTP_DEFECT_*`` code; 0: well formed).

    Stricter than :func:`parse_rtp`, which reads what it can: this is the data plane's
    admission check (RFC 3550 §5.1, §5.3.1; RFC 8285 §4), so a packet that passes has a
    fixed header, CSRCs and an RFC 8285 extension block that all fit, padding whose count is
    1.. and fits after the header, and something after the header (a payload or padding).
    """
    n = len(packet)
    if n < RTP_HEADER_SIZE or packet[0] >> 6 != 2:
        return RTP_DEFECT_HEADER
    b0 = packet[0]
    offset = RTP_HEADER_SIZE + 4 * (b0 & 0x0F)
    if offset > n:
        return RTP_DEFECT_CSRC
    if b0 & 0x10:
        if offset + 4 > n:
            return RTP_DEFECT_EXT_BLOCK
        profile = (packet[offset] << 8) | packet[offset + 1]
        start = offset + 4
        offset = start + 4 * ((packet[offset + 2] << 8) | packet[offset + 3])
        if offset > n:
            return RTP_DEFECT_EXT_BLOCK
        if profile != ONE_BYTE_PROFILE and not is_two_byte_profile(profile):
            return RTP_DEFECT_EXT_PROFILE
        if not _elements_ok(profile, bytes(packet[start:offset])):
            return RTP_DEFECT_EXT_ELEMENT
    if b0 & 0x20:
        # RFC 3550 §5.1: the last octet counts the padding octets, itself included.
        count = packet[n - 1]
        if count == 0 or offset + count > n:
            return RTP_DEFECT_PADDING
    elif offset == n:
        return RTP_DEFECT_NO_PAYLOAD
    return RTP_DEFECT_NONE


@dataclass(frozen=True, slots=True)
class RtpView:
    """What the packet path needs from one RTP packet, read in one pass (:func:`parse_rtp`).

    ``payload_offset`` is where the payload starts (after the CSRCs and the header-extension
    block); ``payload_end`` is the packet length minus the padding count octet's value when
    the P bit is set (RFC 3550 §5.1), never below 0. The padding count is not validated (as
    the forwarder does not validate it): ``payload_end <= payload_offset`` means there is no
    payload, a padding-only packet. ``extensions`` holds the first value of every RFC 8285
    element by id, exactly what :func:`find_extension` returns for that id; it is empty
    without an extension block or for a profile that is neither RFC 8285 form.
    """

    ssrc: int
    seq: int
    timestamp: int
    payload_type: int
    marker: bool
    payload_offset: int
    payload_end: int
    extensions: dict[int, bytes]


def parse_rtp(packet: bytes | bytearray | memoryview) -> RtpView:
    """Parse an RTP packet's header once: fixed header, CSRCs, extension block, padding.

    Raises ParseError exactly where :func:`payload_offset` or :func:`find_extension` (for
    some id) would: a short packet or a version other than 2, a CSRC list or extension
    block that overruns the packet, or a malformed RFC 8285 element. The element walk stops
    where :func:`parse_extension_elements` stops (the one-byte form's id 15, or id 0 with a
    non-zero length), so everything after that is absent, as it is for ``find_extension``.
    """
    data = packet if isinstance(packet, bytes) else bytes(packet)
    n = len(data)
    if n < RTP_HEADER_SIZE:
        raise ParseError(f"RTP packet too short ({n} bytes)")
    b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
    if b0 >> 6 != 2:
        raise ParseError(f"RTP version {b0 >> 6} is not 2")
    offset = RTP_HEADER_SIZE + 4 * (b0 & 0x0F)
    extensions: dict[int, bytes] = {}
    if b0 & 0x10:
        # RFC 3550 §5.3.1: 16-bit profile, 16-bit length in 32-bit words, then the body.
        if offset + 4 > n:
            raise ParseError("RTP extension header truncated")
        profile, words = _EXT_HEADER.unpack_from(data, offset)
        start = offset + 4
        offset = start + 4 * words
        if offset > n:
            raise ParseError(f"RTP extension length {words} words exceeds packet length")
        if profile == ONE_BYTE_PROFILE or is_two_byte_profile(profile):
            for ext_id, value in parse_extension_elements(profile, data[start:offset]):
                # find_extension answers with the first element of an id; keep that one.
                extensions.setdefault(ext_id, value)
    elif offset > n:
        raise ParseError(f"RTP CSRC count {b0 & 0x0F} exceeds packet length")
    pad = data[-1] if b0 & 0x20 else 0
    return RtpView(ssrc, seq, ts, b1 & 0x7F, bool(b1 & 0x80), offset, max(n - pad, 0), extensions)


class Extensions:
    """The header-extension elements of one packet, for lookups by id after one pass.

    A well-formed packet is parsed once (:func:`parse_rtp`) and every lookup reads the result.
    A malformed block keeps the per-id semantics of :func:`find_extension` (an element found
    before the malformation is returned, a lookup that reaches it raises ParseError), so
    callers classify bad input exactly as the per-id lookups did.
    """

    __slots__ = ("_packet", "view")

    def __init__(self, packet: bytes | bytearray | memoryview) -> None:
        self._packet = packet
        #: The one-pass parse, or None when the header or block is malformed.
        self.view: RtpView | None
        try:
            self.view = parse_rtp(packet)
        except ParseError:
            self.view = None

    def get(self, ext_id: int) -> bytes | None:
        """The first value of element ``ext_id`` (None: absent); ParseError as find_extension."""
        if self.view is None:
            return find_extension(self._packet, ext_id)
        return self.view.extensions.get(ext_id)

    def payload_offset(self) -> int:
        """Where the payload starts; ParseError as :func:`payload_offset`."""
        return self.view.payload_offset if self.view is not None else payload_offset(self._packet)


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 §5.1) with its raw header extension block and padding.

    ``extension_profile`` is None when the X bit is clear; otherwise it is the 16-bit
    'defined by profile' value (0xBEDE, 0x100X or anything else, kept raw) and
    ``extension_data`` is the block body. ``padding_length`` counts all padding octets
    including the final count octet; ``padding`` holds the octets before the count octet when
    any is non-zero (empty means zero fill, the usual case).
    """

    marker: bool = False
    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    csrcs: tuple[int, ...] = ()
    extension_profile: int | None = None
    extension_data: bytes = b""
    payload: bytes = b""
    padding_length: int = 0
    padding: bytes = b""

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> RtpPacket:
        """Parse one RTP datagram; raises ParseError if it is malformed."""
        if not isinstance(data, bytes):
            data = bytes(data)
        n = len(data)
        if n < RTP_HEADER_SIZE:
            raise ParseError(f"RTP packet too short ({n} bytes)")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data, 0)
        if b0 >> 6 != 2:
            raise ParseError(f"RTP version {b0 >> 6} is not 2")
        cc = b0 & 0x0F
        offset = RTP_HEADER_SIZE + 4 * cc
        if offset > n:
            raise ParseError(f"RTP CSRC count {cc} exceeds packet length")
        csrcs: tuple[int, ...] = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
        profile: int | None = None
        ext_data = b""
        if b0 & 0x10:
            if offset + 4 > n:
                raise ParseError("RTP extension header truncated")
            profile, words = _EXT_HEADER.unpack_from(data, offset)
            offset += 4
            end = offset + 4 * words
            if end > n:
                raise ParseError(f"RTP extension length {words} words exceeds packet length")
            ext_data = data[offset:end]
            offset = end
        end = n
        padding_length = 0
        padding = b""
        if b0 & 0x20:
            # RFC 3550 §5.1: the last octet counts the padding octets, itself included.
            if offset >= n:
                raise ParseError("RTP padding bit set but no padding count octet")
            padding_length = data[-1]
            if padding_length == 0:
                raise ParseError("RTP padding bit set with padding count 0")
            if padding_length > n - offset:
                raise ParseError(f"RTP padding count {padding_length} exceeds payload")
            end = n - padding_length
            padding = data[end : n - 1]
            if not any(padding):
                padding = b""
        return cls(
            bool(b1 & 0x80),
            b1 & 0x7F,
            seq,
            ts,
            ssrc,
            csrcs,
            profile,
            ext_data,
            data[offset:end],
            padding_length,
            padding,
        )

    def serialize(self) -> bytes:
        """Encode to wire format; raises ValueError if a field is out of range."""
        if not 0 <= self.payload_type <= 127:
            raise ValueError(f"payload type {self.payload_type} out of range 0-127")
        cc = len(self.csrcs)
        if cc > 15:
            raise ValueError(f"{cc} CSRCs exceed the limit of 15")
        b0 = 0x80 | cc
        parts: list[bytes] = []
        try:
            if cc:
                parts.append(struct.pack(f"!{cc}I", *self.csrcs))
            if self.extension_profile is not None:
                b0 |= 0x10
                ext_len = len(self.extension_data)
                if ext_len % 4:
                    raise ValueError("extension data length must be a multiple of 4")
                parts.append(_EXT_HEADER.pack(self.extension_profile, ext_len // 4))
                parts.append(bytes(self.extension_data))
            elif self.extension_data:
                raise ValueError("extension data without an extension profile")
            parts.append(bytes(self.payload))
            plen = self.padding_length
            if plen:
                if not 1 <= plen <= 255:
                    raise ValueError(f"padding length {plen} out of range 1-255")
                b0 |= 0x20
                if self.padding:
                    if len(self.padding) != plen - 1:
                        raise ValueError("padding bytes must be padding_length - 1 long")
                    parts.append(bytes(self.padding))
                else:
                    parts.append(bytes(plen - 1))
                parts.append(bytes((plen,)))
            elif self.padding:
                raise ValueError("padding bytes given with padding_length 0")
            header = _HEADER.pack(
                b0,
                (0x80 if self.marker else 0) | self.payload_type,
                self.sequence_number,
                self.timestamp,
                self.ssrc,
            )
        except struct.error as exc:
            raise ValueError(f"RTP field out of range: {exc}") from None
        return header + b"".join(parts)

    @property
    def header_size(self) -> int:
        """Bytes before the payload: fixed header, CSRCs and the extension block."""
        size = RTP_HEADER_SIZE + 4 * len(self.csrcs)
        if self.extension_profile is not None:
            size += 4 + len(self.extension_data)
        return size

    def extensions(self) -> list[tuple[int, bytes]]:
        """RFC 8285 elements as ``(id, value)``; empty when absent or of an unknown profile."""
        profile = self.extension_profile
        if profile is None or not (profile == ONE_BYTE_PROFILE or is_two_byte_profile(profile)):
            return []
        return parse_extension_elements(profile, self.extension_data)

    def get_extension(self, ext_id: int) -> bytes | None:
        """Value of the first element with ``ext_id``, or None; ParseError if the block is bad."""
        profile = self.extension_profile
        if profile is None:
            return None
        return _find_element(profile, self.extension_data, ext_id)

    def with_extensions(
        self, elements: Sequence[tuple[int, bytes]], *, force_two_byte: bool = False
    ) -> RtpPacket:
        """Copy of this packet whose extension block holds exactly ``elements``.

        An unknown-profile block is replaced, not merged; no elements clears the X bit.
        """
        if not elements:
            return dataclasses.replace(self, extension_profile=None, extension_data=b"")
        profile, body = build_extension_block(elements, force_two_byte=force_two_byte)
        return dataclasses.replace(self, extension_profile=profile, extension_data=body)

    def with_extension(self, ext_id: int, value: bytes) -> RtpPacket:
        """Copy with element ``ext_id`` set to ``value`` (replaced in place or appended)."""
        elements = self.extensions()
        for i, (eid, _) in enumerate(elements):
            if eid == ext_id:
                elements[i] = (ext_id, value)
                break
        else:
            elements.append((ext_id, value))
        return self.with_extensions(elements, force_two_byte=self._uses_two_byte())

    def without_extension(self, ext_id: int) -> RtpPacket:
        """Copy with every element ``ext_id`` removed."""
        elements = [(i, v) for i, v in self.extensions() if i != ext_id]
        return self.with_extensions(elements, force_two_byte=self._uses_two_byte())

    def _uses_two_byte(self) -> bool:
        profile = self.extension_profile
        return profile is not None and is_two_byte_profile(profile)
