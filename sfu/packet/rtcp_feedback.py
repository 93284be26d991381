"""RTCP framing primitives and feedback messages: NACK, PLI, FIR, REMB.

The shared header helpers live here (rather than in :mod:`sfu.packet.rtcp`) because the
feedback modules are the lowest layer: :mod:`sfu.packet.twcc` and :mod:`sfu.packet.rtcp`
both build on them without import cycles.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self, TypeAlias

from sfu.packet.errors import ParseError

Buffer: TypeAlias = bytes | bytearray | memoryview  # accepted input buffer types

__all__ = [
    "PT_APP",
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "PT_XR",
    "Fir",
    "FirEntry",
    "Nack",
    "Pli",
    "Remb",
    "nack_pairs_from_seqs",
    "seqs_from_nack_pairs",
]

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206
PT_XR = 207

FMT_NACK = 1  # RFC 4585 §6.2.1
FMT_TWCC = 15  # draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1
FMT_PLI = 1  # RFC 4585 §6.3.1
FMT_FIR = 4  # RFC 5104 §4.3.1
FMT_AFB = 15  # RFC 4585 §6.4, carries REMB

HEADER_SIZE = 4
FEEDBACK_HEADER_SIZE = 8  # sender SSRC + media source SSRC (RFC 4585 §6.1)
REMB_IDENTIFIER = b"REMB"

_HDR = struct.Struct(">BBH")
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_NACK_ITEM = struct.Struct(">HH")
_FIR_ITEM = struct.Struct(">IB3s")


# --------------------------------------------------------------------------------------
# Common header (RFC 3550 §6.4.1)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Frame:
    """Location of one RTCP packet inside a buffer, as found by :func:`read_frame`."""

    count: int  # RC / SC / FMT: the 5 low bits of the first octet
    packet_type: int
    body_start: int  # first octet after the 4-byte header
    body_end: int  # end of the body, excluding padding
    end: int  # end of the packet, including padding


def read_frame(data: bytes, offset: int) -> Frame:
    """Validate the RTCP common header at ``offset`` and locate body and padding.

    The padding bit is accepted on any packet of a compound (not just the last one, as RFC
    3550 §6.4.1 asks) because libwebrtc pads each transport-cc packet individually and
    batches several into one compound; the padding count must be non-zero and fit.
    """
    if len(data) - offset < HEADER_SIZE:
        raise ParseError("RTCP: truncated common header")
    first, packet_type, length = _HDR.unpack_from(data, offset)
    if first >> 6 != 2:
        raise ParseError(f"RTCP: version {first >> 6} != 2")
    end = offset + HEADER_SIZE + 4 * length
    if end > len(data):
        raise ParseError("RTCP: length field exceeds datagram")
    body_start = offset + HEADER_SIZE
    body_end = end
    if first & 0x20:
        if end == body_start:
            raise ParseError("RTCP: padding bit set on empty packet")
        pad = data[end - 1]
        if pad == 0 or pad > end - body_start:
            raise ParseError("RTCP: bad padding count")
        body_end = end - pad
    return Frame(first & 0x1F, packet_type, body_start, body_end, end)


def as_bytes(data: Buffer) -> bytes:
    """Return ``data`` as ``bytes`` (copying only when it is not already bytes)."""
    return data if isinstance(data, bytes) else bytes(data)


def read_single_frame(data: bytes, packet_type: int) -> Frame:
    """Frame ``data`` as exactly one RTCP packet of ``packet_type`` (class-level parsers)."""
    frame = read_frame(data, 0)
    if frame.end != len(data):
        raise ParseError("RTCP: trailing bytes after packet")
    if frame.packet_type != packet_type:
        raise ParseError(f"RTCP: packet type {frame.packet_type} != {packet_type}")
    return frame


def read_feedback_frame(data: bytes, packet_type: int, fmt: int, name: str) -> Frame:
    """:func:`read_single_frame` for a feedback message, also checking its FMT."""
    frame = read_single_frame(data, packet_type)
    if frame.count != fmt:
        raise ParseError(f"RTCP {name}: FMT is not {fmt}")
    return frame


def padding_of(data: bytes, frame: Frame) -> bytes:
    """The RTCP padding (P bit) of ``frame``, kept so the packet round-trips."""
    return bytes(data[frame.body_end : frame.end])


def check_padding(padding: bytes) -> None:
    """Raise ValueError unless ``padding`` is empty or ends with its own length (§6.4.1)."""
    if padding and (padding[-1] != len(padding) or len(padding) > 255):
        raise ValueError("RTCP padding must end with its own length octet")


def pack_header(count: int, packet_type: int, body_len: int, padding: bytes) -> bytes:
    """Build the 4-byte common header for a body of ``body_len`` octets plus ``padding``."""
    if not 0 <= count <= 0x1F:
        raise ValueError(f"RTCP count/FMT {count} does not fit in 5 bits")
    if not 0 <= packet_type <= 0xFF:
        raise ValueError(f"RTCP packet type {packet_type} out of range")
    check_padding(padding)
    total = body_len + len(padding)
    if total % 4:
        raise ValueError("RTCP body plus padding must be a multiple of 4 octets")
    words = total // 4
    if words > 0xFFFF:
        raise ValueError("RTCP packet too long")
    first = 0x80 | (0x20 if padding else 0) | count
    return _HDR.pack(first, packet_type, words)


def check_u32(value: int, name: str) -> None:
    """Raise ValueError unless ``value`` fits in an unsigned 32-bit field."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{name} {value} does not fit in 32 bits")


