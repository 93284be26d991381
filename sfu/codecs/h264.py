"""H.264 RTP payload inspection (RFC 6184 §5): NAL header, single NAL, STAP-A and FU-A.

Only headers are read (the NAL unit header, STAP-A sizes, the FU header and at most one
octet of slice header), which is all an SFU needs to find keyframes and frame starts.
STAP-B, MTAP16/24, FU-B and reserved types are reported as valid but unsupported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from sfu.codecs._fields import payload_end
from sfu.packet.errors import ParseError

__all__ = [
    "NAL_AUD",
    "NAL_IDR",
    "NAL_PPS",
    "NAL_SEI",
    "NAL_SLICE",
    "NAL_SPS",
    "H264Descriptor",
    "H264Packetization",
    "iter_stap_a",
    "parse_h264",
]

BytesLike = bytes | bytearray | memoryview

# NAL unit types (H.264 Table 7-1) that matter for forwarding decisions.
NAL_SLICE = 1
NAL_DPA = 2  # slice data partition A: starts with a slice header
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
# Packetization types (RFC 6184 §5.2, Table 1).
_STAP_A = 24
_FU_A = 28
_FIRST_PACKETIZATION_TYPE = 24
_LAST_PACKETIZATION_TYPE = 29

_F = 0x80
_NRI_SHIFT = 5
_TYPE_MASK = 0x1F
_FU_S = 0x80
_FU_E = 0x40

# Non-VCL units that, per H.264 §7.4.1.2.3, may only precede the first slice of an access
# unit (AUD, SEI, SPS, SPS extension, subset SPS) or, for PPS, in practice are sent with
# SPS ahead of the picture they configure.
_AU_LEADING_TYPES = frozenset((NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, 13, 15))
_KEY_TYPES = frozenset((NAL_IDR, NAL_SPS))


class H264Packetization(IntEnum):
    """How the RTP payload carries NAL units (RFC 6184 §5.4)."""

    SINGLE_NAL = 1
    STAP_A = 2
    FU_A = 3
    UNSUPPORTED = 4
    """STAP-B, MTAP16, MTAP24, FU-B or a reserved type: valid, but not inspected."""


@dataclass(slots=True)
class H264Descriptor:
    """What an SFU needs to know about one H.264 RTP payload."""

    packetization: H264Packetization
    """Packet structure; selects which of the fields below are meaningful."""
    nal_type: int
    """Type field of the payload header (1-23 single NAL, 24 STAP-A, 28 FU-A, ...)."""
    nri: int
    """NRI of the payload header: 0 means no other NAL unit depends on it."""
    forbidden_bit: bool = False
    """F bit of the payload header; 1 signals a known bit error (RFC 6184 §5.3)."""
    nal_types: tuple[int, ...] = ()
    """Types of the NAL units carried: aggregated units in order, or the FU-A original type."""
    fu_start: bool = False
    """FU-A S bit: this fragment starts the NAL unit."""
    fu_end: bool = False
    """FU-A E bit: this fragment ends the NAL unit."""
    is_start_of_frame: bool = False
    """The first carried NAL unit begins an access unit: AUD/SEI/SPS/PPS, or a slice whose
    first_mb_in_slice is 0 (for FU-A only in the S=1 fragment). SPS and PPS sent in
    separate packets each report True; False also covers "cannot tell"."""

    @property
    def is_keyframe(self) -> bool:
        """Carries an IDR slice or SPS (for FU-A: the first fragment of one)."""
        if self.packetization is H264Packetization.FU_A:
            return self.fu_start and self.nal_types[0] in _KEY_TYPES
        return any(t in _KEY_TYPES for t in self.nal_types)


def _begins_access_unit(nal_type: int, buf: BytesLike, pos: int, end: int) -> bool:
    """Whether a NAL unit of ``nal_type`` whose body starts at ``pos`` begins a picture."""
    if nal_type in _AU_LEADING_TYPES:
        return True
    if nal_type in (NAL_SLICE, NAL_DPA, NAL_IDR):
        # The slice header opens with first_mb_in_slice as ue(v) (H.264 §7.3.3); the
        # code for 0 is the single bit '1'. The first body octet cannot be an emulation
        # prevention byte, so no unescaping is needed.
        return pos < end and bool(buf[pos] & 0x80)
    return False


def iter_stap_a(
    buf: BytesLike, offset: int = 0, end: int | None = None
) -> Iterator[tuple[int, int]]:
    """Yield ``(offset, length)`` of each NAL unit in the STAP-A at ``buf[offset:end]``.

    The offsets index ``buf`` and include each unit's NAL header; sizes are checked
    against the payload end (RFC 6184 §5.7.1). Raises ParseError on a truncated, empty
    or nested unit, or when the payload is not a STAP-A.
    """
    n = len(buf)
    if end is None:
        end = n
    if not 0 <= offset < end <= n:
        raise ParseError("H.264: offset/end outside the buffer")
    if buf[offset] & _TYPE_MASK != _STAP_A:
        raise ParseError("H.264: not a STAP-A")
    pos = offset + 1
    if pos >= end:
        raise ParseError("H.264: STAP-A without NAL units")
    while pos < end:
        if end - pos < 2:
            raise ParseError("H.264: truncated STAP-A NAL unit size")
        size = (buf[pos] << 8) | buf[pos + 1]
        pos += 2
        if size == 0:
            raise ParseError("H.264: empty NAL unit in STAP-A")
        if end - pos < size:
            raise ParseError("H.264: STAP-A NAL unit overruns the payload")
        t = buf[pos] & _TYPE_MASK
        if _FIRST_PACKETIZATION_TYPE <= t <= _LAST_PACKETIZATION_TYPE:
            raise ParseError("H.264: packetization unit nested in STAP-A")
        yield pos, size
        pos += size


def parse_h264(buf: BytesLike, offset: int = 0, end: int | None = None) -> H264Descriptor:
    """Inspect the H.264 RTP payload at ``buf[offset:end]`` without copying it."""
    end = payload_end(buf, offset, end, "H.264")
    if offset >= end:
        raise ParseError("H.264: empty payload")
    hdr = buf[offset]
    nal_type = hdr & _TYPE_MASK
    d = H264Descriptor(
        packetization=H264Packetization.UNSUPPORTED,
        nal_type=nal_type,
        nri=(hdr >> _NRI_SHIFT) & 0x03,
        forbidden_bit=bool(hdr & _F),
    )
    if 1 <= nal_type <= 23:
        # §5.6: the payload is the NAL unit itself.
        d.packetization = H264Packetization.SINGLE_NAL
        d.nal_types = (nal_type,)
        d.is_start_of_frame = _begins_access_unit(nal_type, buf, offset + 1, end)
    elif nal_type == _STAP_A:
        d.packetization = H264Packetization.STAP_A
        types: list[int] = []
        for pos, size in iter_stap_a(buf, offset, end):
            t = buf[pos] & _TYPE_MASK
            if not types:
                d.is_start_of_frame = _begins_access_unit(t, buf, pos + 1, pos + size)
            types.append(t)
        d.nal_types = tuple(types)
    elif nal_type == _FU_A:
        # §5.8: FU indicator, then |S|E|R|Type|; the payload may be empty.
        if end - offset < 2:
            raise ParseError("H.264: truncated FU-A header")
        fu = buf[offset + 1]
        orig = fu & _TYPE_MASK
        if _FIRST_PACKETIZATION_TYPE <= orig <= _LAST_PACKETIZATION_TYPE:
            raise ParseError("H.264: packetization unit nested in FU-A")
        d.packetization = H264Packetization.FU_A
        d.nal_types = (orig,)
        d.fu_start = bool(fu & _FU_S)
        d.fu_end = bool(fu & _FU_E)
        d.is_start_of_frame = d.fu_start and _begins_access_unit(orig, buf, offset + 2, end)
    return d
