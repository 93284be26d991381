"""VP9 RTP payload descriptor (RFC 9628 §4.2): parse, serialize and in-place rewrite.

Covers flexible (F=1) and non-flexible mode, layer indices, reference P_DIFFs and the
scalability structure (§4.2.1). The VP9 bitstream is never inspected, so end-to-end
encrypted payloads pass through untouched.
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
    "Vp9Descriptor",
    "Vp9PictureGroupEntry",
    "Vp9ScalabilityStructure",
    "parse_vp9",
    "rewrite_vp9_descriptor",
]

BytesLike = bytes | bytearray | memoryview

# Required octet, RFC 9628 §4.2: |I|P|L|F|B|E|V|Z|
_I = 0x80
_P = 0x40
_L = 0x20
_F = 0x10
_B = 0x08
_E = 0x04
_V = 0x02
_Z = 0x01
# Layer indices octet: |TID|U|SID|D|
_U = 0x10
_D = 0x01
# Flexible-mode reference octet: |P_DIFF|N|
_N = 0x01
_MAX_P_DIFFS = 3  # §4.2: "up to 3 times"
# SS header octet: |N_S|Y|G|-|-|-|
_SS_Y = 0x10
_SS_G = 0x08


@dataclass(slots=True)
class Vp9PictureGroupEntry:
    """One picture description of the SS picture group (§4.2.1)."""

    temporal_id: int = 0
    """3-bit temporal layer index of the picture."""
    switching_up_point: bool = False
    """U bit: a switch up to a higher temporal layer is possible at this picture."""
    p_diffs: tuple[int, ...] = ()
    """Up to 3 (R, 2 bits) 8-bit picture id differences of the referenced pictures."""


@dataclass(slots=True)
class Vp9ScalabilityStructure:
    """The SS block (§4.2.1), sent on keyframes to describe the stream's layering."""

    num_spatial_layers: int = 1
    """N_S + 1: number of spatial layers (1-8)."""
    resolutions: tuple[tuple[int, int], ...] | None = None
    """Y: (width, height) per spatial layer, lowest first; ``None`` when Y=0."""
    picture_group: tuple[Vp9PictureGroupEntry, ...] | None = None
    """G: the N_G (0-255) picture descriptions; ``None`` when G=0."""

    def _serialize_into(self, out: bytearray) -> None:
        n_s = self.num_spatial_layers - 1
        if not 0 <= n_s <= 7:
            raise ValueError("num_spatial_layers out of range")
        head = n_s << 5
        if self.resolutions is not None:
            if len(self.resolutions) != self.num_spatial_layers:
                raise ValueError("one resolution per spatial layer required")
            head |= _SS_Y
        if self.picture_group is not None:
            if len(self.picture_group) > 0xFF:
                raise ValueError("at most 255 picture group entries")
            head |= _SS_G
        out.append(head)
        if self.resolutions is not None:
            for width, height in self.resolutions:
                if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
                    raise ValueError("resolution out of range")
                out += width.to_bytes(2, "big") + height.to_bytes(2, "big")
        if self.picture_group is not None:
            out.append(len(self.picture_group))
            for pg in self.picture_group:
                if not 0 <= pg.temporal_id <= 7 or len(pg.p_diffs) > _MAX_P_DIFFS:
                    raise ValueError("invalid picture group entry")
                b = (pg.temporal_id << 5) | (len(pg.p_diffs) << 2)
                if pg.switching_up_point:
                    b |= _U
                out.append(b)
                out += bytes(pg.p_diffs)


