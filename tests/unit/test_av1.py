"""Tests for sfu.codecs.av1: the AV1 RTP dependency descriptor (AV1 RTP spec, Appendix A)."""

from __future__ import annotations

import pytest
from fixture_files import allocation_bound, edited, peak_allocation
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.codecs.av1 import (
    BitReader,
    BitWriter,
    DecodeTargetIndication,
    DependencyDescriptor,
    FrameDependencyStructure,
    FrameDependencyTemplate,
    RenderResolution,
    parse_dependency_descriptor,
    peek_dependency_descriptor,
)
from sfu.packet.errors import ParseError

NP, D, S, R = (int(x) for x in DecodeTargetIndication)


def bits_to_bytes(bits: str) -> bytes:
    """Pack a string of '0'/'1' (spaces ignored) MSB first, zero-padded to whole bytes."""
    bits = bits.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


# L1T3: one spatial layer, three temporal layers, decode targets T0 / T0+T1 / T0+T1+T2,
# one chain protecting all of them (as libwebrtc's ScalabilityStructureL1T3 describes it).
L1T3 = FrameDependencyStructure(
    template_id_offset=0,
    decode_target_count=3,
    templates=(
        FrameDependencyTemplate(0, 0, (S, S, S), (), (0,)),
        FrameDependencyTemplate(0, 0, (S, S, S), (4,), (4,)),
        FrameDependencyTemplate(0, 1, (NP, D, S), (2,), (2,)),
        FrameDependencyTemplate(0, 2, (NP, NP, D), (1,), (1,)),
        FrameDependencyTemplate(0, 2, (NP, NP, D), (1,), (3,)),
    ),
    chain_count=1,
    decode_target_protected_by_chain=(0, 0, 0),
    resolutions=(RenderResolution(640, 360),),
)

# The key frame's descriptor for L1T3, written out field by field from Appendix A.
L1T3_KEYFRAME_BITS = " ".join(
    [
        "1 0 000000",  # start_of_frame, end_of_frame, frame_dependency_template_id = 0
        "0000000000000001",  # frame_number = 1
        "1 0 0 0 0",  # structure present; no active DTs, custom dtis/fdiffs/chains
        "000000",  # template_id_offset
        "00010",  # dt_cnt_minus_one = 2
        "00 01 01 00 11",  # next_layer_idc: same, +T, +T, same, end
        "101010 101010 000110 000001 000001",  # template DTIs (2 bits each)
        "0 1 0011 0 1 0001 0 1 0000 0 1 0000 0",  # template fdiffs: -, 4, 2, 1, 1
        "01",  # chain_cnt = ns(4) -> 1; protected_by = ns(1) takes no bits
        "0000 0100 0010 0001 0011",  # template chain fdiffs: 0, 4, 2, 1, 3
        "1",  # resolutions present
        "0000001001111111 0000000101100111",  # 639, 359
    ]
)


def l3t3_structure() -> FrameDependencyStructure:
    """Full-SVC L3T3: 9 decode targets (S x T), 3 chains, one per spatial layer."""
    templates: list[FrameDependencyTemplate] = []
    for s in range(3):
        for t, fdiff in ((0, 4), (0, 4), (1, 2), (2, 1), (2, 1)):
            dtis = []
            for ds in range(3):
                for dt in range(3):
                    if s > ds or t > dt:
                        dtis.append(NP)
                    elif s < ds:
                        dtis.append(R)
                    elif t == 0:
                        dtis.append(S)
                    else:
                        dtis.append(D if t == dt else S)
            fdiffs = (fdiff,) if s == 0 else (fdiff, 1)
            chains = tuple(min(15, fdiff + c) for c in range(3))
            templates.append(FrameDependencyTemplate(s, t, tuple(dtis), fdiffs, chains))
    return FrameDependencyStructure(
        template_id_offset=60,
        decode_target_count=9,
        templates=tuple(templates),
        chain_count=3,
        decode_target_protected_by_chain=(0, 0, 0, 1, 1, 1, 2, 2, 2),
        resolutions=(
            RenderResolution(320, 180),
            RenderResolution(640, 360),
            RenderResolution(1280, 720),
        ),
    )


