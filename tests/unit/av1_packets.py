"""RTP packets of AV1 streams with the Dependency Descriptor (AV1 RTP spec, Appendix A),
written by :mod:`sfu.codecs.av1`'s serializer and shaped as libwebrtc sends ``L3T3_KEY`` and
``L1T3``: for the AV1 forwarding unit tests and the per-codec benchmark."""

from __future__ import annotations

from sfu.codecs.av1 import (
    DependencyDescriptor,
    FrameDependencyStructure,
    FrameDependencyTemplate,
    RenderResolution,
    parse_dependency_descriptor,
)
from sfu.packet.rtp import find_extension

__all__ = [
    "DD_ID",
    "L1T3",
    "L3T3_KEY",
    "PT",
    "SSRC",
    "av1_packet",
    "dd_of",
    "l1t3",
    "l3t3_key",
]

PT = 45
SSRC = 0x2345
#: The publisher's extension id of the descriptor.
DD_ID = 12

_S, _R, _D, _N = 2, 3, 1, 0  # DTI: switch, required, discardable, not present


def _spatial_templates(sid: int, layers: int) -> list[FrameDependencyTemplate]:
    """Templates of spatial layer ``sid`` of L{layers}T3_KEY (decode target s*3 + t):
    key (T0 of a key picture), T0 delta, T1, T2 after T0, T2 after T1."""

    def dtis(own: tuple[int, int, int], upper: tuple[int, int, int] = (_N, _N, _N)) -> tuple:
        row: list[int] = []
        for s in range(layers):
            row += own if s == sid else upper if s > sid else (_N, _N, _N)
        return tuple(row)

    key = dtis((_S, _S, _S), (_S, _S, _S))
    key_fdiffs: tuple[int, ...] = () if sid == 0 else (1,)
    frames = 3 if layers == 3 else layers
    return [
        FrameDependencyTemplate(sid, 0, key, key_fdiffs),
        FrameDependencyTemplate(
            sid, 0, dtis((_S, _S, _S)) if sid == 0 else dtis((_R, _R, _R)), (4 * frames,)
        ),
        FrameDependencyTemplate(sid, 1, dtis((_N, _S, _R)), (2 * frames,)),
        FrameDependencyTemplate(sid, 2, dtis((_N, _N, _S)), (frames,)),
        FrameDependencyTemplate(sid, 2, dtis((_N, _N, _D)), (frames,)),
    ]


def _structure(layers: int, offset: int = 0) -> FrameDependencyStructure:
    templates: list[FrameDependencyTemplate] = []
    for sid in range(layers):
        templates += _spatial_templates(sid, layers)
    sizes = ((320, 180), (640, 360), (1280, 720))[3 - layers :] if layers > 1 else ((640, 360),)
    return FrameDependencyStructure(
        offset,
        3 * layers,
        tuple(templates),
        resolutions=tuple(RenderResolution(w, h) for w, h in sizes),
    )


L3T3_KEY = _structure(3)
L1T3 = _structure(1)

#: Template index (within a spatial layer's five) per picture of the 0-2-1-2 cycle.
_CYCLE = (1, 3, 2, 4)


def av1_packet(
    seq: int,
    ts: int,
    dd: DependencyDescriptor,
    *,
    marker: bool = False,
    size: int = 10,
    ssrc: int = SSRC,
) -> bytes:
    """One RTP packet carrying ``dd`` as a two-byte header extension element (RFC 8285
    §4.3; a descriptor with a structure is longer than a one-byte element allows)."""
    body = dd.serialize()
    block = bytes([DD_ID, len(body)]) + body
    block += bytes(-len(block) % 4)
    header = bytes([0x90, (0x80 if marker else 0) | PT]) + seq.to_bytes(2, "big")
    header += (ts & 0xFFFFFFFF).to_bytes(4, "big") + ssrc.to_bytes(4, "big")
    header += b"\x10\x00" + (len(block) // 4).to_bytes(2, "big") + block
    return header + bytes([0x10]) + bytes([0xAA]) * size  # aggregation header, then OBUs


def _stream(
    structure: FrameDependencyStructure,
    pictures: int,
    key_every: int,
    first_seq: int,
    first_frame: int,
    size: int,
    ssrc: int,
) -> list[bytes]:
    layers = structure.max_spatial_id + 1
    out: list[bytes] = []
    seq = first_seq
    for p in range(pictures):
        key = p % key_every == 0
        for sid in range(layers):
            index = 5 * sid + (0 if key and p % 4 == 0 else _CYCLE[p % 4])
            if key and p % 4 != 0:
                index = 5 * sid  # a key picture off the cycle: still its key template
            frame = (first_frame + p * layers + sid) & 0xFFFF
            for part in range(2):
                dd = DependencyDescriptor(
                    part == 0,
                    part == 1,
                    (structure.template_id_offset + index) % 64,
                    frame,
                    structure if key and sid == 0 and part == 0 else None,
                    context=structure,
                )
                out.append(
                    av1_packet(
                        seq,
                        p * 3000,
                        dd,
                        marker=sid == layers - 1 and part == 1,
                        size=size * (sid + 1),
                        ssrc=ssrc,
                    )
                )
                seq = (seq + 1) & 0xFFFF
    return out


def l3t3_key(
    pictures: int,
    *,
    key_every: int = 1000,
    first_seq: int = 100,
    first_frame: int = 500,
    size: int = 10,
) -> list[bytes]:
    """``pictures`` pictures of three spatial layers, two packets per layer frame, temporal
    pattern 0-2-1-2, a key picture every ``key_every`` (and first)."""
    return _stream(L3T3_KEY, pictures, key_every, first_seq, first_frame, size, SSRC)


def l1t3(
    pictures: int,
    *,
    key_every: int = 1000,
    first_seq: int = 100,
    first_frame: int = 500,
    size: int = 10,
    ssrc: int = SSRC,
) -> list[bytes]:
    """One AV1 ``L1T3`` stream (a simulcast layer): two packets per frame."""
    return _stream(L1T3, pictures, key_every, first_seq, first_frame, size, ssrc)


def dd_of(
    packet: bytes, structure: FrameDependencyStructure = L3T3_KEY, ext_id: int = DD_ID
) -> DependencyDescriptor:
    """The descriptor of a (forwarded) packet, resolved against ``structure``."""
    raw = find_extension(packet, ext_id)
    assert raw is not None
    return parse_dependency_descriptor(raw, structure)