@dataclass(slots=True)
class Vp9Descriptor:
    """One parsed VP9 payload descriptor; ``None`` marks an absent optional field.

    Reserved bits are ignored on parse and written as zero.
    """

    picture_id: int | None = None
    """I: running picture index, 7 or 15 bits wide (see ``picture_id_15bit``)."""
    picture_id_15bit: bool = False
    """M bit: the picture id uses the 2-octet (15-bit) form."""
    inter_picture_predicted: bool = False
    """P bit: the frame references earlier pictures (same spatial layer)."""
    flexible: bool = False
    """F bit: flexible mode (P_DIFFs inline) rather than non-flexible (TL0PICIDX, SS groups)."""
    is_start_of_frame: bool = False
    """B bit: first packet of a (layer) frame."""
    is_end_of_frame: bool = False
    """E bit: last packet of a (layer) frame."""
    not_reference_for_upper_spatial: bool = False
    """Z bit: the frame is not used as a reference by higher spatial layers."""
    temporal_id: int | None = None
    """L: 3-bit temporal layer index (``None`` when L=0)."""
    switching_up_point: bool = False
    """U bit: a switch up to a higher temporal layer is possible here (L=1 only)."""
    spatial_id: int | None = None
    """L: 3-bit spatial layer index (``None`` when L=0)."""
    inter_layer_dependency: bool = False
    """D bit: the frame depends on the next lower spatial layer (L=1 only)."""
    tl0picidx: int | None = None
    """8-bit temporal base layer index; present only in non-flexible mode with L=1."""
    p_diffs: tuple[int, ...] = ()
    """Flexible mode with P=1: 1-3 seven-bit picture id differences of the references."""
    scalability_structure: Vp9ScalabilityStructure | None = None
    """V: the scalability structure, if present."""

    @property
    def is_keyframe(self) -> bool:
        """Start of an intra-only frame in the base spatial layer (P=0, B=1, SID=0).

        A frame with P=0 needs no earlier picture (§4.2), so a receiver can start
        decoding here; upper spatial layers with P=0 still need the base layer.
        """
        return (
            not self.inter_picture_predicted
            and self.is_start_of_frame
            and not self.spatial_id
            and not self.inter_layer_dependency
        )

    @property
    def size(self) -> int:
        """Descriptor length in octets; the VP9 payload starts this far in."""
        n = 1
        if self.picture_id is not None:
            n += 2 if self.picture_id_15bit else 1
        if self.temporal_id is not None:
            n += 1 if self.flexible else 2
        n += len(self.p_diffs)
        ss = self.scalability_structure
        if ss is not None:
            n += 1
            if ss.resolutions is not None:
                n += 4 * len(ss.resolutions)
            if ss.picture_group is not None:
                n += 1 + sum(1 + len(pg.p_diffs) for pg in ss.picture_group)
        return n

    def serialize(self) -> bytes:
        """Encode the descriptor (without payload); raises ValueError on inconsistent fields."""
        has_layers = self.temporal_id is not None
        if has_layers != (self.spatial_id is not None):
            raise ValueError("temporal_id and spatial_id must be both set or both None")
        if self.tl0picidx is not None and (self.flexible or not has_layers):
            raise ValueError("tl0picidx requires non-flexible mode and layer indices")
        if has_layers and not self.flexible and self.tl0picidx is None:
            raise ValueError("non-flexible mode with layer indices requires tl0picidx")
        if self.p_diffs and not (self.flexible and self.inter_picture_predicted):
            raise ValueError("p_diffs require F=1 and P=1")
        if self.flexible and self.inter_picture_predicted and not self.p_diffs:
            raise ValueError("F=1 and P=1 require at least one P_DIFF")
        if len(self.p_diffs) > _MAX_P_DIFFS:
            raise ValueError("at most 3 P_DIFFs")
        out = bytearray(1)
        b0 = 0
        if self.picture_id is not None:
            b0 |= _I
            append_picture_id(out, self.picture_id, self.picture_id_15bit)
        if self.inter_picture_predicted:
            b0 |= _P
        if self.flexible:
            b0 |= _F
        if self.is_start_of_frame:
            b0 |= _B
        if self.is_end_of_frame:
            b0 |= _E
        if self.not_reference_for_upper_spatial:
            b0 |= _Z
        if self.temporal_id is not None and self.spatial_id is not None:
            b0 |= _L
            if not 0 <= self.temporal_id <= 7 or not 0 <= self.spatial_id <= 7:
                raise ValueError("layer index out of range")
            lb = (self.temporal_id << 5) | (self.spatial_id << 1)
            if self.switching_up_point:
                lb |= _U
            if self.inter_layer_dependency:
                lb |= _D
            out.append(lb)
            if self.tl0picidx is not None:
                out.append(self.tl0picidx)
        for i, diff in enumerate(self.p_diffs):
            if not 0 <= diff <= 0x7F:
                raise ValueError("P_DIFF out of range")
            out.append((diff << 1) | (_N if i + 1 < len(self.p_diffs) else 0))
        if self.scalability_structure is not None:
            b0 |= _V
            self.scalability_structure._serialize_into(out)
        out[0] = b0
        return bytes(out)


