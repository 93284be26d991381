"""Transport-wide congestion control feedback (RTPFB FMT 15).

Layout per draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1. Packet status chunks are
kept exactly as received (raw 16-bit words) and never expanded at parse time: a single
run-length chunk can claim 8191 packets in two octets, so expanding would let a tiny packet
force a large allocation. :meth:`TransportFeedback.iter_packets` expands lazily instead.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Self

from sfu.packet.errors import ParseError
from sfu.packet.rtcp_feedback import (
    FEEDBACK_HEADER_SIZE,
    FMT_TWCC,
    PT_RTPFB,
    Buffer,
    Frame,
    as_bytes,
    check_u32,
    pack_header,
    padding_of,
    read_feedback_frame,
)

__all__ = [
    "DELTA_TICK_US",
    "REFERENCE_TICK_US",
    "STATUS_LARGE_DELTA",
    "STATUS_NOT_RECEIVED",
    "STATUS_RESERVED",
    "STATUS_SMALL_DELTA",
    "RunLengthChunk",
    "StatusVectorChunk",
    "TransportFeedback",
    "build_transport_feedback",
    "chunk_capacity",
    "decode_chunk",
    "encode_run_length",
    "encode_status_vector",
]

# Packet status symbols (§3.1.1).
STATUS_NOT_RECEIVED = 0
STATUS_SMALL_DELTA = 1  # received, delta fits one unsigned octet
STATUS_LARGE_DELTA = 2  # received, delta is a signed 16-bit value (or negative)
STATUS_RESERVED = 3

DELTA_TICK_US = 250  # receive deltas are in multiples of 250 µs (§3.1.5)
REFERENCE_TICK_US = 64_000  # reference time is in multiples of 64 ms (§3.1)

_RUN_LENGTH_MAX = 0x1FFF
_ONE_BIT_CAPACITY = 14
_TWO_BIT_CAPACITY = 7
_REF_WRAP = 1 << 24

_FIXED = struct.Struct(">HHI")  # base seq, status count, reference time (24) + fb count (8)
_U16 = struct.Struct(">H")
_I16 = struct.Struct(">h")


class RunLengthChunk(NamedTuple):
    """Decoded run-length chunk (§3.1.3): ``run_length`` packets all with ``status``."""

    status: int
    run_length: int


class StatusVectorChunk(NamedTuple):
    """Decoded status vector chunk (§3.1.4): 14 one-bit or 7 two-bit symbols, first MSB."""

    symbols: tuple[int, ...]
    two_bit: bool


def chunk_capacity(word: int) -> int:
    """Number of packet statuses a raw chunk word describes."""
    if not word & 0x8000:
        return word & _RUN_LENGTH_MAX
    return _TWO_BIT_CAPACITY if word & 0x4000 else _ONE_BIT_CAPACITY


def decode_chunk(word: int) -> RunLengthChunk | StatusVectorChunk:
    """Decode a raw 16-bit chunk word into a typed view."""
    if not word & 0x8000:
        return RunLengthChunk((word >> 13) & 0x3, word & _RUN_LENGTH_MAX)
    if word & 0x4000:
        return StatusVectorChunk(tuple((word >> (12 - 2 * i)) & 0x3 for i in range(7)), True)
    return StatusVectorChunk(tuple((word >> (13 - i)) & 0x1 for i in range(14)), False)


def encode_run_length(status: int, run_length: int) -> int:
    """Raw word for a run-length chunk: T=0, 2-bit status, 13-bit run length."""
    if not (0 <= status <= 3 and 0 <= run_length <= _RUN_LENGTH_MAX):
        raise ValueError("run-length chunk: status must fit 2 bits and length 13 bits")
    return (status << 13) | run_length


def encode_status_vector(symbols: Sequence[int], two_bit: bool) -> int:
    """Raw word for a status vector chunk; missing trailing symbols are zero-filled."""
    capacity = _TWO_BIT_CAPACITY if two_bit else _ONE_BIT_CAPACITY
    width = 2 if two_bit else 1
    if len(symbols) > capacity or any(not 0 <= s < (1 << width) for s in symbols):
        raise ValueError("status vector: too many symbols or symbol too wide")
    word = 0xC000 if two_bit else 0x8000
    for i, sym in enumerate(symbols):
        word |= sym << (14 - width * (i + 1))
    return word


def _runs(chunks: Sequence[int], status_count: int) -> Iterator[tuple[int, int]]:
    """Yield (status, how many) for the first ``status_count`` packets the chunks describe."""
    remaining = status_count
    for word in chunks:
        if remaining <= 0:
            return
        if not word & 0x8000:
            n = min(word & _RUN_LENGTH_MAX, remaining)
            if n:
                yield (word >> 13) & 0x3, n
            remaining -= n
            continue
        if word & 0x4000:
            n = min(_TWO_BIT_CAPACITY, remaining)
            for i in range(n):
                yield (word >> (12 - 2 * i)) & 0x3, 1
        else:
            n = min(_ONE_BIT_CAPACITY, remaining)
            for i in range(n):
                yield (word >> (13 - i)) & 0x1, 1
        remaining -= n


@dataclass(slots=True)
class TransportFeedback:
    """Transport-wide CC feedback, with chunks kept as raw words for byte-exact round trips.

    ``deltas`` holds one receive delta per received packet, in 250 µs ticks as on the wire
    (0..255 for small-delta status, signed 16-bit for large). ``reference_time`` is the
    signed 24-bit value in 64 ms units. ``trailing`` keeps any zero padding that is inside
    the length but not signalled with the P bit; ``padding`` is RTCP padding (P bit).
    """

    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    status_count: int
    reference_time: int
    fb_count: int
    chunks: list[int] = field(default_factory=list)
    deltas: list[int] = field(default_factory=list)
    trailing: bytes = b""
    padding: bytes = b""

    @property
    def reference_time_us(self) -> int:
        """The reference time in microseconds (in the feedback sender's time base)."""
        return self.reference_time * REFERENCE_TICK_US

    def iter_packets(self) -> Iterator[tuple[int, int, int | None]]:
        """Yield (seq, status, receive delta in µs or None when not received) per packet."""
        seq = self.base_seq
        di = 0
        deltas = self.deltas
        for status, n in _runs(self.chunks, self.status_count):
            if status == STATUS_RESERVED:
                raise ValueError("transport feedback uses the reserved status")
            for _ in range(n):
                if status == STATUS_NOT_RECEIVED:
                    yield seq, status, None
                else:
                    if di >= len(deltas):
                        raise ValueError("transport feedback has fewer deltas than statuses")
                    yield seq, status, deltas[di] * DELTA_TICK_US
                    di += 1
                seq = (seq + 1) & 0xFFFF

    def iter_arrivals(self) -> Iterator[tuple[int, int | None]]:
        """Yield (seq, arrival time in µs or None), accumulating deltas on the reference."""
        now = self.reference_time_us
        for seq, _status, delta in self.iter_packets():
            if delta is None:
                yield seq, None
            else:
                now += delta
                yield seq, now

    def received(self, offset_us: int = 0) -> tuple[array[int], array[int], int]:
        """The received packets' sequence numbers and arrival times (µs, accumulated on the
        reference time plus ``offset_us``), and how many packets were reported lost: what
        :meth:`iter_arrivals` yields, in one pass. Lost runs are counted, never expanded,
        so the work is bounded by the chunks and deltas present, not the status count a
        peer claims. Raises ValueError where :meth:`iter_packets` would."""
        seqs: array[int] = array("H")
        times: array[int] = array("q")
        seq = self.base_seq
        at = self.reference_time * REFERENCE_TICK_US + offset_us
        deltas = self.deltas
        di = 0
        lost = 0
        for status, n in _runs(self.chunks, self.status_count):
            if status == STATUS_NOT_RECEIVED:
                lost += n
                seq = (seq + n) & 0xFFFF
                continue
            if status == STATUS_RESERVED:
                raise ValueError("transport feedback uses the reserved status")
            if di + n > len(deltas):
                raise ValueError("transport feedback has fewer deltas than statuses")
            for delta in deltas[di : di + n]:
                at += delta * DELTA_TICK_US
                seqs.append(seq)
                times.append(at)
                seq = (seq + 1) & 0xFFFF
            di += n
        return seqs, times, lost

    @classmethod
    def parse(cls, data: Buffer) -> Self:
        """Parse one transport feedback packet occupying all of ``data``."""
        data = as_bytes(data)
        return cls._from_frame(data, read_feedback_frame(data, PT_RTPFB, FMT_TWCC, "TWCC"))

    @classmethod
    def _from_frame(cls, data: bytes, frame: Frame) -> Self:
        end = frame.body_end
        pos = frame.body_start
        if end - pos < FEEDBACK_HEADER_SIZE + _FIXED.size:
            raise ParseError("RTCP TWCC: truncated fixed fields")
        sender, media = struct.unpack_from(">II", data, pos)
        base_seq, status_count, ref_fb = _FIXED.unpack_from(data, pos + FEEDBACK_HEADER_SIZE)
        pos += FEEDBACK_HEADER_SIZE + _FIXED.size
        reference = ref_fb >> 8
        if reference & 0x800000:
            reference -= _REF_WRAP  # §3.1: signed 24-bit

        # Every chunk costs two input octets, so this list is bounded by the input size.
        chunks: list[int] = []
        covered = 0
        while covered < status_count:
            if end - pos < 2:
                raise ParseError("RTCP TWCC: truncated packet chunks")
            (word,) = _U16.unpack_from(data, pos)
            pos += 2
            chunks.append(word)
            covered += chunk_capacity(word)

        # Each delta consumes at least one input octet; sizes are checked before reading.
        deltas: list[int] = []
        for status, n in _runs(chunks, status_count):
            if status == STATUS_SMALL_DELTA:
                if end - pos < n:
                    raise ParseError("RTCP TWCC: truncated receive deltas")
                deltas.extend(data[pos : pos + n])
                pos += n
            elif status == STATUS_LARGE_DELTA:
                if end - pos < 2 * n:
                    raise ParseError("RTCP TWCC: truncated receive deltas")
                if n == 1:
                    deltas.append(_I16.unpack_from(data, pos)[0])
                else:
                    deltas.extend(struct.unpack_from(f">{n}h", data, pos))
                pos += 2 * n
            elif status == STATUS_RESERVED:
                raise ParseError("RTCP TWCC: reserved packet status")
        return cls(
            int(sender),
            int(media),
            base_seq,
            status_count,
            reference,
            ref_fb & 0xFF,
            chunks,
            deltas,
            bytes(data[pos:end]),
            padding_of(data, frame),
        )

    def _encode_deltas(self) -> bytes:
        """Encode ``deltas`` with the sizes the chunks dictate, validating the counts."""
        out = bytearray()
        di = 0
        deltas = self.deltas
        for status, n in _runs(self.chunks, self.status_count):
            if status == STATUS_NOT_RECEIVED:
                continue
            if status == STATUS_RESERVED:
                raise ValueError("transport feedback uses the reserved status")
            part = deltas[di : di + n]
            if len(part) != n:
                raise ValueError("transport feedback has fewer deltas than statuses")
            di += n
            if status == STATUS_SMALL_DELTA:
                if any(not 0 <= d <= 0xFF for d in part):
                    raise ValueError("small receive delta must be 0..255 ticks")
                out += bytes(part)
            else:
                if any(not -0x8000 <= d <= 0x7FFF for d in part):
                    raise ValueError("large receive delta must fit signed 16 bits")
                out += struct.pack(f">{n}h", *part)
        if di != len(deltas):
            raise ValueError("transport feedback has more deltas than received statuses")
        return bytes(out)

    def serialize(self) -> bytes:
        """Encode to wire format; the chunks must cover ``status_count`` with none spare."""
        check_u32(self.sender_ssrc, "sender_ssrc")
        check_u32(self.media_ssrc, "media_ssrc")
        if not (0 <= self.base_seq <= 0xFFFF and 0 <= self.status_count <= 0xFFFF):
            raise ValueError("base_seq and status_count must fit 16 bits")
        if not (-(_REF_WRAP >> 1) <= self.reference_time < (_REF_WRAP >> 1)):
            raise ValueError("reference_time must fit signed 24 bits")
        if not 0 <= self.fb_count <= 0xFF:
            raise ValueError("fb_count must fit 8 bits")
        covered = 0
        for word in self.chunks:
            if not 0 <= word <= 0xFFFF:
                raise ValueError("packet chunk must fit 16 bits")
            if covered >= self.status_count:
                raise ValueError("packet chunks beyond status_count would not round-trip")
            covered += chunk_capacity(word)
        if covered < self.status_count:
            raise ValueError("packet chunks do not cover status_count")
        body = b"".join(
            (
                struct.pack(">II", self.sender_ssrc, self.media_ssrc),
                _FIXED.pack(
                    self.base_seq,
                    self.status_count,
                    ((self.reference_time % _REF_WRAP) << 8) | self.fb_count,
                ),
                struct.pack(f">{len(self.chunks)}H", *self.chunks),
                self._encode_deltas(),
                self.trailing,
            )
        )
        return pack_header(FMT_TWCC, PT_RTPFB, len(body), self.padding) + body + self.padding


def _encode_statuses(statuses: Sequence[int]) -> list[int]:
    """Pick compact chunks for a status list, following libwebrtc's strategy.

    A chunk grows while it can: up to 7 of anything (two-bit vector), up to 14 while no
    large delta is involved (one-bit vector), or up to 8191 while all equal (run length).
    When it cannot grow, an all-equal chunk becomes a run length, a full 14 becomes a
    one-bit vector, and otherwise the first 7 go out as a two-bit vector. The final chunk
    is a one-bit vector unless it holds a large delta (libwebrtc would use two bits for a
    final chunk of at most 7; the size is the same).
    """
    chunks: list[int] = []
    n = len(statuses)
    i = 0
    while i < n:
        first = statuses[i]
        j = i
        all_same = True
        has_large = False
        while j < n:
            s = statuses[j]
            size = j - i
            if not (
                size < _TWO_BIT_CAPACITY
                or (size < _ONE_BIT_CAPACITY and not has_large and s != STATUS_LARGE_DELTA)
                or (size < _RUN_LENGTH_MAX and all_same and s == first)
            ):
                break
            all_same = all_same and s == first
            has_large = has_large or s == STATUS_LARGE_DELTA
            j += 1
        size = j - i
        if all_same:
            chunks.append(encode_run_length(first, size))
            i = j
        elif size == _ONE_BIT_CAPACITY or (j == n and not has_large):
            chunks.append(encode_status_vector(statuses[i:j], two_bit=False))
            i = j
        else:
            take = min(size, _TWO_BIT_CAPACITY)
            chunks.append(encode_status_vector(statuses[i : i + take], two_bit=True))
            i += take
    return chunks


def build_transport_feedback(
    sender_ssrc: int,
    media_ssrc: int,
    base_seq: int,
    fb_count: int,
    reference_time_us: int,
    arrivals: Sequence[int | None],
) -> TransportFeedback:
    """Build feedback for packets ``base_seq, base_seq+1, ...`` with the given arrival times.

    ``arrivals[i]`` is the arrival time in µs (same clock as ``reference_time_us``) or None
    when lost. Times are rounded to 250 µs against the 64 ms-aligned reference without
    accumulating rounding error. Raises ValueError when a delta exceeds signed 16 bits of
    ticks (about ±8.2 s): the caller should then start a new feedback packet.
    """
    if not 0 <= base_seq <= 0xFFFF:
        raise ValueError("base_seq must fit 16 bits")
    if len(arrivals) > 0xFFFF:
        raise ValueError("at most 65535 packets per feedback")
    ref_ticks = reference_time_us // REFERENCE_TICK_US
    origin = ref_ticks * REFERENCE_TICK_US
    statuses: list[int] = []
    deltas: list[int] = []
    last = 0  # ticks since origin of the previous received packet (reference at start)
    for arrival in arrivals:
        if arrival is None:
            statuses.append(STATUS_NOT_RECEIVED)
            continue
        ticks = (arrival - origin + DELTA_TICK_US // 2) // DELTA_TICK_US
        delta = ticks - last
        last = ticks
        if 0 <= delta <= 0xFF:
            statuses.append(STATUS_SMALL_DELTA)
        elif -0x8000 <= delta <= 0x7FFF:
            statuses.append(STATUS_LARGE_DELTA)
        else:
            raise ValueError("receive delta does not fit signed 16 bits; split the feedback")
        deltas.append(delta)
    half = _REF_WRAP >> 1
    feedback = TransportFeedback(
        sender_ssrc=sender_ssrc,
        media_ssrc=media_ssrc,
        base_seq=base_seq,
        status_count=len(arrivals),
        reference_time=(ref_ticks + half) % _REF_WRAP - half,
        fb_count=fb_count,
        chunks=_encode_statuses(statuses),
        deltas=deltas,
    )
    # Like libwebrtc, align to 32 bits with RTCP padding (P bit) rather than bare zeros.
    content = FEEDBACK_HEADER_SIZE + _FIXED.size + 2 * len(feedback.chunks)
    content += sum(1 if s == STATUS_SMALL_DELTA else 2 for s in statuses if s)
    pad = -content % 4
    if pad:
        feedback.padding = bytes(pad - 1) + bytes([pad])
    return feedback
