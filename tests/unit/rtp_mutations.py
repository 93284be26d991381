"""Malformed RTP packets, one per way the data plane refuses a packet, for the tests.

Each mutation takes the fields of a packet a publisher would send (with a one-byte extension
block, as browsers do) and returns the plain bytes of a broken variant; ``EXPECTED`` says
which refusal code (``sfu._fastpath.values.REFUSAL_REASONS``) the data plane must count it
under. Unit tests, the fuzz corpus and the DTLS-SRTP integration test share them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from sfu._fastpath.values import REFUSAL_REASONS, REFUSED_DESCRIPTOR, REFUSED_PAYLOAD_TYPE
from sfu.packet.rtp import (
    RTP_DEFECT_CSRC,
    RTP_DEFECT_EXT_BLOCK,
    RTP_DEFECT_EXT_ELEMENT,
    RTP_DEFECT_EXT_PROFILE,
    RTP_DEFECT_NO_PAYLOAD,
    RTP_DEFECT_PADDING,
)

#: (ssrc, seq, timestamp, payload type, payload, one-byte extension elements) -> bytes
Mutation = Callable[[int, int, int, int, bytes, bytes], bytes]


def _header(b0: int, pt: int, seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)


def _block(profile: int, body: bytes, words: int | None = None) -> bytes:
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", profile, len(body) // 4 if words is None else words) + body


def _good(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    return _header(0x90, pt, seq, ts, ssrc) + _block(0xBEDE, ext) + payload


def padding_zero(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """P set and a padding count of 0 (RFC 3550 §5.1: the count includes itself)."""
    return _header(0xB0, pt, seq, ts, ssrc) + _block(0xBEDE, ext) + payload + b"\x00"


def padding_overrun(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """A padding count longer than everything after the header (the payload is cut to
    fit the count's one octet)."""
    payload = payload[:200]
    body = payload + bytes([len(payload) + 2])
    return _header(0xB0, pt, seq, ts, ssrc) + _block(0xBEDE, ext) + body


def one_byte_element_overrun(
    ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes
) -> bytes:
    """A one-byte-form element (RFC 8285 §4.2) whose value runs past its block."""
    return _header(0x90, pt, seq, ts, ssrc) + _block(0xBEDE, ext + b"\x2f\x01") + payload


def two_byte_element_overrun(
    ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes
) -> bytes:
    """A two-byte-form element (RFC 8285 §4.3) whose length runs past its block."""
    return _header(0x90, pt, seq, ts, ssrc) + _block(0x1000, b"\x02\x09\x01\x02") + payload


def unknown_profile(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """An extension block of neither RFC 8285 form."""
    return _header(0x90, pt, seq, ts, ssrc) + _block(0x1234, ext) + payload


def block_overrun(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """An extension block whose length in words runs past the packet."""
    return _header(0x90, pt, seq, ts, ssrc) + _block(0xBEDE, ext, words=0x4000) + payload


def csrc_overrun(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """A CSRC count of 15 with fewer bytes than 15 CSRCs after the fixed header."""
    return _header(0x8F, pt, seq, ts, ssrc) + payload[:8]


def bare_header(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """The 12-byte fixed header and nothing else."""
    return _header(0x80, pt, seq, ts, ssrc)


def unknown_payload_type(
    ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes
) -> bytes:
    """A well-formed packet of a payload type the stream does not carry."""
    return _good(ssrc, seq, ts, (pt + 1) & 0x7F, payload, ext)


def bad_vp8_descriptor(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """A VP8 descriptor (RFC 7741 §4.2) announcing an extension octet that is not there."""
    return _good(ssrc, seq, ts, pt, b"\x80", ext)


def empty_vp8_payload(ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes) -> bytes:
    """A VP8 descriptor with no payload after it."""
    return _good(ssrc, seq, ts, pt, b"\x10", ext)


#: Every mutation of any stream, and the refusal code it must be counted under.
COMMON: Final[dict[str, tuple[Mutation, int]]] = {
    "padding_zero": (padding_zero, RTP_DEFECT_PADDING),
    "padding_overrun": (padding_overrun, RTP_DEFECT_PADDING),
    "one_byte_element_overrun": (one_byte_element_overrun, RTP_DEFECT_EXT_ELEMENT),
    "two_byte_element_overrun": (two_byte_element_overrun, RTP_DEFECT_EXT_ELEMENT),
    "unknown_profile": (unknown_profile, RTP_DEFECT_EXT_PROFILE),
    "block_overrun": (block_overrun, RTP_DEFECT_EXT_BLOCK),
    "csrc_overrun": (csrc_overrun, RTP_DEFECT_CSRC),
    "bare_header": (bare_header, RTP_DEFECT_NO_PAYLOAD),
    "unknown_payload_type": (unknown_payload_type, REFUSED_PAYLOAD_TYPE),
}
#: Mutations that only a VP8 stream refuses (its descriptor is read).
VP8_ONLY: Final[dict[str, tuple[Mutation, int]]] = {
    "bad_vp8_descriptor": (bad_vp8_descriptor, REFUSED_DESCRIPTOR),
    "empty_vp8_payload": (empty_vp8_payload, REFUSED_DESCRIPTOR),
}
VIDEO: Final = {**COMMON, **VP8_ONLY}


def reason(code: int) -> str:
    """The metric label a refusal code is counted under."""
    return REFUSAL_REASONS[code]