def _parse_ss(buf: BytesLike, pos: int, end: int) -> tuple[Vp9ScalabilityStructure, int]:
    """Parse the SS block at ``pos``; every loop is bounded by a 3- or 8-bit count."""
    if pos >= end:
        raise ParseError("VP9: truncated SS header")
    head = buf[pos]
    pos += 1
    ss = Vp9ScalabilityStructure(num_spatial_layers=(head >> 5) + 1)
    if head & _SS_Y:
        need = 4 * ss.num_spatial_layers
        if end - pos < need:
            raise ParseError("VP9: truncated SS resolutions")
        ss.resolutions = tuple(
            (
                (buf[p] << 8) | buf[p + 1],
                (buf[p + 2] << 8) | buf[p + 3],
            )
            for p in range(pos, pos + need, 4)
        )
        pos += need
    if head & _SS_G:
        if pos >= end:
            raise ParseError("VP9: truncated SS N_G")
        n_g = buf[pos]
        pos += 1
        group: list[Vp9PictureGroupEntry] = []
        for _ in range(n_g):
            if pos >= end:
                raise ParseError("VP9: truncated SS picture description")
            b = buf[pos]
            pos += 1
            r = (b >> 2) & 0x03
            if end - pos < r:
                raise ParseError("VP9: truncated SS P_DIFFs")
            group.append(
                Vp9PictureGroupEntry(
                    temporal_id=b >> 5,
                    switching_up_point=bool(b & _U),
                    p_diffs=tuple(buf[pos : pos + r]) if r else (),
                )
            )
            pos += r
        ss.picture_group = tuple(group)
    return ss, pos


def parse_vp9(buf: BytesLike, offset: int = 0, end: int | None = None) -> Vp9Descriptor:
    """Parse the descriptor at ``buf[offset:end]`` (an RTP payload) without copying it.

    At least one VP9 payload octet must follow the descriptor.
    """
    end = payload_end(buf, offset, end, "VP9")
    if offset >= end:
        raise ParseError("VP9: empty payload")
    b0 = buf[offset]
    pos = offset + 1
    d = Vp9Descriptor(
        inter_picture_predicted=bool(b0 & _P),
        flexible=bool(b0 & _F),
        is_start_of_frame=bool(b0 & _B),
        is_end_of_frame=bool(b0 & _E),
        not_reference_for_upper_spatial=bool(b0 & _Z),
    )
    if b0 & _I:
        pos = read_picture_id(d, buf, pos, end, "VP9")
    if b0 & _L:
        if pos >= end:
            raise ParseError("VP9: truncated layer indices")
        lb = buf[pos]
        pos += 1
        d.temporal_id = lb >> 5
        d.switching_up_point = bool(lb & _U)
        d.spatial_id = (lb >> 1) & 0x07
        d.inter_layer_dependency = bool(lb & _D)
        if not b0 & _F:
            if pos >= end:
                raise ParseError("VP9: truncated TL0PICIDX")
            d.tl0picidx = buf[pos]
            pos += 1
    if b0 & _F and b0 & _P:
        diffs: list[int] = []
        while True:
            if pos >= end:
                raise ParseError("VP9: truncated P_DIFF")
            r = buf[pos]
            pos += 1
            diffs.append(r >> 1)
            if not r & _N:
                break
            if len(diffs) == _MAX_P_DIFFS:
                raise ParseError("VP9: more than 3 P_DIFFs")
        d.p_diffs = tuple(diffs)
    if b0 & _V:
        d.scalability_structure, pos = _parse_ss(buf, pos, end)
    if pos >= end:
        raise ParseError("VP9: descriptor without payload")
    return d


def rewrite_vp9_descriptor(
    buf: bytearray | memoryview,
    offset: int,
    picture_id: int | None,
    tl0picidx: int | None,
) -> None:
    """Overwrite picture id / TL0PICIDX in place, keeping the descriptor length.

    Values are truncated to the existing field width (7 or 15 bits, 8); ``None`` or a
    field the descriptor lacks is left alone. Only those octets are written: the M bit,
    P_DIFFs, SS and the (possibly encrypted) VP9 payload are never touched. Raises
    ParseError if the descriptor at ``offset`` is truncated.
    """
    end = len(buf)
    if not 0 <= offset < end:
        raise ParseError("VP9: offset outside the buffer")
    b0 = buf[offset]
    pos = offset + 1
    pic_pos = tl0_pos = -1
    pic_size = 0
    if b0 & _I:
        pic_pos = pos
        pic_size = picture_id_size(buf, pos, end, "VP9")
        pos += pic_size
    if b0 & _L:
        if not b0 & _F:
            tl0_pos = pos + 1
        pos += 1 if b0 & _F else 2
    if pos > end:
        raise ParseError("VP9: truncated descriptor")
    if picture_id is not None and pic_pos >= 0:
        write_picture_id(buf, pic_pos, pic_size, picture_id)
    if tl0picidx is not None and tl0_pos >= 0:
        buf[tl0_pos] = tl0picidx & 0xFF