def _feedback_ssrcs(data: bytes, frame: Frame) -> tuple[int, int]:
    if frame.body_end - frame.body_start < FEEDBACK_HEADER_SIZE:
        raise ParseError("RTCP feedback: body shorter than the two SSRCs")
    sender, media = _U32X2.unpack_from(data, frame.body_start)
    return int(sender), int(media)


def _pack_feedback(
    fmt: int, packet_type: int, sender_ssrc: int, media_ssrc: int, fci: bytes, padding: bytes
) -> bytes:
    check_u32(sender_ssrc, "sender_ssrc")
    check_u32(media_ssrc, "media_ssrc")
    header = pack_header(fmt, packet_type, FEEDBACK_HEADER_SIZE + len(fci), padding)
    return b"".join((header, _U32X2.pack(sender_ssrc, media_ssrc), fci, padding))


# --------------------------------------------------------------------------------------
# Generic NACK (RFC 4585 §6.2.1)
# --------------------------------------------------------------------------------------


def _wrap_sorted(seqs: Iterable[int]) -> list[int]:
    """Unique 16-bit sequence numbers in wrap-aware ascending order.

    The sequence starts right after the largest circular gap, so a set spanning the
    65535 -> 0 wrap (and narrower than half the space) comes out in transmission order.
    """
    values = sorted({s & 0xFFFF for s in seqs})
    if len(values) < 2:
        return values
    best_gap = values[0] + 0x10000 - values[-1]
    start = 0
    for i in range(1, len(values)):
        gap = values[i] - values[i - 1]
        if gap > best_gap:
            best_gap = gap
            start = i
    return values[start:] + values[:start]


