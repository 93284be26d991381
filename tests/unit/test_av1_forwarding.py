"""AV1 forwarding with the Dependency Descriptor: a publication's streams track the newest
template structure, and a real Subscription selects spatial/temporal layers through the SVC
selector (reference and compiled), marks the end of the highest forwarded layer, keeps the
outgoing sequence and the descriptor's frame numbers continuous across simulcast switches,
and refuses packets it cannot place. Packets are written by ``sfu.codecs.av1``'s serializer."""

from __future__ import annotations

from typing import Any

import pytest
from av1_packets import DD_ID, L1T3, L3T3_KEY, PT, SSRC, av1_packet, dd_of, l1t3, l3t3_key
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath.ingest import describe_av1, ingest
from sfu._fastpath.values import AV1, F_KEYFRAME, F_MALFORMED_PAYLOAD, F_STRUCTURE
from sfu.codecs.av1 import (
    DependencyDescriptor,
    DependencyTracker,
    FrameDependencyStructure,
    element_offset,
)
from sfu.core.kernels import REFERENCE, Kernels
from sfu.core.layer_rates import layer_shares
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec, forwardable
from sfu.packet.errors import ParseError
from sfu.packet.extensions import DEPENDENCY_DESCRIPTOR_URI
from sfu.packet.rtp import find_extension

OUT_SSRC = 0x5678
#: The subscriber's id for the descriptor (differs from the publisher's: ids are mapped).
OUT_DD_ID = 5


def av1_publication(kernels: Kernels, rids: tuple[str, ...] = ()) -> Publication:
    codec = NegotiatedCodec(PT, "AV1", 90000, None, None, ())
    pub = Publication(
        "TR_v",
        "PA_a",
        "video",
        "cam",
        "0",
        codec,
        {DD_ID: DEPENDENCY_DESCRIPTOR_URI},
        rids=rids,
        kernels=kernels,
    )
    for layer in range(max(1, len(rids))):
        pub.add_stream(SSRC + layer, layer)
    return pub


def new_subscription(pub: Publication, kernels: Kernels) -> Subscription:
    return Subscription(
        "SU_1",
        pub,
        "PA_b",
        "1",
        out_ssrc=OUT_SSRC,
        payload_type=PT,
        extensions={OUT_DD_ID: DEPENDENCY_DESCRIPTOR_URI},
        initial_seq=1000,
        kernels=kernels,
    )


def run(
    pub: Publication, sub: Subscription, packets: list[bytes], now: float, layer: int = 0
) -> tuple[list[bytes], list[int]]:
    """Ingest ``packets`` of stream ``layer`` as the slow path does: what ``sub`` sent, and
    each packet's record flags."""
    sent: list[bytes] = []
    flags: list[int] = []

    def emit(route: Any, _out: Any, n: int) -> bool:
        sent.append(bytes(route.buf[:n]))
        return True

    stream = pub.layers[layer]
    for i, data in enumerate(packets):
        record = ingest(
            0,
            AV1,
            stream,
            ((sub, None),),
            data,
            now=now + i * 1e-4,
            twcc_id=0,
            level_id=0,
            emit=emit,
            ready=lambda _route: True,
        )
        flags.append(record[1])
        if record[1] & F_STRUCTURE:
            pub.learn_structure(data)
    return sent, flags


def layers_of(
    sent: list[bytes], structure: FrameDependencyStructure = L3T3_KEY
) -> list[tuple[int, int, bool]]:
    """(spatial id, temporal id, marker) of each packet sent, read with the subscriber's id."""
    out = []
    for data in sent:
        dd = dd_of(data, structure, OUT_DD_ID)
        out.append((dd.spatial_id, dd.temporal_id, bool(data[1] & 0x80)))
    return out


def frames_of(sent: list[bytes], structure: FrameDependencyStructure = L3T3_KEY) -> list[int]:
    return [dd_of(p, structure, OUT_DD_ID).frame_number for p in sent]


def seqs_of(sent: list[bytes]) -> list[int]:
    return [int.from_bytes(p[2:4], "big") for p in sent]


