"""AV1 RTP Dependency Descriptor (AV1 RTP spec, Appendix A).

The descriptor tells an SFU, without touching the media payload, which frame a packet
belongs to, its spatial/temporal layer, its decode target indications (DTIs), frame
dependencies and chain state. Most packets carry only the 3 mandatory bytes and refer by
``template_id`` to a ``FrameDependencyStructure`` that a key frame attached earlier, so
parsing takes the last known structure as an argument.

Every loop here is bounded by the bits left in the input, so hostile input can neither spin
nor allocate more than a small multiple of its own size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from sfu.packet.errors import ParseError

__all__ = [
    "MAX_DECODE_TARGETS",
    "MAX_SPATIAL_IDS",
    "MAX_TEMPLATES",
    "MAX_TEMPORAL_IDS",
    "BitReader",
    "BitWriter",
    "DecodeTargetIndication",
    "DependencyDescriptor",
    "DependencyTracker",
    "FrameDependencyStructure",
    "FrameDependencyTemplate",
    "RenderResolution",
    "element_offset",
    "parse_dependency_descriptor",
    "peek_dependency_descriptor",
]

MAX_TEMPLATES = 64  # template ids are 6 bits (A.8.3)
MAX_DECODE_TARGETS = 32  # dt_cnt_minus_one is 5 bits
MAX_SPATIAL_IDS = 4  # AV1 OBU extension: spatial_id is 2 bits
MAX_TEMPORAL_IDS = 8  # AV1 OBU extension: temporal_id is 3 bits

# next_layer_idc values (A.8.3.2)
_SAME_LAYER = 0
_NEXT_TEMPORAL = 1
_NEXT_SPATIAL = 2
_NO_MORE_TEMPLATES = 3

# extended_descriptor_fields flag bits, in wire order (A.8.2)
_F_STRUCTURE = 0x10
_F_ACTIVE_DTS = 0x08
_F_CUSTOM_DTIS = 0x04
_F_CUSTOM_FDIFFS = 0x02
_F_CUSTOM_CHAINS = 0x01


class DecodeTargetIndication(IntEnum):
    """Per-decode-target role of a frame (Table A.1)."""

    NOT_PRESENT = 0  # '-': not associated with the decode target
    DISCARDABLE = 1  # 'D': no other frame of the target depends on it
    SWITCH = 2  # 'S': the target can be switched to at this frame
    REQUIRED = 3  # 'R': needed by the decode target


# --------------------------------------------------------------------------- bit I/O


class BitReader:
    """MSB-first bit reader over a byte string; raises ParseError past the end."""

    __slots__ = ("_pos", "_total", "_value")

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._total = 8 * len(data)
        self._pos = 0

    @property
    def position(self) -> int:
        """Bits consumed so far."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Bits not yet consumed."""
        return self._total - self._pos

    def read(self, nbits: int) -> int:
        """Read an unsigned ``nbits``-bit value, ``f(n)`` in the spec."""
        pos = self._pos + nbits
        if pos > self._total:
            raise ParseError("dependency descriptor truncated")
        self._pos = pos
        return (self._value >> (self._total - pos)) & ((1 << nbits) - 1)

    def read_bool(self) -> bool:
        """Read one bit as a flag."""
        return self.read(1) == 1

    def read_ns(self, n: int) -> int:
        """Read a non-symmetric unsigned value in ``[0, n)``, ``ns(n)`` in the spec (A.8.1)."""
        if n <= 1:
            return 0
        w = n.bit_length()
        m = (1 << w) - n
        v = self.read(w - 1)
        if v < m:
            return v
        return (v << 1) - m + self.read(1)