# --------------------------------------------------------------------------- bit I/O


def test_bit_reader_and_writer() -> None:
    r = BitReader(b"\xa5\x0f")
    assert r.read(1) == 1
    assert r.read(3) == 0b010
    assert r.read(0) == 0
    assert r.read(8) == 0b01010000
    assert r.remaining == 4
    with pytest.raises(ParseError):
        r.read(5)
    w = BitWriter()
    w.write(1, 1)
    w.write(0b010, 3)
    w.write(0x50, 8)
    assert w.to_bytes() == b"\xa5\x00"
    with pytest.raises(ValueError):
        w.write(4, 2)
    with pytest.raises(ValueError):
        w.to_bytes(1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 33])
def test_non_symmetric_code_round_trip(n: int) -> None:
    for v in range(n):
        w = BitWriter()
        w.write_ns(v, n)
        w.write(1, 1)  # sentinel so trailing zero bits are significant
        r = BitReader(w.to_bytes())
        assert r.read_ns(n) == v
        assert r.read(1) == 1
    with pytest.raises(ValueError):
        BitWriter().write_ns(n, n)


def test_ns_known_codes() -> None:
    # ns(5): w=3, m=3 -> 0,1,2 take 2 bits; 3,4 take 3 bits (A.8.1).
    codes = []
    for v in range(5):
        w = BitWriter()
        w.write_ns(v, 5)
        codes.append((w.bit_length, w.to_bytes()[0] >> (8 - w.bit_length)))
    assert codes == [(2, 0), (2, 1), (2, 2), (3, 6), (3, 7)]


# --------------------------------------------------------------------------- L1T3


def test_l1t3_keyframe_from_hand_written_bits() -> None:
    data = bits_to_bytes(L1T3_KEYFRAME_BITS)
    dd = parse_dependency_descriptor(data, None)
    assert dd.start_of_frame and not dd.end_of_frame
    assert dd.template_id == 0
    assert dd.frame_number == 1
    assert dd.structure == L1T3
    assert dd.is_keyframe
    assert (dd.spatial_id, dd.temporal_id) == (0, 0)
    assert dd.active_decode_targets == 0b111
    assert dd.active_decode_targets_bitmask is None
    assert dd.frame_dtis == (S, S, S)
    assert dd.frame_chain_fdiffs == (0,)
    assert dd.resolution == RenderResolution(640, 360)
    assert L1T3.decode_target_layers() == ((0, 0), (0, 1), (0, 2))
    assert dd.serialize() == data
    assert DependencyDescriptor(True, False, 0, 1, L1T3).serialize() == data


def test_l1t3_delta_frames_use_known_structure() -> None:
    # Mandatory fields only: start+end of frame, template 3 (T2), frame 2.
    dd = parse_dependency_descriptor(b"\xc3\x00\x02", L1T3)
    assert dd.start_of_frame and dd.end_of_frame
    assert dd.structure is None
    assert not dd.is_keyframe
    assert (dd.spatial_id, dd.temporal_id) == (0, 2)
    assert dd.frame_dtis == (NP, NP, D)
    assert dd.referenced_frames == (1,)
    assert dd.active_decode_targets is None
    assert dd.serialize() == b"\xc3\x00\x02"
    assert peek_dependency_descriptor(b"\xc3\x00\x02") == (True, True, 3, 2)
    # Frame numbers wrap.
    assert parse_dependency_descriptor(b"\x42\x00\x01", L1T3).referenced_frames == (0xFFFF,)


