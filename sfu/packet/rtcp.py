"""RTCP compound packets (RFC 3550 §6) with SR, RR, SDES, BYE and feedback messages.

:func:`parse_compound` splits a datagram into typed packets; anything it does not model
(APP, XR, unknown feedback formats, ...) becomes an :class:`UnknownRtcpPacket` holding the
raw body, so every valid datagram round-trips byte-exactly through
:func:`serialize_compound`. Reduced-size RTCP (RFC 5506) is accepted: the first packet need
not be a report. Feedback types live in :mod:`sfu.packet.rtcp_feedback` and
:mod:`sfu.packet.twcc` and are re-exported here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

from sfu.packet.errors import ParseError
from sfu.packet.rtcp_feedback import (
    FMT_FIR,
    FMT_NACK,
    FMT_PLI,
    FMT_TWCC,
    PT_APP,
    PT_BYE,
    PT_PSFB,
    PT_RR,
    PT_RTPFB,
    PT_SDES,
    PT_SR,
    PT_XR,
    Buffer,
    Fir,
    FirEntry,
    Frame,
    Nack,
    Pli,
    Remb,
    as_bytes,
    check_u32,
    nack_pairs_from_seqs,
    pack_header,
    padding_of,
    read_frame,
    read_single_frame,
    seqs_from_nack_pairs,
)
from sfu.packet.twcc import TransportFeedback, build_transport_feedback

__all__ = [
    "PT_APP",
    "PT_BYE",
    "PT_PSFB",
    "PT_RR",
    "PT_RTPFB",
    "PT_SDES",
    "PT_SR",
    "PT_XR",
    "SDES_CNAME",
    "Bye",
    "Fir",
    "FirEntry",
    "Nack",
    "Pli",
    "ReceiverReport",
    "Remb",
    "ReportBlock",
    "RtcpPacket",
    "SdesChunk",
    "SdesItem",
    "SenderReport",
    "SourceDescription",
    "TransportFeedback",
    "UnknownRtcpPacket",
    "build_transport_feedback",
    "nack_pairs_from_seqs",
    "parse_compound",
    "seqs_from_nack_pairs",
    "serialize_compound",
]

SDES_CNAME = 1  # RFC 3550 §6.5.1

_U32 = struct.Struct(">I")
_SENDER_INFO = struct.Struct(">IQIII")  # SSRC, NTP timestamp, RTP timestamp, packets, octets
_REPORT_BLOCK = struct.Struct(">IIIIII")


# --------------------------------------------------------------------------------------
# Reports (RFC 3550 §6.4)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReportBlock:
    """Reception statistics for one source (RFC 3550 §6.4.1)."""

    ssrc: int
    fraction_lost: int  # 8-bit fixed point, lost/expected * 256
    cumulative_lost: int  # signed 24-bit: duplicates can make it negative
    highest_seq: int  # extended highest sequence number received
    jitter: int
    lsr: int  # middle 32 bits of the last SR's NTP timestamp
    dlsr: int  # delay since that SR, in 1/65536 s

    @classmethod
    def _unpack(cls, data: bytes, offset: int) -> Self:
        ssrc, lost_word, highest, jitter, lsr, dlsr = _REPORT_BLOCK.unpack_from(data, offset)
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:
            cumulative -= 1 << 24
        return cls(ssrc, lost_word >> 24, cumulative, highest, jitter, lsr, dlsr)

    def _pack(self) -> bytes:
        if not 0 <= self.fraction_lost <= 0xFF:
            raise ValueError("fraction_lost must fit 8 bits")
        if not -(1 << 23) <= self.cumulative_lost < (1 << 23):
            raise ValueError("cumulative_lost must fit signed 24 bits")
        for name in ("ssrc", "highest_seq", "jitter", "lsr", "dlsr"):
            check_u32(getattr(self, name), name)
        lost_word = (self.fraction_lost << 24) | (self.cumulative_lost & 0xFFFFFF)
        return _REPORT_BLOCK.pack(
            self.ssrc, lost_word, self.highest_seq, self.jitter, self.lsr, self.dlsr
        )


def _parse_blocks(
    data: bytes, offset: int, end: int, count: int
) -> tuple[list[ReportBlock], bytes]:
    """The ``count`` report blocks at ``offset`` and the profile extension after them (SR, RR)."""
    ext_at = offset + count * _REPORT_BLOCK.size
    if ext_at > end:
        raise ParseError("RTCP: report count exceeds packet length")
    reports = [ReportBlock._unpack(data, offset + i * _REPORT_BLOCK.size) for i in range(count)]
    return reports, bytes(data[ext_at:end])


def _pack_blocks(reports: list[ReportBlock]) -> bytes:
    if len(reports) > 0x1F:
        raise ValueError("at most 31 report blocks per packet")
    return b"".join(r._pack() for r in reports)


@dataclass(slots=True)
class SenderReport:
    """Sender report (PT 200, RFC 3550 §6.4.1); ``extension`` is profile data kept raw."""

    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format: seconds << 32 | fraction
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one SR occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_single_frame(data, PT_SR))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        start, end = frame.body_start, frame.body_end
        if end - start < _SENDER_INFO.size:
            raise ParseError("RTCP SR: truncated sender info")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(data, start)
        reports, ext = _parse_blocks(data, start + _SENDER_INFO.size, end, frame.count)
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, ext, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        if not 0 <= self.ntp_timestamp <= 0xFFFFFFFFFFFFFFFF:
            raise ValueError("ntp_timestamp must fit 64 bits")
        for name in ("ssrc", "rtp_timestamp", "packet_count", "octet_count"):
            check_u32(getattr(self, name), name)
        body = b"".join(
            (
                _SENDER_INFO.pack(
                    self.ssrc,
                    self.ntp_timestamp,
                    self.rtp_timestamp,
                    self.packet_count,
                    self.octet_count,
                ),
                _pack_blocks(self.reports),
                self.extension,
            )
        )
        return pack_header(len(self.reports), PT_SR, len(body), self.padding) + body + self.padding


@dataclass(slots=True)
class ReceiverReport:
    """Receiver report (PT 201, RFC 3550 §6.4.2); ``extension`` is profile data kept raw."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one RR occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_single_frame(data, PT_RR))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        start, end = frame.body_start, frame.body_end
        if end - start < 4:
            raise ParseError("RTCP RR: missing SSRC")
        (ssrc,) = _U32.unpack_from(data, start)
        reports, ext = _parse_blocks(data, start + 4, end, frame.count)
        return cls(ssrc, reports, ext, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        check_u32(self.ssrc, "ssrc")
        body = _U32.pack(self.ssrc) + _pack_blocks(self.reports) + self.extension
        return pack_header(len(self.reports), PT_RR, len(body), self.padding) + body + self.padding


# --------------------------------------------------------------------------------------
# Source description (RFC 3550 §6.5)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class SdesItem:
    """One SDES item; ``value`` stays bytes (it is UTF-8 by spec but untrusted)."""

    item_type: int  # 1..255; 1 = CNAME, 8 = PRIV (prefix kept inside value)
    value: bytes


@dataclass(slots=True)
class SdesChunk:
    """The SDES items describing one SSRC/CSRC."""

    ssrc: int
    items: list[SdesItem] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        """The first CNAME item decoded leniently, or None when absent."""
        for item in self.items:
            if item.item_type == SDES_CNAME:
                return item.value.decode("utf-8", "replace")
        return None

    def _pack(self) -> bytes:
        check_u32(self.ssrc, "SDES ssrc")
        out = bytearray(_U32.pack(self.ssrc))
        for item in self.items:
            if not 1 <= item.item_type <= 0xFF or len(item.value) > 0xFF:
                raise ValueError("SDES item type must be 1..255 and value at most 255 octets")
            out += bytes((item.item_type, len(item.value)))
            out += item.value
        # §6.5: the item list ends with one to four null octets, reaching a 32-bit boundary.
        out += bytes(4 - len(out) % 4)
        return bytes(out)


@dataclass(slots=True)
class SourceDescription:
    """SDES packet (PT 202, RFC 3550 §6.5)."""

    chunks: list[SdesChunk] = field(default_factory=list)
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one SDES packet occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_single_frame(data, PT_SDES))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        pos, end = frame.body_start, frame.body_end
        chunks: list[SdesChunk] = []
        for _ in range(frame.count):
            if end - pos < 4:
                raise ParseError("RTCP SDES: truncated chunk")
            chunk_start = pos
            (ssrc,) = _U32.unpack_from(data, pos)
            pos += 4
            items: list[SdesItem] = []
            while True:
                if pos >= end:
                    raise ParseError("RTCP SDES: item list not terminated")
                item_type = data[pos]
                if item_type == 0:
                    break
                if end - pos < 2 or end - pos - 2 < data[pos + 1]:
                    raise ParseError("RTCP SDES: truncated item")
                length = data[pos + 1]
                items.append(SdesItem(item_type, bytes(data[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            # Null terminator plus null padding up to the next 32-bit boundary (§6.5).
            stop = pos + 4 - (pos - chunk_start) % 4
            if stop > end or any(data[pos:stop]):
                raise ParseError("RTCP SDES: bad chunk termination")
            pos = stop
            chunks.append(SdesChunk(ssrc, items))
        if pos != end:
            raise ParseError("RTCP SDES: data after the last chunk")
        return cls(chunks, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        if len(self.chunks) > 0x1F:
            raise ValueError("at most 31 SDES chunks per packet")
        body = b"".join(c._pack() for c in self.chunks)
        return pack_header(len(self.chunks), PT_SDES, len(body), self.padding) + body + self.padding


# --------------------------------------------------------------------------------------
# Goodbye (RFC 3550 §6.6)
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Bye:
    """BYE packet (PT 203, RFC 3550 §6.6); ``reason`` is raw text or None when absent."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes | None = None
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one BYE packet occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_single_frame(data, PT_BYE))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        start, end = frame.body_start, frame.body_end
        pos = start + 4 * frame.count
        if pos > end:
            raise ParseError("RTCP BYE: source count exceeds packet length")
        ssrcs = [int(s) for (s,) in _U32.iter_unpack(data[start:pos])]
        reason: bytes | None = None
        if pos < end:
            length = data[pos]
            stop = pos + 1 + length
            aligned = stop + (-(stop - start) % 4)
            if aligned != end or any(data[stop:aligned]):
                raise ParseError("RTCP BYE: bad reason length or padding")
            reason = bytes(data[pos + 1 : stop])
        return cls(ssrcs, reason, padding_of(data, frame))

    def serialize(self) -> bytes:
        """Encode to wire format."""
        if len(self.ssrcs) > 0x1F:
            raise ValueError("at most 31 SSRCs per BYE")
        parts = []
        for ssrc in self.ssrcs:
            check_u32(ssrc, "BYE ssrc")
            parts.append(_U32.pack(ssrc))
        if self.reason is not None:
            if len(self.reason) > 0xFF:
                raise ValueError("BYE reason is at most 255 octets")
            text = bytes((len(self.reason),)) + self.reason
            parts.append(text + bytes(-len(text) % 4))
        body = b"".join(parts)
        return pack_header(len(self.ssrcs), PT_BYE, len(body), self.padding) + body + self.padding


# --------------------------------------------------------------------------------------
# Unknown packets and compounds
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class UnknownRtcpPacket:
    """Any RTCP packet not modelled here (APP, XR, other feedback), kept raw to round-trip."""

    packet_type: int
    count: int  # the 5-bit RC/SC/FMT field
    body: bytes = b""  # everything after the common header, excluding padding
    padding: bytes = b""

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Wrap one packet occupying all of ``data``, whatever its type."""
        data = as_bytes(data)
        frame = read_frame(data, 0)
        if frame.end != len(data):
            raise ParseError("RTCP: trailing bytes after packet")
        return cls._from_frame(data, frame)

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        return cls(
            frame.packet_type,
            frame.count,
            bytes(data[frame.body_start : frame.body_end]),
            padding_of(data, frame),
        )

    def serialize(self) -> bytes:
        """Encode to wire format."""
        header = pack_header(self.count, self.packet_type, len(self.body), self.padding)
        return header + self.body + self.padding


RtcpPacket = (
    SenderReport
    | ReceiverReport
    | SourceDescription
    | Bye
    | Nack
    | TransportFeedback
    | Pli
    | Fir
    | Remb
    | UnknownRtcpPacket
)


def _parse_one(data: bytes, frame: Frame) -> RtcpPacket:
    pt = frame.packet_type
    if pt == PT_SR:
        return SenderReport._from_frame(data, frame)
    if pt == PT_RR:
        return ReceiverReport._from_frame(data, frame)
    if pt == PT_SDES:
        return SourceDescription._from_frame(data, frame)
    if pt == PT_BYE:
        return Bye._from_frame(data, frame)
    if pt == PT_RTPFB:
        if frame.count == FMT_NACK:
            return Nack._from_frame(data, frame)
        if frame.count == FMT_TWCC:
            return TransportFeedback._from_frame(data, frame)
    elif pt == PT_PSFB:
        if frame.count == FMT_PLI:
            return Pli._from_frame(data, frame)
        if frame.count == FMT_FIR:
            return Fir._from_frame(data, frame)
        if Remb._is_remb(data, frame):
            return Remb._from_frame(data, frame)
    return UnknownRtcpPacket._from_frame(data, frame)


def parse_compound(data: Buffer) -> list[RtcpPacket]:
    """Split a compound RTCP datagram into typed packets.

    The individual lengths must add up to the datagram size (RFC 3550 §A.2). A malformed
    packet of a modelled type makes the whole datagram invalid; unmodelled types are kept
    as :class:`UnknownRtcpPacket`.
    """
    data = as_bytes(data)
    if not data:
        raise ParseError("RTCP: empty datagram")
    packets: list[RtcpPacket] = []
    offset = 0
    while offset < len(data):
        frame = read_frame(data, offset)
        packets.append(_parse_one(data, frame))
        offset = frame.end
    return packets


def serialize_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """Concatenate the wire forms of ``packets`` into one compound datagram."""
    return b"".join(p.serialize() for p in packets)