class BitWriter:
    """MSB-first bit writer, the inverse of :class:`BitReader`."""

    __slots__ = ("_bits", "_value")

    def __init__(self) -> None:
        self._value = 0
        self._bits = 0

    @property
    def bit_length(self) -> int:
        """Bits written so far."""
        return self._bits

    def write(self, value: int, nbits: int) -> None:
        """Append ``value`` as ``nbits`` bits; ValueError if it does not fit."""
        if not 0 <= value < (1 << nbits):
            raise ValueError(f"value {value} does not fit in {nbits} bits")
        self._value = (self._value << nbits) | value
        self._bits += nbits

    def write_bool(self, flag: bool) -> None:
        """Append one bit."""
        self.write(1 if flag else 0, 1)

    def write_ns(self, value: int, n: int) -> None:
        """Append ``value`` in ``[0, n)`` in the non-symmetric ``ns(n)`` code."""
        if not 0 <= value < max(n, 1):
            raise ValueError(f"value {value} out of range for ns({n})")
        if n <= 1:
            return
        w = n.bit_length()
        m = (1 << w) - n
        if value < m:
            self.write(value, w - 1)
        else:
            self.write((value + m) >> 1, w - 1)
            self.write((value + m) & 1, 1)

    def to_bytes(self, length: int | None = None) -> bytes:
        """Zero-pad to ``length`` bytes (default: the next byte boundary) and return them."""
        if length is None:
            length = (self._bits + 7) // 8
        extra = 8 * length - self._bits
        if extra < 0:
            raise ValueError(f"{self._bits} bits do not fit in {length} bytes")
        return (self._value << extra).to_bytes(length, "big")


# --------------------------------------------------------------------------- structure


@dataclass(slots=True, frozen=True)
class RenderResolution:
    """Maximum render size of one spatial layer (A.8.3.5)."""

    width: int
    height: int


@dataclass(slots=True, frozen=True)
class FrameDependencyTemplate:
    """One frame template: layer ids, DTIs per decode target, frame diffs, chain diffs."""

    spatial_id: int
    temporal_id: int
    dtis: tuple[int, ...]
    fdiffs: tuple[int, ...] = ()
    chain_fdiffs: tuple[int, ...] = ()