def test_layers_need_a_structure() -> None:
    dd = parse_dependency_descriptor(b"\x80\x00\x05", None)
    assert dd.frame_number == 5
    with pytest.raises(ParseError):
        _ = dd.spatial_id
    with pytest.raises(ParseError):
        _ = dd.temporal_id
    # Template id beyond the known structure.
    with pytest.raises(ParseError):
        parse_dependency_descriptor(b"\x85\x00\x05", L1T3)
    # Custom DTIs cannot even be sized without a structure.
    with pytest.raises(ParseError):
        parse_dependency_descriptor(bits_to_bytes("10000000 00000000 00000101 00 1 0 0 1"), None)


def test_custom_fields_and_active_targets() -> None:
    bits = " ".join(
        [
            "0 1 000010",  # end_of_frame, template 2 (T1)
            "0000000000001010",  # frame 10
            "0 1 1 1 1",  # active targets, custom dtis, fdiffs, chains
            "011",  # active_decode_targets_bitmask (3 targets)
            "00 11 10",  # custom DTIs
            "01 0001",  # fdiff 2 (4 bits)
            "10 00010011",  # fdiff 20 (8 bits)
            "11 000000000000",  # fdiff 1 encoded with 12 bits (non-canonical)
            "00",  # end of fdiffs
            "00000111",  # chain fdiff 7
        ]
    )
    data = bits_to_bytes(bits)
    dd = parse_dependency_descriptor(data, L1T3)
    assert dd.temporal_id == 1
    assert dd.active_decode_targets_bitmask == 0b011
    assert dd.active_decode_targets == 0b011
    assert dd.frame_dtis == dd.custom_dtis == (NP, R, S)
    assert dd.frame_fdiffs == (2, 20, 1)
    assert dd.custom_fdiff_sizes == (1, 2, 3)
    assert dd.frame_chain_fdiffs == (7,)
    assert dd.referenced_frames == (8, 65526, 9)
    assert dd.serialize() == data
    canonical = DependencyDescriptor(
        False, True, 2, 10, None, 0b011, (NP, R, S), (2, 20, 1), (7,), context=L1T3
    ).serialize()
    assert len(canonical) < len(data)
    assert parse_dependency_descriptor(canonical, L1T3).frame_fdiffs == (2, 20, 1)


def test_extended_without_flags_and_trailing_padding_round_trip() -> None:
    for data in (b"\x81\x00\x07\x00", b"\x81\x00\x07\x00\x00\x00", b"\x81\x00\x07\x03\xff"):
        dd = parse_dependency_descriptor(data, L1T3)
        assert dd.frame_number == 7
        assert dd.temporal_id == 0
        assert dd.serialize() == data


# --------------------------------------------------------------------------- L3T3


def test_l3t3_round_trip_and_layers() -> None:
    l3t3 = l3t3_structure()
    l3t3.validate()
    assert l3t3.decode_target_layers() == tuple((s, t) for s in range(3) for t in range(3))
    assert l3t3.max_spatial_id == 2
    key = DependencyDescriptor(True, True, 60, 100, l3t3)
    data = key.serialize()
    parsed = parse_dependency_descriptor(data, None)
    assert parsed == key
    assert parsed.structure == l3t3
    assert parsed.is_keyframe
    # Template ids wrap modulo 64: offset 60, index 7 -> template id 3 (S1 T1).
    delta = parse_dependency_descriptor(bytes([0x03, 0x00, 101]), parsed.structure)
    assert (delta.spatial_id, delta.temporal_id) == (1, 1)
    assert delta.resolution == RenderResolution(640, 360)
    assert delta.frame_fdiffs == (2, 1)
    # A structure without resolutions.
    bare = FrameDependencyStructure(60, 9, l3t3.templates, 3, l3t3.decode_target_protected_by_chain)
    dd = parse_dependency_descriptor(DependencyDescriptor(True, False, 61, 5, bare).serialize())
    assert dd.structure == bare
    assert dd.resolution is None