def nack_pairs_from_seqs(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Encode lost sequence numbers as (PID, BLP) pairs, wrap-aware (RFC 4585 §6.2.1).

    Bit ``i`` of BLP (LSB = bit 0) reports PID + i + 1 as lost as well.
    """
    pairs: list[tuple[int, int]] = []
    for seq in _wrap_sorted(seqs):
        if pairs:
            pid, blp = pairs[-1]
            offset = (seq - pid) & 0xFFFF
            if offset <= 16:
                pairs[-1] = (pid, blp | 1 << (offset - 1))
                continue
        pairs.append((seq, 0))
    return pairs


def seqs_from_nack_pairs(pairs: Iterable[tuple[int, int]]) -> list[int]:
    """Expand (PID, BLP) pairs to lost sequence numbers, in order, without duplicates."""
    seen: set[int] = set()
    out: list[int] = []
    for pid, blp in pairs:
        for i in range(17):
            if i == 0 or blp & (1 << (i - 1)):
                seq = (pid + i) & 0xFFFF
                if seq not in seen:
                    seen.add(seq)
                    out.append(seq)
    return out


@dataclass(slots=True)
class Nack:
    """Generic NACK (RTPFB FMT 1): lost packets as (PID, BLP) pairs kept as received."""

    sender_ssrc: int
    media_ssrc: int
    pairs: list[tuple[int, int]] = field(default_factory=list)
    padding: bytes = b""

    @classmethod
    def from_seqs(cls, sender_ssrc: int, media_ssrc: int, seqs: Iterable[int]) -> Self:
        """Build a NACK reporting ``seqs`` (any order, duplicates and wrap allowed)."""
        return cls(sender_ssrc, media_ssrc, nack_pairs_from_seqs(seqs))

    def lost_seqs(self) -> list[int]:
        """The lost sequence numbers this NACK reports."""
        return seqs_from_nack_pairs(self.pairs)

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one NACK packet occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_feedback_frame(data, PT_RTPFB, FMT_NACK, "NACK"))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        sender, media = _feedback_ssrcs(data, frame)
        start = frame.body_start + FEEDBACK_HEADER_SIZE
        if (frame.body_end - start) % 4:
            raise ParseError("RTCP NACK: FCI not a multiple of 4 octets")
        pairs = [
            (int(pid), int(blp))
            for pid, blp in _NACK_ITEM.iter_unpack(data[start : frame.body_end])
        ]
        return cls(sender, media, pairs, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        fci = bytearray()
        for pid, blp in self.pairs:
            if not (0 <= pid <= 0xFFFF and 0 <= blp <= 0xFFFF):
                raise ValueError("NACK PID/BLP must fit in 16 bits")
            fci += _NACK_ITEM.pack(pid, blp)
        return _pack_feedback(
            FMT_NACK, PT_RTPFB, self.sender_ssrc, self.media_ssrc, bytes(fci), self.padding
        )


# --------------------------------------------------------------------------------------
# Picture Loss Indication (RFC 4585 §6.3.1)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Pli:
    """Picture Loss Indication (PSFB FMT 1): asks the sender of ``media_ssrc`` for a keyframe."""

    sender_ssrc: int
    media_ssrc: int
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one PLI packet occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_feedback_frame(data, PT_PSFB, FMT_PLI, "PLI"))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        sender, media = _feedback_ssrcs(data, frame)
        # §6.3.1: PLI carries no FCI; anything more would not round-trip.
        if frame.body_end - frame.body_start != FEEDBACK_HEADER_SIZE:
            raise ParseError("RTCP PLI: unexpected FCI")
        return cls(sender, media, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        return _pack_feedback(
            FMT_PLI, PT_PSFB, self.sender_ssrc, self.media_ssrc, b"", self.padding
        )


# --------------------------------------------------------------------------------------
# Full Intra Request (RFC 5104 §4.3.1)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class FirEntry:
    """One FIR FCI entry: the target SSRC and its command sequence number."""

    ssrc: int
    seq_nr: int
    reserved: int = 0  # 24 bits, zero on send; kept so odd senders round-trip


@dataclass(slots=True)
class Fir:
    """Full Intra Request (PSFB FMT 4); ``media_ssrc`` is unused and SHALL be 0 (§4.3.1.2)."""

    sender_ssrc: int
    media_ssrc: int = 0
    entries: list[FirEntry] = field(default_factory=list)
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one FIR packet occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_feedback_frame(data, PT_PSFB, FMT_FIR, "FIR"))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        sender, media = _feedback_ssrcs(data, frame)
        start = frame.body_start + FEEDBACK_HEADER_SIZE
        if (frame.body_end - start) % _FIR_ITEM.size:
            raise ParseError("RTCP FIR: FCI not a multiple of 8 octets")
        entries = [
            FirEntry(int(ssrc), int(seq), int.from_bytes(res, "big"))
            for ssrc, seq, res in _FIR_ITEM.iter_unpack(data[start : frame.body_end])
        ]
        return cls(sender, media, entries, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        fci = bytearray()
        for e in self.entries:
            check_u32(e.ssrc, "FIR ssrc")
            if not (0 <= e.seq_nr <= 0xFF and 0 <= e.reserved <= 0xFFFFFF):
                raise ValueError("FIR seq_nr must fit 8 bits and reserved 24 bits")
            fci += _FIR_ITEM.pack(e.ssrc, e.seq_nr, e.reserved.to_bytes(3, "big"))
        return _pack_feedback(
            FMT_FIR, PT_PSFB, self.sender_ssrc, self.media_ssrc, bytes(fci), self.padding
        )


# --------------------------------------------------------------------------------------
# Receiver Estimated Max Bitrate (draft-alvestrand-rmcat-remb-03 §2.2)
# --------------------------------------------------------------------------------------

_MANTISSA_MAX = (1 << 18) - 1
_EXP_MAX = (1 << 6) - 1


@dataclass(slots=True)
class Remb:
    """REMB (PSFB FMT 15, 'REMB'): estimated bitrate = mantissa * 2**exp bits/s for ``ssrcs``."""

    sender_ssrc: int
    bitrate_exp: int
    bitrate_mantissa: int
    ssrcs: list[int] = field(default_factory=list)
    media_ssrc: int = 0  # always 0 per the draft
    padding: bytes = b""

    @property
    def bitrate(self) -> int:
        """The estimate in bits per second."""
        return self.bitrate_mantissa << self.bitrate_exp

    @classmethod
    def from_bitrate(cls, sender_ssrc: int, bitrate_bps: int, ssrcs: Iterable[int]) -> Self:
        """Encode ``bitrate_bps`` with the smallest exponent, rounding down when inexact."""
        if bitrate_bps < 0:
            raise ValueError("REMB bitrate must be non-negative")
        exp = 0
        while (bitrate_bps >> exp) > _MANTISSA_MAX:
            exp += 1
        if exp > _EXP_MAX:
            raise ValueError("REMB bitrate too large")
        return cls(sender_ssrc, exp, bitrate_bps >> exp, list(ssrcs))

    @staticmethod
    def _is_remb(data: bytes, frame: Frame) -> bool:
        """True when a PSFB FMT 15 body carries the 'REMB' identifier (else: other AFB)."""
        start = frame.body_start + FEEDBACK_HEADER_SIZE
        return (
            frame.count == FMT_AFB
            and frame.body_end - start >= 4
            and data[start : start + 4] == REMB_IDENTIFIER
        )

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one REMB packet occupying all of ``data``."""
        data = as_bytes(data)
        frame = read_single_frame(data, PT_PSFB)
        if not cls._is_remb(data, frame):
            raise ParseError("RTCP REMB: not an AFB packet with the REMB identifier")
        return cls._from_frame(data, frame)

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        sender, media = _feedback_ssrcs(data, frame)
        start = frame.body_start + FEEDBACK_HEADER_SIZE
        if frame.body_end - start < 8:
            raise ParseError("RTCP REMB: truncated FCI")
        (word,) = _U32.unpack_from(data, start + 4)
        num = word >> 24
        if frame.body_end - start != 8 + 4 * num:
            raise ParseError("RTCP REMB: SSRC count does not match length")
        ssrcs = [int(s) for (s,) in _U32.iter_unpack(data[start + 8 : frame.body_end])]
        return cls(
            sender,
            (word >> 18) & _EXP_MAX,
            word & _MANTISSA_MAX,
            ssrcs,
            media,
            padding_of(data, frame),
        )

    def serialize(self) -> bytes:
        """Encode to wire format."""
        if not (0 <= self.bitrate_exp <= _EXP_MAX and 0 <= self.bitrate_mantissa <= _MANTISSA_MAX):
            raise ValueError("REMB exponent must fit 6 bits and mantissa 18 bits")
        if len(self.ssrcs) > 0xFF:
            raise ValueError("REMB carries at most 255 SSRCs")
        parts = [
            REMB_IDENTIFIER,
            _U32.pack((len(self.ssrcs) << 24) | (self.bitrate_exp << 18) | self.bitrate_mantissa),
        ]
        for ssrc in self.ssrcs:
            check_u32(ssrc, "REMB ssrc")
            parts.append(_U32.pack(ssrc))
        return _pack_feedback(
            FMT_AFB, PT_PSFB, self.sender_ssrc, self.media_ssrc, b"".join(parts), self.padding
        )