@dataclass(slots=True, frozen=True)
class FrameDependencyStructure:
    """``template_dependency_structure`` (A.8.3): templates shared by the frames of a GOP.

    ``decode_target_protected_by_chain`` has one entry per decode target when
    ``chain_count`` > 0 and is empty otherwise. ``resolutions`` has one entry per spatial
    layer when present.
    """

    template_id_offset: int
    decode_target_count: int
    templates: tuple[FrameDependencyTemplate, ...]
    chain_count: int = 0
    decode_target_protected_by_chain: tuple[int, ...] = ()
    resolutions: tuple[RenderResolution, ...] | None = None

    @property
    def max_spatial_id(self) -> int:
        """Highest spatial id; templates are ordered by spatial id on the wire."""
        return self.templates[-1].spatial_id if self.templates else 0

    def template_index(self, template_id: int) -> int:
        """Index into ``templates`` for a frame's template id; ParseError if out of range."""
        index = (template_id + MAX_TEMPLATES - self.template_id_offset) % MAX_TEMPLATES
        if index >= len(self.templates):
            raise ParseError(f"template id {template_id} not in the dependency structure")
        return index

    def template_for(self, template_id: int) -> FrameDependencyTemplate:
        """The template a frame with ``template_id`` refers to; ParseError if unknown."""
        return self.templates[self.template_index(template_id)]

    def decode_target_layers(self) -> tuple[tuple[int, int], ...]:
        """``(spatial_id, temporal_id)`` of each decode target (A.8.3.4).

        A decode target's layer is the highest spatial and temporal id over the templates
        that are present in it (DTI != NOT_PRESENT).
        """
        out: list[tuple[int, int]] = []
        for dt in range(self.decode_target_count):
            sid = tid = 0
            for t in self.templates:
                if t.dtis[dt] != DecodeTargetIndication.NOT_PRESENT:
                    sid = max(sid, t.spatial_id)
                    tid = max(tid, t.temporal_id)
            out.append((sid, tid))
        return tuple(out)

    def validate(self) -> None:
        """Raise ValueError unless the structure can be encoded."""
        dt_cnt = self.decode_target_count
        if not 0 <= self.template_id_offset < MAX_TEMPLATES:
            raise ValueError("template_id_offset must be 0-63")
        if not 1 <= dt_cnt <= MAX_DECODE_TARGETS:
            raise ValueError("decode_target_count must be 1-32")
        if not 1 <= len(self.templates) <= MAX_TEMPLATES:
            raise ValueError("a structure has 1-64 templates")
        if not 0 <= self.chain_count <= dt_cnt:
            raise ValueError("chain_count must be 0..decode_target_count")
        if self.chain_count:
            if len(self.decode_target_protected_by_chain) != dt_cnt:
                raise ValueError("need one protecting chain per decode target")
            if any(not 0 <= c < self.chain_count for c in self.decode_target_protected_by_chain):
                raise ValueError("protecting chain index out of range")
        elif self.decode_target_protected_by_chain:
            raise ValueError("protecting chains given with chain_count 0")
        first = self.templates[0]
        if (first.spatial_id, first.temporal_id) != (0, 0):
            raise ValueError("the first template must be spatial 0, temporal 0")
        for t in self.templates:
            if not 0 <= t.spatial_id < MAX_SPATIAL_IDS:
                raise ValueError("spatial id out of range")
            if not 0 <= t.temporal_id < MAX_TEMPORAL_IDS:
                raise ValueError("temporal id out of range")
            if len(t.dtis) != dt_cnt or any(not 0 <= d <= 3 for d in t.dtis):
                raise ValueError("template DTIs must be decode_target_count values 0-3")
            if any(not 1 <= f <= 16 for f in t.fdiffs):
                raise ValueError("template frame diffs must be 1-16")
            if len(t.chain_fdiffs) != self.chain_count or any(
                not 0 <= c <= 15 for c in t.chain_fdiffs
            ):
                raise ValueError("template chain diffs must be chain_count values 0-15")
        for a, b in zip(self.templates, self.templates[1:], strict=False):
            _next_layer_idc(a, b)
        if self.resolutions is not None:
            if len(self.resolutions) != self.max_spatial_id + 1:
                raise ValueError("need one resolution per spatial layer")
            for r in self.resolutions:
                if not (1 <= r.width <= 65536 and 1 <= r.height <= 65536):
                    raise ValueError("resolution out of range 1-65536")

    def write(self, w: BitWriter) -> None:
        """Append the structure's bits (A.8.3) to ``w``; ValueError if it is invalid."""
        self.validate()
        w.write(self.template_id_offset, 6)
        w.write(self.decode_target_count - 1, 5)
        templates = self.templates
        for i, t in enumerate(templates):
            nxt = templates[i + 1] if i + 1 < len(templates) else None
            w.write(_NO_MORE_TEMPLATES if nxt is None else _next_layer_idc(t, nxt), 2)
        for t in templates:
            for d in t.dtis:
                w.write(d, 2)
        for t in templates:
            for f in t.fdiffs:
                w.write(1, 1)
                w.write(f - 1, 4)
            w.write(0, 1)
        w.write_ns(self.chain_count, self.decode_target_count + 1)
        if self.chain_count:
            for c in self.decode_target_protected_by_chain:
                w.write_ns(c, self.chain_count)
            for t in templates:
                for c in t.chain_fdiffs:
                    w.write(c, 4)
        w.write_bool(self.resolutions is not None)
        if self.resolutions is not None:
            for r in self.resolutions:
                w.write(r.width - 1, 16)
                w.write(r.height - 1, 16)

    @classmethod
    def read(cls, r: BitReader) -> FrameDependencyStructure:
        """Read ``template_dependency_structure`` (A.8.3) from ``r``."""
        offset = r.read(6)
        dt_cnt = r.read(5) + 1
        # template_layers(): each template costs 2 bits, and ids are capped.
        layers: list[tuple[int, int]] = []
        sid = tid = 0
        while True:
            if len(layers) >= MAX_TEMPLATES:
                raise ParseError("more than 64 templates in dependency structure")
            layers.append((sid, tid))
            idc = r.read(2)
            if idc == _NEXT_TEMPORAL:
                tid += 1
                if tid >= MAX_TEMPORAL_IDS:
                    raise ParseError("temporal id overflow in dependency structure")
            elif idc == _NEXT_SPATIAL:
                sid += 1
                tid = 0
                if sid >= MAX_SPATIAL_IDS:
                    raise ParseError("spatial id overflow in dependency structure")
            elif idc == _NO_MORE_TEMPLATES:
                break
        count = len(layers)
        if r.remaining < 2 * dt_cnt * count:
            raise ParseError("dependency descriptor truncated in template DTIs")
        dtis = [tuple(r.read(2) for _ in range(dt_cnt)) for _ in range(count)]
        fdiffs: list[tuple[int, ...]] = []
        for _ in range(count):
            diffs: list[int] = []
            while r.read(1):  # fdiff_follows_flag; each entry consumes 5 bits
                diffs.append(r.read(4) + 1)
            fdiffs.append(tuple(diffs))
        chain_count = r.read_ns(dt_cnt + 1)
        protected_by: tuple[int, ...] = ()
        chains: list[tuple[int, ...]] = [()] * count
        if chain_count:
            protected_by = tuple(r.read_ns(chain_count) for _ in range(dt_cnt))
            if r.remaining < 4 * chain_count * count:
                raise ParseError("dependency descriptor truncated in template chains")
            chains = [tuple(r.read(4) for _ in range(chain_count)) for _ in range(count)]
        resolutions: tuple[RenderResolution, ...] | None = None
        if r.read(1):
            n_spatial = layers[-1][0] + 1
            resolutions = tuple(
                RenderResolution(r.read(16) + 1, r.read(16) + 1) for _ in range(n_spatial)
            )
        templates = tuple(
            FrameDependencyTemplate(s, t, dtis[i], fdiffs[i], chains[i])
            for i, (s, t) in enumerate(layers)
        )
        return cls(offset, dt_cnt, templates, chain_count, protected_by, resolutions)