def test_av1_is_forwardable_and_scalable(kernels: Kernels) -> None:
    assert forwardable("AV1") and forwardable("av1")
    pub = av1_publication(kernels)
    assert pub.svc and pub.stream_kind == AV1 and pub.num_layers == 1
    tracker = pub.layers[0].dependency
    assert tracker is not None and tracker.ext_id == DD_ID
    simulcast = av1_publication(kernels, ("q", "h"))
    assert not simulcast.svc and simulcast.num_layers == 2


def test_publication_learns_its_layers_from_the_key_frame(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    told: list[list[str]] = []
    pub.on_layers = lambda p: told.append(p.layer_names())
    _, flags = run(pub, sub, l3t3_key(2), 1.0)
    assert flags[0] & F_KEYFRAME and flags[0] & F_STRUCTURE
    assert not any(f & F_STRUCTURE for f in flags[1:])
    assert pub.num_layers == 3 and told == [["S0", "S1", "S2"]]


def test_subscriber_capped_to_base_layer_gets_only_it(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    sub.set_preferences(0, None, False)
    sent, _ = run(pub, sub, l3t3_key(8), 1.0)
    got = layers_of(sent)
    assert {sid for sid, _, _ in got} == {0}
    assert len(got) == 16
    # The base layer frame now ends each picture: its last packet carries the marker.
    assert [m for _, _, m in got] == [False, True] * 8
    assert seqs_of(sent) == list(range(1000, 1016))
    # Frame numbers are the publisher's (no switch of source: no offset); gaps stay.
    assert frames_of(sent) == [n for f in range(8) for n in (500 + 3 * f,) * 2]
    # The key frame's structure reaches the subscriber under its own extension id.
    assert find_extension(sent[0], DD_ID) is None
    assert dd_of(sent[0], L3T3_KEY, OUT_DD_ID).structure == L3T3_KEY
    resent = sub.retransmit([1013, 1014, 1015], 1.1, 0)
    assert resent == sent[13:16]


def test_uncapped_subscriber_gets_every_layer(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    assert sub.selector is not None
    sub.selector.set_target(2, None)
    packets = l3t3_key(4)
    sent, _ = run(pub, sub, packets, 1.0)
    assert len(sent) == len(packets)
    assert [m for _, _, m in layers_of(sent)] == [bool(p[1] & 0x80) for p in packets]
    assert [p[20:] for p in sent] == [p[20:] for p in packets]  # after the element's id


def test_switching_down_and_up_keeps_the_stream_continuous(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(2, None)
    packets = l3t3_key(12, key_every=8)
    sent, _ = run(pub, sub, packets[:24], 1.0)  # pictures 0-3: all three layers
    selector.set_target(0, None)
    more, _ = run(pub, sub, packets[24:48], 2.0)  # pictures 4-7: the base layer only
    sent += more
    assert selector.current.spatial == 0
    selector.set_target(2, None)
    assert selector.keyframe_needed(2.5) == 0
    more, _ = run(pub, sub, packets[48:], 3.0)  # picture 8 is a key picture: up at once
    sent += more
    got = layers_of(sent)
    assert [sid for sid, _, _ in got[24:32]] == [0] * 8
    assert [m for _, _, m in got[24:32]] == [False, True] * 4
    assert {sid for sid, _, _ in got[32:]} == {0, 1, 2}
    assert len(got) == 24 + 8 + 24
    assert seqs_of(sent) == list(range(1000, 1000 + len(sent)))
    assert selector.current.spatial == 2


def test_no_switch_up_without_a_switch_indication(kernels: Kernels) -> None:
    """A delta picture's upper layer frames are not switch points in L3T3_KEY (they depend on
    their own layer's earlier frames): going up waits for the next key picture."""
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(0, None)
    packets = l3t3_key(8, key_every=6)
    run(pub, sub, packets[:12], 1.0)
    selector.set_target(1, None)
    sent, _ = run(pub, sub, packets[12:36], 2.0)  # pictures 2-5: delta pictures
    assert {sid for sid, _, _ in layers_of(sent)} == {0}
    sent, _ = run(pub, sub, packets[36:], 3.0)  # picture 6: a key picture
    assert {sid for sid, _, _ in layers_of(sent)} == {0, 1}
    assert selector.current.spatial == 1


def test_temporal_layers_drop_and_climb_at_switch_indications(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(0, 0)
    packets = l3t3_key(12)
    sent, _ = run(pub, sub, packets[:24], 1.0)  # pictures 0-3
    assert {(sid, tid) for sid, tid, _ in layers_of(sent)} == {(0, 0)}
    assert len(sent) == 2
    selector.set_target(0, 2)
    # Picture 4 (T0) is SWITCH for every temporal target of S0: all of them from there on.
    sent, _ = run(pub, sub, packets[24:48], 2.0)
    assert [tid for _, tid, _ in layers_of(sent)] == [0, 0, 2, 2, 1, 1, 2, 2]
    selector.set_target(0, 1)
    sent, _ = run(pub, sub, packets[48:], 3.0)
    assert [tid for _, tid, _ in layers_of(sent)] == [0, 0, 1, 1]


def test_temporal_climb_waits_for_a_switch_frame(kernels: Kernels) -> None:
    """From T1 to T2 the T2 frame after a T1 frame (DTI DISCARDABLE) is no switch point; the
    T2 frame after a T0 frame (DTI SWITCH) is."""
    pub = av1_publication(kernels, ("f",))
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(0, 1)
    packets = l1t3(12)
    run(pub, sub, packets[:6], 1.0)  # pictures 0-2: T0, T2 (dropped), T1
    selector.set_target(0, 2)
    sent, _ = run(pub, sub, packets[6:], 2.0)  # picture 3 is T2 after T1: not yet
    assert [tid for _, tid, _ in layers_of(sent, L1T3)][:6] == [0, 0, 2, 2, 1, 1]


def test_simulcast_switch_keeps_frame_numbers_continuous(kernels: Kernels) -> None:
    pub = av1_publication(kernels, ("q", "h"))
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(0, None)
    low = l1t3(8, key_every=4, first_frame=100, ssrc=SSRC)
    high = l1t3(8, key_every=4, first_frame=40000, first_seq=7000, size=30, ssrc=SSRC + 1)
    sent: list[bytes] = []
    for p in range(4):  # interleave the two streams picture by picture
        sent += run(pub, sub, low[2 * p : 2 * p + 2], 1.0 + p / 30)[0]
        sent += run(pub, sub, high[2 * p : 2 * p + 2], 1.0 + p / 30, layer=1)[0]
    # A retransmission carries the frame number it was first sent with.
    assert sub.retransmit([1005], 1.5, 0) == [sent[5]]
    selector.set_target(1, None)
    for p in range(4, 8):
        sent += run(pub, sub, low[2 * p : 2 * p + 2], 2.0 + p / 30)[0]
        sent += run(pub, sub, high[2 * p : 2 * p + 2], 2.0 + p / 30, layer=1)[0]
    assert selector.current.spatial == 1
    # Pictures 0-4 of the low stream (4 is a key frame too, before the high one's), then
    # pictures 4-7 of the high stream.
    assert len(sent) == 18
    assert seqs_of(sent) == list(range(1000, 1018))
    assert frames_of(sent, L1T3) == [n for n in range(100, 109) for _ in (0, 1)]
    # The first packet after the switch is the new stream's key frame, with its structure.
    assert dd_of(sent[10], L1T3, OUT_DD_ID).structure == L1T3
    high_payload = b"\x10" + b"\xaa" * 30  # the high stream's bigger payloads
    assert [p.endswith(high_payload) for p in sent] == [False] * 10 + [True] * 8
    # After the switch too; a packet of the stream left behind is no use to the receiver
    # any more (it decodes from the new stream's key frame) and is not resent.
    superseded = sub.retransmit_superseded
    assert sub.retransmit([1009, 1012], 2.3, 0) == [sent[12]]
    assert sub.retransmit_superseded == superseded + 1


def test_packets_that_cannot_be_placed_are_refused(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    assert sub.selector is not None
    sub.selector.set_target(2, None)
    packets = l3t3_key(2)
    # Before the first key frame nothing is known of the templates: refused, not forwarded.
    sent, flags = run(pub, sub, packets[2:6], 1.0)
    assert sent == [] and all(f & F_MALFORMED_PAYLOAD for f in flags)
    bare = bytes([0x80, PT]) + bytes(10) + b"\x10\x00\xaa"  # no descriptor at all
    sent, flags = run(pub, sub, [bare], 1.1)
    assert sent == [] and flags[0] & F_MALFORMED_PAYLOAD
    sent, flags = run(pub, sub, packets, 1.2)
    assert len(sent) == len(packets) and not any(f & F_MALFORMED_PAYLOAD for f in flags)
    unknown = av1_packet(300, 0, DependencyDescriptor(True, True, 40, 9))  # no such template
    sent, flags = run(pub, sub, [unknown], 1.3)
    assert sent == [] and flags[0] & F_MALFORMED_PAYLOAD


def test_describe_reads_layers_and_switch_points() -> None:
    tracker = DependencyTracker(DD_ID)
    packets = l3t3_key(4)
    infos = [describe_av1(tracker, p, 0) for p in packets]
    assert tracker.structure == L3T3_KEY and tracker.structures == 1
    first = infos[0]
    assert first.is_keyframe and first.is_start_of_frame and not first.end_of_frame
    assert first.has_structure and first.frame_number == 500 and first.dd_offset == 18
    assert infos[2].spatial_id == 1 and infos[2].switch_point  # key picture: S1 switches
    assert infos[8].spatial_id == 1 and not infos[8].switch_point  # delta: it does not
    assert infos[6].temporal_id == 2 and infos[6].layer_sync  # T2 after T0: SWITCH
    assert infos[18].temporal_id == 2 and not infos[18].layer_sync  # T2 after T1
    assert infos[12].temporal_id == 1 and infos[12].temporal_switches == 0b010


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 15))
def test_element_offset_agrees_with_find_extension(block: bytes, ext_id: int) -> None:
    """Any bytes: ParseError or an offset whose element is what find_extension returns."""
    header = bytes([0x90, PT]) + bytes(10)
    for profile in (b"\xbe\xde", b"\x10\x00"):
        packet = header + profile + (len(block) // 4).to_bytes(2, "big") + block
        try:
            expected = find_extension(packet, ext_id)
        except ParseError:
            with pytest.raises(ParseError):
                element_offset(packet, ext_id)
            continue
        pos, length = element_offset(packet, ext_id)
        if expected is None:
            assert pos == -1
        else:
            assert packet[pos : pos + length] == expected


@settings(max_examples=30, deadline=None)
@given(
    changes=st.lists(
        st.tuples(
            st.integers(1, 40),
            st.one_of(st.none(), st.integers(0, 2)),
            st.one_of(st.none(), st.integers(0, 2)),
        ),
        max_size=6,
    ),
    key_every=st.integers(2, 12),
)
def test_compiled_subscription_forwards_av1_as_the_reference_does(
    compiled_kernels: Kernels,
    changes: list[tuple[int, int | None, int | None]],
    key_every: int,
) -> None:
    """Random target changes over an AV1 L3T3_KEY stream: both bundles send the same bytes,
    the outgoing sequence has no hole, and nothing above the target goes out after the next
    picture start."""
    packets = l3t3_key(40, key_every=key_every)
    outputs = []
    for kernels in (REFERENCE, compiled_kernels):
        pub = av1_publication(kernels)
        sub = new_subscription(pub, kernels)
        selector = sub.selector
        assert selector is not None
        selector.set_target(2, None)
        chunks: list[tuple[int | None, int | None, list[bytes]]] = []
        start = 0
        target: tuple[int | None, int | None] = (2, None)
        for count, spatial, temporal in [*changes, (len(packets), 2, None)]:
            chunk = packets[start : start + count]
            chunks.append((*target, run(pub, sub, chunk, 1.0 + start / 100)[0]))
            start += len(chunk)
            selector.set_target(spatial, temporal)
            target = (spatial, temporal)
        outputs.append(chunks)
    assert outputs[0] == outputs[1]
    sent = [p for _, _, chunk in outputs[0] for p in chunk]
    assert seqs_of(sent) == list(range(1000, 1000 + len(sent)))
    for spatial, temporal, chunk in outputs[0]:
        if spatial is None:
            assert chunk == []
            continue
        dds = [dd_of(p, L3T3_KEY, OUT_DD_ID) for p in chunk]
        begin = next(
            (i for i, d in enumerate(dds) if d.spatial_id == 0 and d.start_of_frame), len(dds)
        )
        for d in dds[begin:]:
            assert d.spatial_id <= spatial
            assert temporal is None or d.temporal_id <= temporal


def test_a_late_key_frame_repair_does_not_bring_back_an_older_structure() -> None:
    tracker = DependencyTracker(DD_ID)
    old = l1t3(1)[0]
    shifted = FrameDependencyStructure(
        10, L1T3.decode_target_count, L1T3.templates, resolutions=L1T3.resolutions
    )
    new = av1_packet(900, 0, DependencyDescriptor(True, False, 10, 7, shifted))
    describe_av1(tracker, old, 0, 100)
    describe_av1(tracker, new, 0, 200)
    assert tracker.structure == shifted and tracker.structures == 2
    describe_av1(tracker, old, 0, 100)  # its repair, after the newer key frame
    assert tracker.structure == shifted and tracker.structures == 2
    with pytest.raises(ParseError):  # template 0 is outside the shifted structure's ids
        describe_av1(tracker, l1t3(2)[2], 0, 201)


def test_layer_shares_price_av1_spatial_layers_cumulatively(kernels: Kernels) -> None:
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    packets = l3t3_key(16)
    run(pub, sub, packets, 1.0)  # ingest caches them; the stream's tracker learns the structure
    stream = pub.layers[0]
    shares = layer_shares(stream, AV1, 1.0, 3)
    assert len(shares) == 3 and all(len(row) == 3 for row in shares)
    flat = [share for row in shares for share in row]
    assert flat == sorted(flat) and flat[-1] == 1.0
    assert 0 < shares[0][-1] < shares[1][-1] < shares[2][-1]
    assert shares[0][0] < shares[0][1] < shares[0][2]


def test_a_resent_old_switch_point_does_not_move_the_selector(kernels: Kernels) -> None:
    """Chromium pads with RTX resends of packets already received; such a repair of a key
    picture's upper layer frame must not make a subscriber climb in the middle of a delta
    picture (it would then get frames it cannot decode)."""
    pub = av1_publication(kernels)
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(0, None)
    packets = l3t3_key(4)
    run(pub, sub, packets[:12], 1.0)  # pictures 0-1 at the base layer
    selector.set_target(1, None)
    stream = pub.layers[0]
    sent: list[bytes] = []

    def emit(route: Any, _out: Any, n: int) -> bool:
        sent.append(bytes(route.buf[:n]))
        return True

    record = ingest(
        0,
        AV1,
        stream,
        ((sub, None),),
        packets[2],  # the key picture's S1 frame, first packet, again
        now=1.1,
        twcc_id=0,
        level_id=0,
        emit=emit,
        ready=lambda _route: True,
        rtx=True,
    )
    assert record[8] == 0 and sent == []
    assert selector.current.spatial == 0
    more, _ = run(pub, sub, packets[12:], 1.2)
    assert {sid for sid, _, _ in layers_of(more)} == {0}


def test_without_a_negotiated_descriptor_the_stream_is_one_layer(kernels: Kernels) -> None:
    """A publisher that negotiated no Dependency Descriptor (a plain WHIP page): key frames and
    frame starts from the aggregation header (N and Z bits), everything forwarded."""
    codec = NegotiatedCodec(PT, "AV1", 90000, None, None, ())
    pub = Publication("TR_v", "PA_a", "video", "cam", "0", codec, {}, kernels=kernels)
    pub.add_stream(SSRC, 0)
    assert pub.layers[0].dependency is not None and pub.layers[0].dependency.ext_id == 0
    sub = new_subscription(pub, kernels)

    def packet(seq: int, aggregation: int, marker: bool) -> bytes:
        header = bytes([0x80, (0x80 if marker else 0) | PT]) + seq.to_bytes(2, "big")
        return header + bytes(4) + SSRC.to_bytes(4, "big") + bytes([aggregation]) + bytes(20)

    delta = [packet(1, 0x10, True)]  # before any key frame: nothing
    key = [packet(2, 0x18, False), packet(3, 0x90, True)]  # N=1, then a continuation (Z=1)
    sent, flags = run(pub, sub, delta + key + [packet(4, 0x10, True)], 1.0)
    assert seqs_of(sent) == [1000, 1001, 1002]
    assert flags[1] & F_KEYFRAME and not flags[2] & F_KEYFRAME
    assert not any(f & F_MALFORMED_PAYLOAD for f in flags)