@pytest.mark.parametrize(
    "structure",
    [
        FrameDependencyStructure(0, 1, ()),
        FrameDependencyStructure(64, 1, (FrameDependencyTemplate(0, 0, (S,)),)),
        FrameDependencyStructure(0, 0, (FrameDependencyTemplate(0, 0, ()),)),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 1, (S,)),)),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S, S)),)),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S,), (17,)),)),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S,), (), (1,)),)),
        FrameDependencyStructure(
            0, 1, (FrameDependencyTemplate(0, 0, (S,)), FrameDependencyTemplate(0, 2, (S,)))
        ),
        FrameDependencyStructure(
            0, 1, (FrameDependencyTemplate(0, 0, (S,)), FrameDependencyTemplate(1, 1, (S,)))
        ),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S,), (), (0,)),), 1, ()),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S,)),), 0, (0,)),
        FrameDependencyStructure(0, 1, (FrameDependencyTemplate(0, 0, (S,)),), resolutions=()),
    ],
)
def test_invalid_structures_are_rejected(structure: FrameDependencyStructure) -> None:
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 0, 0, structure).serialize()


def test_invalid_descriptors_are_rejected() -> None:
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 64, 0).serialize()
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 0, 1 << 16).serialize()
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 0, 0, active_decode_targets_bitmask=1).serialize()
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 0, 0, L1T3, custom_dtis=(S,)).serialize()
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 0, 0, L1T3, custom_fdiffs=(4097,)).serialize()
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 0, 0, L1T3, byte_length=3).serialize()
    with pytest.raises(ValueError):
        DependencyDescriptor(True, True, 9, 0, L1T3).serialize()


@pytest.mark.parametrize(
    "bits",
    [
        "1",  # shorter than the mandatory fields
        "10000000 00000000 00000001 1",  # structure flag, then nothing
        # 65 templates: next_layer_idc 'same' forever
        "10000000 00000000 00000001 10000 000000 00000 " + "00" * 70 + "11",
        # temporal id 8
        "10000000 00000000 00000001 10000 000000 00000 " + "01" * 8 + "11",
        # spatial id 4
        "10000000 00000000 00000001 10000 000000 00000 " + "10" * 4 + "11",
        # 32 decode targets x 64 templates of DTIs claimed, input ends
        "10000000 00000000 00000001 10000 000000 11111 " + "00" * 63 + "11",
        # custom fdiffs: the last entry claims 12 bits but only 7 remain
        "10000000 00000000 00000001 00010 10 11111111 11 1111111",
    ],
)
def test_malformed_descriptors_raise(bits: str) -> None:
    with pytest.raises(ParseError):
        parse_dependency_descriptor(bits_to_bytes(bits), L1T3)


# --------------------------------------------------------------------------- properties


@st.composite
def structures(draw: st.DrawFn) -> FrameDependencyStructure:
    dt_cnt = draw(st.integers(1, 6))
    n_templates = draw(st.integers(1, 7))
    layers = [(0, 0)]
    for _ in range(n_templates - 1):
        sid, tid = layers[-1]
        options = [(sid, tid)]
        if tid < 7:
            options.append((sid, tid + 1))
        if sid < 3:
            options.append((sid + 1, 0))
        layers.append(draw(st.sampled_from(options)))
    chain_count = draw(st.integers(0, dt_cnt))
    templates = tuple(
        FrameDependencyTemplate(
            sid,
            tid,
            tuple(draw(st.lists(st.integers(0, 3), min_size=dt_cnt, max_size=dt_cnt))),
            tuple(draw(st.lists(st.integers(1, 16), max_size=3))),
            tuple(draw(st.lists(st.integers(0, 15), min_size=chain_count, max_size=chain_count))),
        )
        for sid, tid in layers
    )
    protected = (
        tuple(draw(st.lists(st.integers(0, chain_count - 1), min_size=dt_cnt, max_size=dt_cnt)))
        if chain_count
        else ()
    )
    resolutions = None
    if draw(st.booleans()):
        resolutions = tuple(
            RenderResolution(draw(st.integers(1, 65536)), draw(st.integers(1, 65536)))
            for _ in range(layers[-1][0] + 1)
        )
    return FrameDependencyStructure(
        draw(st.integers(0, 63)), dt_cnt, templates, chain_count, protected, resolutions
    )