def _next_layer_idc(cur: FrameDependencyTemplate, nxt: FrameDependencyTemplate) -> int:
    """next_layer_idc linking two consecutive templates; ValueError if not expressible."""
    if nxt.spatial_id == cur.spatial_id:
        if nxt.temporal_id == cur.temporal_id:
            return _SAME_LAYER
        if nxt.temporal_id == cur.temporal_id + 1:
            return _NEXT_TEMPORAL
    elif nxt.spatial_id == cur.spatial_id + 1 and nxt.temporal_id == 0:
        return _NEXT_SPATIAL
    raise ValueError(
        "templates must be ordered by layer: same layer, next temporal id, "
        "or next spatial id with temporal id 0"
    )


def _fdiff_size(fdiff: int) -> int:
    """Minimal next_fdiff_size (in nibbles) for a custom frame diff (A.8.4.2)."""
    v = fdiff - 1
    return 1 if v < 16 else 2 if v < 256 else 3


# --------------------------------------------------------------------------- descriptor


@dataclass(slots=True)
class DependencyDescriptor:
    """One parsed dependency descriptor header extension element.

    The raw optional fields are None when absent from the wire; the ``frame_*`` properties
    resolve them against the frame's template. ``structure`` is the structure attached to
    this packet (key frames); ``context`` is the previously known structure used for
    resolution otherwise (not part of equality). ``custom_fdiff_sizes``, ``byte_length``
    and ``padding_value`` only record non-canonical encodings so that serialization is
    byte-exact; they are None/0 for canonical descriptors.
    """

    start_of_frame: bool
    end_of_frame: bool
    template_id: int
    frame_number: int
    structure: FrameDependencyStructure | None = None
    active_decode_targets_bitmask: int | None = None
    custom_dtis: tuple[int, ...] | None = None
    custom_fdiffs: tuple[int, ...] | None = None
    custom_chain_fdiffs: tuple[int, ...] | None = None
    custom_fdiff_sizes: tuple[int, ...] | None = None
    byte_length: int | None = None
    padding_value: int = 0
    context: FrameDependencyStructure | None = field(default=None, compare=False, repr=False)

    @property
    def active_structure(self) -> FrameDependencyStructure:
        """The attached structure, else the context one; ParseError if neither is known."""
        s = self.structure if self.structure is not None else self.context
        if s is None:
            raise ParseError("no dependency structure known for this descriptor")
        return s

    @property
    def template(self) -> FrameDependencyTemplate:
        """The template this frame refers to; ParseError if it cannot be resolved."""
        return self.active_structure.template_for(self.template_id)

    @property
    def spatial_id(self) -> int:
        """Spatial layer of the frame."""
        return self.template.spatial_id

    @property
    def temporal_id(self) -> int:
        """Temporal layer of the frame."""
        return self.template.temporal_id

    @property
    def frame_dtis(self) -> tuple[int, ...]:
        """DTI per decode target (custom if sent, else the template's)."""
        return self.custom_dtis if self.custom_dtis is not None else self.template.dtis

    @property
    def frame_fdiffs(self) -> tuple[int, ...]:
        """Frame number differences to the frames this one depends on."""
        return self.custom_fdiffs if self.custom_fdiffs is not None else self.template.fdiffs

    @property
    def frame_chain_fdiffs(self) -> tuple[int, ...]:
        """Per chain, distance to the previous frame in the chain (0: none)."""
        if self.custom_chain_fdiffs is not None:
            return self.custom_chain_fdiffs
        return self.template.chain_fdiffs

    @property
    def referenced_frames(self) -> tuple[int, ...]:
        """Frame numbers (mod 2**16) this frame depends on."""
        return tuple((self.frame_number - f) & 0xFFFF for f in self.frame_fdiffs)

    @property
    def is_keyframe(self) -> bool:
        """A key frame's first packet starts the frame and attaches a structure."""
        return self.start_of_frame and self.structure is not None

    @property
    def active_decode_targets(self) -> int | None:
        """Active decode target bitmask, or None when unchanged from earlier packets.

        A newly attached structure without an explicit mask activates every target (A.8.2).
        """
        if self.active_decode_targets_bitmask is not None:
            return self.active_decode_targets_bitmask
        if self.structure is not None:
            return (1 << self.structure.decode_target_count) - 1
        return None

    @property
    def resolution(self) -> RenderResolution | None:
        """Maximum render resolution of the frame's spatial layer, if the structure has one."""
        s = self.active_structure
        if s.resolutions is None:
            return None
        return s.resolutions[s.template_for(self.template_id).spatial_id]

    def _flags(self) -> int:
        flags = 0
        if self.structure is not None:
            flags |= _F_STRUCTURE
        if self.active_decode_targets_bitmask is not None:
            flags |= _F_ACTIVE_DTS
        if self.custom_dtis is not None:
            flags |= _F_CUSTOM_DTIS
        if self.custom_fdiffs is not None:
            flags |= _F_CUSTOM_FDIFFS
        if self.custom_chain_fdiffs is not None:
            flags |= _F_CUSTOM_CHAINS
        return flags

    def serialize(self) -> bytes:
        """Encode to the element body; ValueError if fields are inconsistent."""
        if not 0 <= self.template_id < MAX_TEMPLATES:
            raise ValueError("template_id must be 0-63")
        if not 0 <= self.frame_number <= 0xFFFF:
            raise ValueError("frame_number must be 16 bits")
        w = BitWriter()
        w.write_bool(self.start_of_frame)
        w.write_bool(self.end_of_frame)
        w.write(self.template_id, 6)
        w.write(self.frame_number, 16)
        flags = self._flags()
        if flags or (self.byte_length is not None and self.byte_length > 3):
            self._write_extended(w, flags)
        length = self.byte_length
        if length is None:
            length = (w.bit_length + 7) // 8
        pad_bits = 8 * length - w.bit_length
        if pad_bits < 0:
            raise ValueError(f"descriptor needs more than byte_length={length} bytes")
        w.write(self.padding_value, pad_bits)
        return w.to_bytes(length)

    def _write_extended(self, w: BitWriter, flags: int) -> None:
        w.write(flags, 5)
        s = self.structure if self.structure is not None else self.context
        if self.structure is not None:
            self.structure.write(w)
        if s is not None:
            s.template_for(self.template_id)  # ParseError (a ValueError) if unresolvable
        if self.active_decode_targets_bitmask is not None:
            if s is None:
                raise ValueError("an active decode target mask needs a known structure")
            w.write(self.active_decode_targets_bitmask, s.decode_target_count)
        if self.custom_dtis is not None:
            if s is not None and len(self.custom_dtis) != s.decode_target_count:
                raise ValueError("custom DTIs must have one entry per decode target")
            for d in self.custom_dtis:
                w.write(d, 2)
        if self.custom_fdiffs is not None:
            sizes = self.custom_fdiff_sizes
            if sizes is not None and len(sizes) != len(self.custom_fdiffs):
                raise ValueError("custom_fdiff_sizes must match custom_fdiffs")
            for i, f in enumerate(self.custom_fdiffs):
                if not 1 <= f <= 4096:
                    raise ValueError("custom frame diffs must be 1-4096")
                size = sizes[i] if sizes is not None else _fdiff_size(f)
                if not 1 <= size <= 3:
                    raise ValueError("custom frame diff sizes must be 1-3")
                w.write(size, 2)
                w.write(f - 1, 4 * size)
            w.write(0, 2)
        elif self.custom_fdiff_sizes is not None:
            raise ValueError("custom_fdiff_sizes without custom_fdiffs")
        if self.custom_chain_fdiffs is not None:
            if s is not None and len(self.custom_chain_fdiffs) != s.chain_count:
                raise ValueError("custom chain diffs must have one entry per chain")
            for c in self.custom_chain_fdiffs:
                w.write(c, 8)


def peek_dependency_descriptor(data: bytes | bytearray | memoryview) -> tuple[bool, bool, int, int]:
    """Mandatory fields only: ``(start_of_frame, end_of_frame, template_id, frame_number)``.

    Needs no structure, so it works on any packet, e.g. before the key frame arrives.
    """
    if len(data) < 3:
        raise ParseError("dependency descriptor shorter than 3 bytes")
    b0 = data[0]
    return bool(b0 & 0x80), bool(b0 & 0x40), b0 & 0x3F, (data[1] << 8) | data[2]


def parse_dependency_descriptor(
    data: bytes | bytearray | memoryview, structure: FrameDependencyStructure | None = None
) -> DependencyDescriptor:
    """Parse a dependency descriptor element body (A.8).

    ``structure`` is the latest structure received on the stream; a structure attached to
    this packet takes precedence. Without either, only the mandatory fields (and custom
    frame diffs) can be decoded: the result's layer properties then raise ParseError, and
    fields whose size depends on the structure make parsing itself raise ParseError. A
    template id outside the known structure is a ParseError.
    """
    data = bytes(data)
    sof, eof, template_id, frame_number = peek_dependency_descriptor(data)
    n = len(data)
    if n == 3:
        if structure is not None:
            structure.template_index(template_id)
        return DependencyDescriptor(sof, eof, template_id, frame_number, context=structure)
    r = BitReader(data)
    r.read(24)
    flags = r.read(5)
    attached = FrameDependencyStructure.read(r) if flags & _F_STRUCTURE else None
    s = attached if attached is not None else structure
    if s is None and flags & (_F_ACTIVE_DTS | _F_CUSTOM_DTIS | _F_CUSTOM_CHAINS):
        raise ParseError("dependency descriptor needs a structure to be parsed")
    dt_cnt = chain_cnt = 0
    if s is not None:
        s.template_index(template_id)
        dt_cnt = s.decode_target_count
        chain_cnt = s.chain_count
    active: int | None = None
    if flags & _F_ACTIVE_DTS:
        active = r.read(dt_cnt)
    custom_dtis: tuple[int, ...] | None = None
    if flags & _F_CUSTOM_DTIS:
        if r.remaining < 2 * dt_cnt:
            raise ParseError("dependency descriptor truncated in frame DTIs")
        custom_dtis = tuple(r.read(2) for _ in range(dt_cnt))
    custom_fdiffs: tuple[int, ...] | None = None
    fdiff_sizes: tuple[int, ...] | None = None
    if flags & _F_CUSTOM_FDIFFS:
        diffs: list[int] = []
        sizes: list[int] = []
        size = r.read(2)
        while size:  # each entry consumes at least 6 bits
            diffs.append(r.read(4 * size) + 1)
            sizes.append(size)
            size = r.read(2)
        custom_fdiffs = tuple(diffs)
        if any(sz != _fdiff_size(f) for f, sz in zip(diffs, sizes, strict=True)):
            fdiff_sizes = tuple(sizes)
    custom_chains: tuple[int, ...] | None = None
    if flags & _F_CUSTOM_CHAINS:
        if r.remaining < 8 * chain_cnt:
            raise ParseError("dependency descriptor truncated in frame chains")
        custom_chains = tuple(r.read(8) for _ in range(chain_cnt))
    used_bits = r.position
    padding_value = r.read(r.remaining)
    # Record the length only when it is not the one serialize() would pick by itself.
    canonical = 3 if flags == 0 else (used_bits + 7) // 8
    return DependencyDescriptor(
        sof,
        eof,
        template_id,
        frame_number,
        attached,
        active,
        custom_dtis,
        custom_fdiffs,
        custom_chains,
        fdiff_sizes,
        None if n == canonical else n,
        padding_value,
        context=structure,
    )