@st.composite
def descriptors(draw: st.DrawFn) -> DependencyDescriptor:
    s = draw(structures())
    attach = draw(st.booleans())
    index = draw(st.integers(0, len(s.templates) - 1))
    dt_cnt = s.decode_target_count
    opt = st.booleans()
    return DependencyDescriptor(
        start_of_frame=draw(st.booleans()),
        end_of_frame=draw(st.booleans()),
        template_id=(s.template_id_offset + index) % 64,
        frame_number=draw(st.integers(0, 0xFFFF)),
        structure=s if attach else None,
        active_decode_targets_bitmask=draw(st.integers(0, (1 << dt_cnt) - 1))
        if draw(opt)
        else None,
        custom_dtis=tuple(draw(st.lists(st.integers(0, 3), min_size=dt_cnt, max_size=dt_cnt)))
        if draw(opt)
        else None,
        custom_fdiffs=tuple(draw(st.lists(st.integers(1, 4096), max_size=4)))
        if draw(opt)
        else None,
        custom_chain_fdiffs=tuple(
            draw(st.lists(st.integers(0, 255), min_size=s.chain_count, max_size=s.chain_count))
        )
        if draw(opt)
        else None,
        context=s,
    )


@settings(max_examples=300, deadline=None)
@given(descriptors())
def test_property_object_round_trip(dd: DependencyDescriptor) -> None:
    data = dd.serialize()
    context = None if dd.structure is not None else dd.context
    parsed = parse_dependency_descriptor(data, context)
    assert parsed == dd
    assert parsed.serialize() == data
    template = parsed.active_structure.templates[
        (dd.template_id - parsed.active_structure.template_id_offset) % 64
    ]
    assert (parsed.spatial_id, parsed.temporal_id) == (template.spatial_id, template.temporal_id)
    assert parsed.is_keyframe == (dd.start_of_frame and dd.structure is not None)


def _parse_or_error(data: bytes, structure: FrameDependencyStructure | None) -> None:
    try:
        dd = parse_dependency_descriptor(data, structure)
    except ParseError:
        return
    assert dd.serialize() == data
    assert peek_dependency_descriptor(data)[3] == dd.frame_number


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([None, "l1t3", "l3t3"]))
def test_property_random_bytes(data: bytes, which: str | None) -> None:
    structure = {None: None, "l1t3": L1T3, "l3t3": l3t3_structure()}[which]
    _parse_or_error(data, structure)
    _parse_or_error(b"\x80\x00\x00\x80" + data, structure)  # structure flag set


@settings(max_examples=250, deadline=None)
@given(descriptors(), st.data())
def test_property_mutations(dd: DependencyDescriptor, data: st.DataObject) -> None:
    raw = edited(data, dd.serialize())
    _parse_or_error(raw, dd.context)
    _parse_or_error(raw, None)


@pytest.mark.parametrize(
    "bits",
    [
        # 32 decode targets, 64 templates, all DTIs present: the largest structure table.
        "10000000 00000000 00000001 10000 000000 11111 "
        + "00" * 63
        + "11"
        + "11" * 32 * 64
        + "0" * 64,
        "10000000 00000000 00000001 00010 " + "01 0000" * 300 + "00",
        "11111111" * 255,
    ],
)
def test_bounded_allocation(bits: str) -> None:
    data = bits_to_bytes(bits)
    peak = peak_allocation(lambda d: parse_dependency_descriptor(d, L1T3), data)
    assert peak < allocation_bound(data)