# --------------------------------------------------------------------------- per stream


class DependencyTracker:
    """The newest template structure of one AV1 stream, and what it implies per frame.

    Packets refer to the structure by template id; a key frame attaches a new one (A.8.3).
    ``layers`` caches :meth:`FrameDependencyStructure.decode_target_layers` for it.
    """

    __slots__ = ("ext_id", "layers", "structure", "structure_seq", "structures")

    def __init__(self, ext_id: int) -> None:
        #: The publisher's RFC 8285 id of the descriptor (0: not negotiated).
        self.ext_id = ext_id
        self.structure: FrameDependencyStructure | None = None
        self.layers: tuple[tuple[int, int], ...] = ()
        #: How many structures were learned (a new one is a key frame's).
        self.structures = 0
        #: Extended sequence number of the packet the structure came in (-1: none yet).
        self.structure_seq = -1

    def read(self, data: bytes | bytearray | memoryview, ext_seq: int = -1) -> DependencyDescriptor:
        """Parse one descriptor against the known structure, and keep an attached one unless
        it came in a packet older (``ext_seq``, the extended RTP sequence number) than the
        one the current structure came in: a late retransmission of an earlier key frame."""
        dd = parse_dependency_descriptor(data, self.structure)
        if dd.structure is not None and ext_seq >= self.structure_seq:
            self.structure_seq = ext_seq
            if dd.structure != self.structure:
                self.structure = dd.structure
                self.layers = dd.structure.decode_target_layers()
            self.structures += 1
        return dd

    def temporal_switches(self, dtis: tuple[int, ...]) -> int:
        """Bit ``t`` set for each temporal layer ``t`` of a decode target whose DTI in
        ``dtis`` is SWITCH (the frame lets a receiver start decoding that target)."""
        mask = 0
        for (_, tid), dti in zip(self.layers, dtis, strict=False):
            if dti == DecodeTargetIndication.SWITCH:
                mask |= 1 << tid
        return mask

    def spatial_switch(
        self, spatial_id: int, dtis: tuple[int, ...], fdiffs: tuple[int, ...]
    ) -> bool:
        """Whether switching up to layer ``spatial_id`` can start at this frame: it is a
        switch point (DTI SWITCH) of a decode target of its own spatial layer, and it refers
        only to lower layer frames of its own picture (frame diffs up to ``spatial_id``: a
        picture's layer frames are numbered consecutively), which a subscriber forwarded the
        layers below got (AV1 RTP spec A.4; VP9's P=0)."""
        if any(f > spatial_id for f in fdiffs):
            return False
        for (sid, _), dti in zip(self.layers, dtis, strict=False):
            if sid == spatial_id and dti == DecodeTargetIndication.SWITCH:
                return True
        return False


def element_offset(packet: bytes | bytearray | memoryview, ext_id: int) -> tuple[int, int]:
    """``(offset, length)`` of the first RFC 8285 element ``ext_id`` in an RTP packet's
    extension block, ``(-1, 0)`` when absent; ParseError when the block is malformed.
    Forwarding rewrites extension ids in place, so the offset holds in the rewritten copy."""
    n = len(packet)
    if ext_id <= 0:
        return -1, 0
    if n < 12 or packet[0] >> 6 != 2:
        raise ParseError("not an RTP packet")
    if not packet[0] & 0x10:
        return -1, 0
    start = 12 + 4 * (packet[0] & 0x0F)
    if start + 4 > n:
        raise ParseError("RTP extension header truncated")
    profile = (packet[start] << 8) | packet[start + 1]
    end = start + 4 + 4 * ((packet[start + 2] << 8) | packet[start + 3])
    if end > n:
        raise ParseError("RTP header extension longer than the packet")
    pos = start + 4
    if profile == 0xBEDE:  # RFC 8285 §4.2 one-byte elements
        while pos < end:
            b = packet[pos]
            if b == 0:  # padding
                pos += 1
                continue
            eid, length = b >> 4, (b & 0x0F) + 1
            if eid == 15 or eid == 0:  # stop, as find_extension does
                break
            if pos + 1 + length > end:
                raise ParseError("header extension element overruns its block")
            if eid == ext_id:
                return pos + 1, length
            pos += 1 + length
    elif profile & 0xFFF0 == 0x1000:  # RFC 8285 §4.3 two-byte elements
        while pos < end:
            eid = packet[pos]
            if eid == 0:
                pos += 1
                continue
            if pos + 2 > end:
                raise ParseError("header extension element overruns its block")
            length = packet[pos + 1]
            if pos + 2 + length > end:
                raise ParseError("header extension element overruns its block")
            if eid == ext_id:
                return pos + 2, length
            pos += 2 + length
    return -1, 0
