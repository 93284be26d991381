"""SVC layer selection: the selector (reference and compiled, proven equal), and a VP9 SVC
publication forwarded through a real Subscription with packets shaped as Chromium sends
``L3T3_KEY``: what a subscriber capped to a spatial layer gets, marker bits, sequence
continuity, switching both ways, and the layer rates the allocator reads."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selector_differential import call, construct, state
from svc_packets import PT, SSRC, l3t3_key, vp8_l1t3, vp9_packet

from sfu._fastpath.ingest import describe, ingest
from sfu._fastpath.values import VP8, VP9, Decision, LayerPair
from sfu.codecs.vp8 import parse_vp8
from sfu.codecs.vp9 import parse_vp9
from sfu.core import svc as svc_py
from sfu.core.kernels import REFERENCE, Kernels
from sfu.core.layer_rates import layer_shares
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.core.vp9_munger import Vp9Pictures
from sfu.negotiation import NegotiatedCodec
from sfu.packet.rtp import payload_offset

OUT_SSRC = 0x5678


@pytest.fixture(scope="module")
def impl(each_kernels: Kernels) -> Kernels:
    """Each bundle in turn: the reference selector, then the compiled one."""
    return each_kernels


# -- differential ------------------------------------------------------------------------------


temporal_arg = st.one_of(st.none(), st.integers(-2, 4), st.sampled_from([1 << 16, 1 << 40]))
step = st.floats(0, 0.4, allow_nan=False)
control = st.one_of(
    st.tuples(
        st.just("set_target"),
        st.tuples(st.one_of(st.none(), st.integers(-1, 9)), temporal_arg),
        st.just({}),
        step,
    ),
    st.tuples(
        st.just("set_preferences"),
        st.tuples(st.one_of(st.none(), st.integers(-1, 10)), temporal_arg, st.booleans()),
        st.just({}),
        step,
    ),
    st.tuples(
        st.just("set_available"),
        st.tuples(st.frozensets(st.integers(0, 3))),
        st.just({}),
        step,
    ),
    st.tuples(st.just("keyframe_needed"), st.just(()), st.just({}), step),
    st.tuples(st.just("marks"), st.tuples(st.integers(-1, 3), st.booleans()), st.just({}), step),
)
# Layer frames of an L3T3-like stream: spatial 0-2, temporal 0-2, keyframes now and then.
packet = st.tuples(
    st.just("decide"),
    st.tuples(
        st.integers(-1, 3),
        st.one_of(st.none(), st.integers(0, 2)),
        st.booleans(),
        st.booleans(),
    ),
    st.fixed_dictionaries({"layer_sync": st.booleans(), "switch_point": st.booleans()}),
    step,
)


@settings(max_examples=300, deadline=None)
@given(
    num=st.integers(0, 9),
    ops=st.lists(st.one_of(control, packet, packet, packet), max_size=100),
)
def test_compiled_matches_reference(
    compiled_kernels: Kernels,
    num: int,
    ops: list[tuple[str, tuple[Any, ...], dict[str, Any], float]],
) -> None:
    ref = construct(svc_py.SvcSelector, num, 0.5)
    got = construct(compiled_kernels.SvcSelector, num, 0.5)
    if ref[0] == "raise":
        assert got == ref
        return
    py, c = ref[1], got[1]
    now = 10.0
    for name, args, kwargs, dt in ops:
        now += dt
        full = (*args, now) if name in ("decide", "keyframe_needed") else args
        expected = call(py, name, full, kwargs)
        assert call(c, name, full, kwargs) == expected, (name, full, kwargs)
        assert state(c) == state(py), (name, full, kwargs)


# -- the selector's rules (both implementations) ----------------------------------------------


def test_starts_at_keyframe_and_climbs_within_a_keyframe_picture(impl: Kernels) -> None:
    sel = impl.SvcSelector(3)
    sel.set_target(2, None)
    assert sel.keyframe_needed(0.0) == 0  # the one stream
    assert sel.decide(0, 0, False, True, 0.1, switch_point=False) is Decision.DROP
    assert sel.decide(0, 0, True, True, 0.2, switch_point=True) is Decision.FORWARD_SWITCH
    assert sel.current == LayerPair(0, None)
    assert not sel.marks(0, True)  # the climb goes on in this keyframe picture
    # The keyframe picture's upper layers are intra-layer (P=0): the climb happens at once.
    assert sel.decide(1, 0, False, True, 0.2, switch_point=True) is Decision.FORWARD
    assert not sel.marks(0, True)
    assert sel.decide(2, 0, False, True, 0.2, switch_point=True) is Decision.FORWARD
    assert sel.current == LayerPair(2, None) and sel.marks(2, True)
    assert sel.keyframe_needed(1.0) is None
    assert (sel.switches, sel.last_switch_at) == (3, 0.2)


def test_switch_down_at_picture_start_and_up_only_at_switch_point(impl: Kernels) -> None:
    sel = impl.SvcSelector(3)
    sel.set_target(2, None)
    sel.decide(0, 0, True, True, 0.0, switch_point=True)
    sel.decide(1, 0, False, True, 0.0, switch_point=True)
    sel.decide(2, 0, False, True, 0.0, switch_point=True)
    sel.set_target(0, None)
    assert sel.decide(2, 0, False, False, 0.1) is Decision.FORWARD  # mid-picture: unchanged
    assert sel.keyframe_needed(0.1) is None  # going down needs no keyframe
    assert sel.decide(0, 1, False, True, 0.2) is Decision.FORWARD  # new picture: down to 0
    assert sel.current.spatial == 0
    assert sel.decide(1, 1, False, True, 0.2) is Decision.DROP
    assert sel.decide(2, 1, False, True, 0.2) is Decision.DROP
    sel.set_target(1, None)
    # A predicted upper layer frame (P=1) is no switch point: a keyframe is asked for.
    assert sel.decide(0, 0, False, True, 0.3) is Decision.FORWARD
    assert sel.decide(1, 0, False, True, 0.3, switch_point=False) is Decision.DROP
    assert sel.keyframe_needed(0.3) == 0
    assert sel.decide(0, 0, True, True, 0.4, switch_point=True) is Decision.FORWARD
    assert sel.decide(1, 0, False, True, 0.4, switch_point=True) is Decision.FORWARD
    assert sel.decide(2, 0, False, True, 0.4, switch_point=True) is Decision.DROP  # above target
    assert sel.current.spatial == 1


def test_temporal_layers_move_at_picture_starts(impl: Kernels) -> None:
    sel = impl.SvcSelector(3)
    sel.set_target(1, 0)
    sel.decide(0, 0, True, True, 0.0, switch_point=True)
    sel.decide(1, 0, False, True, 0.0, switch_point=True)
    assert sel.decide(0, 2, False, True, 0.1) is Decision.DROP
    assert sel.decide(1, 2, False, True, 0.1) is Decision.DROP
    sel.set_target(1, 2)
    assert sel.decide(0, 2, False, True, 0.2, layer_sync=False) is Decision.DROP
    assert sel.decide(0, 1, False, True, 0.3, layer_sync=True) is Decision.FORWARD
    assert sel.decide(1, 1, False, True, 0.3) is Decision.FORWARD
    assert sel.current == LayerPair(1, 1)
    assert sel.decide(0, 2, False, True, 0.4, layer_sync=True) is Decision.FORWARD
    assert sel.current == LayerPair(1, 2)


def test_pause_stops_at_once_and_resume_needs_a_keyframe(impl: Kernels) -> None:
    sel = impl.SvcSelector(3)
    sel.decide(0, 0, True, True, 0.0, switch_point=True)
    sel.set_preferences(None, None, True)
    assert sel.current == LayerPair(None, None)
    assert sel.decide(0, 0, False, True, 0.1) is Decision.DROP
    assert sel.keyframe_needed(0.1) is None
    sel.set_preferences(None, None, False)
    assert sel.decide(0, 0, False, True, 0.2) is Decision.DROP
    assert sel.decide(0, 0, True, True, 0.3, switch_point=True) is Decision.FORWARD_SWITCH


# -- a VP9 L3T3_KEY stream through a Subscription ----------------------------------------------


def svc_publication(kernels: Kernels) -> Publication:
    codec = NegotiatedCodec(PT, "VP9", 90000, None, None, ())
    pub = Publication("TR_v", "PA_a", "video", "cam", "0", codec, {}, kernels=kernels)
    pub.add_stream(SSRC, 0)
    return pub


def run(pub: Publication, sub: Subscription, packets: list[bytes], now: float) -> list[bytes]:
    """Ingest ``packets`` as the slow path does; what ``sub`` sent."""
    sent: list[bytes] = []

    def emit(route: Any, _out: Any, n: int) -> bool:
        sent.append(bytes(route.buf[:n]))
        return True

    stream = pub.layers[0]
    for i, data in enumerate(packets):
        ingest(
            0,
            VP9,
            stream,
            ((sub, None),),
            data,
            now=now + i * 1e-4,
            twcc_id=0,
            level_id=0,
            emit=emit,
            ready=lambda _route: True,
        )
    return sent


def layers_of(sent: list[bytes]) -> list[tuple[int, int, bool]]:
    """(sid, tid, marker) of each packet sent."""
    out = []
    for data in sent:
        d = parse_vp9(data, payload_offset(data))
        out.append((d.spatial_id or 0, d.temporal_id or 0, bool(data[1] & 0x80)))
    return out


def seqs_of(sent: list[bytes]) -> list[int]:
    return [int.from_bytes(p[2:4], "big") for p in sent]


def new_subscription(pub: Publication, kernels: Kernels) -> Subscription:
    return Subscription(
        "SU_1",
        pub,
        "PA_b",
        "1",
        out_ssrc=OUT_SSRC,
        payload_type=PT,
        extensions={},
        initial_seq=1000,
        kernels=kernels,
    )


def test_publication_learns_its_layers_from_the_keyframe(kernels: Kernels) -> None:
    pub = svc_publication(kernels)
    assert pub.svc and pub.num_layers == 1 and pub.describe()["layers"] == []
    pub.learn_structure(l3t3_key(1)[0])
    assert pub.num_layers == 3 and pub.svc_spatial == 3
    assert pub.describe()["layers"] == ["S0", "S1", "S2"]
    assert pub.stream_for(2) is pub.layers[0]
    pub.learn_structure(b"\x80" + bytes(11))  # not parseable: nothing changes
    assert pub.num_layers == 3
    told: list[list[str]] = []
    pub.on_layers = lambda p: told.append(p.layer_names())
    pub.learn_structure(l3t3_key(1)[0])  # the same count: nobody is told
    two = bytearray(l3t3_key(1)[0])
    desc = parse_vp9(two, payload_offset(two))
    assert desc.scalability_structure is not None
    ss_at = payload_offset(two) + desc.size - 1 - 4 * 3  # the SS header octet (Y=1, G=0)
    two[ss_at] = (1 << 5) | (two[ss_at] & 0x1F)  # N_S = 1: two spatial layers
    pub.learn_structure(bytes(two[: ss_at + 1 + 8]) + bytes([0xAA]))
    assert told == [["S0", "S1"]] and pub.num_layers == 2


def test_subscriber_capped_to_base_layer_gets_only_it(kernels: Kernels) -> None:
    pub = svc_publication(kernels)
    sub = new_subscription(pub, kernels)
    assert sub.svc and sub.selector is not None
    sub.set_preferences(0, None, False)
    sent = run(pub, sub, l3t3_key(8), 1.0)
    got = layers_of(sent)
    assert {sid for sid, _, _ in got} == {0}
    assert len(got) == 16  # two packets of every picture's base layer
    # The last packet of each picture now ends the base layer frame: marked.
    assert [m for _, _, m in got] == [False, True] * 8
    assert seqs_of(sent) == list(range(1000, 1016))  # dropped layers leave no hole
    # A retransmission is rebuilt as first sent: with the marker the publisher's lacked.
    resent = sub.retransmit([1013, 1014, 1015], 1.1, 0)
    assert resent == sent[13:16]


def test_uncapped_subscriber_gets_every_layer_unchanged(kernels: Kernels) -> None:
    pub = svc_publication(kernels)
    sub = new_subscription(pub, kernels)
    assert sub.selector is not None
    sub.selector.set_target(2, None)
    packets = l3t3_key(4)
    sent = run(pub, sub, packets, 1.0)
    assert len(sent) == len(packets)
    assert [p[12:] for p in sent] == [p[12:] for p in packets]  # descriptor and payload
    assert [m for _, _, m in layers_of(sent)] == [bool(p[1] & 0x80) for p in packets]


def test_switching_down_and_up_keeps_the_stream_continuous(kernels: Kernels) -> None:
    pub = svc_publication(kernels)
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(2, None)
    packets = l3t3_key(12, key_every=8)
    sent = run(pub, sub, packets[:24], 1.0)  # pictures 0-3: all three layers
    selector.set_target(0, None)
    sent += run(pub, sub, packets[24:48], 2.0)  # pictures 4-7: the base layer only
    assert selector.current.spatial == 0
    selector.set_target(2, None)
    assert selector.keyframe_needed(2.5) == 0
    sent += run(pub, sub, packets[48:], 3.0)  # picture 8 is a keyframe: back up at once
    got = layers_of(sent)
    assert [sid for sid, _, _ in got[24:32]] == [0] * 8
    assert {sid for sid, _, _ in got[32:]} == {0, 1, 2}
    assert len(got) == 24 + 8 + 24
    assert seqs_of(sent) == list(range(1000, 1000 + len(sent)))
    assert selector.current.spatial == 2


def test_temporal_target_drops_upper_temporal_layers(kernels: Kernels) -> None:
    pub = svc_publication(kernels)
    sub = new_subscription(pub, kernels)
    assert sub.selector is not None
    sub.selector.set_target(1, 0)
    got = layers_of(run(pub, sub, l3t3_key(8), 1.0))
    assert {(sid, tid) for sid, tid, _ in got} == {(0, 0), (1, 0)}
    assert len(got) == 2 * 2 * 2  # pictures 0 and 4, two layers of two packets


def test_layer_shares_price_spatial_layers_cumulatively(kernels: Kernels) -> None:
    pub = svc_publication(kernels)
    stream = pub.layers[0]
    for i, data in enumerate(l3t3_key(16)):
        stream.cache.put(data, stream.unwrapper.unwrap(int.from_bytes(data[2:4], "big")), i)
    shares = layer_shares(stream, VP9, 1.0, 3)
    assert len(shares) == 3 and all(len(row) == 3 for row in shares)
    flat = [share for row in shares for share in row]
    assert flat == sorted(flat) and flat[-1] == 1.0
    assert 0 < shares[0][-1] < shares[1][-1] < shares[2][-1]
    assert shares[0][0] < shares[0][1] < shares[0][2]


def test_describe_reads_vp9_layer_fields() -> None:
    data = l3t3_key(2)[8]  # picture 1, spatial layer 1, first packet
    info = describe(VP9, data, payload_offset(data))
    assert (info.spatial_id, info.temporal_id, info.is_start_of_frame) == (1, 2, True)
    assert not info.switch_point and not info.end_of_frame and info.layer_sync


# -- VP8 temporal layers (L1T3) through a Subscription ------------------------------------------


def test_vp8_temporal_rung_filters_tids_with_continuous_picture_ids(kernels: Kernels) -> None:
    """The allocator's temporal rung (what ``Peer.allocate`` hands the selector) reaches a VP8
    L1T3 stream: only TID 0 frames go out, picture ids and sequence numbers without gaps."""
    codec = NegotiatedCodec(96, "VP8", 90000, None, None, ())
    pub = Publication("TR_8", "PA_a", "video", "cam", "0", codec, {}, kernels=kernels)
    stream = pub.add_stream(SSRC, 0)
    sub = Subscription(
        "SU_8",
        pub,
        "PA_b",
        "0",
        out_ssrc=OUT_SSRC,
        payload_type=96,
        extensions={},
        initial_seq=2000,
        kernels=kernels,
    )
    assert not sub.svc and sub.selector is not None
    sub.selector.set_target(0, 0)
    sent: list[bytes] = []

    def emit(route: Any, _out: Any, n: int) -> bool:
        sent.append(bytes(route.buf[:n]))
        return True

    for i, data in enumerate(vp8_l1t3(16)):
        ingest(
            0,
            VP8,
            stream,
            ((sub, None),),
            data,
            now=1.0 + i / 20,
            twcc_id=0,
            level_id=0,
            emit=emit,
            ready=lambda _route: True,
        )
    descs = [parse_vp8(p, payload_offset(p)) for p in sent]
    assert [d.temporal_id for d in descs] == [0] * 4
    assert [d.picture_id for d in descs] == [descs[0].picture_id + i for i in range(4)]
    assert [d.tl0picidx for d in descs] == [0, 1, 2, 3]
    assert seqs_of(sent) == [2000, 2001, 2002, 2003]
    assert sub.selector.current == LayerPair(0, 0)


def test_svc_layer_costs_are_cumulative_shares_of_the_stream(kernels: Kernels) -> None:
    """What the allocator and the budget read of an SVC publication: one rate per spatial
    layer (cumulative), each below the whole stream's, the top one equal to it."""
    pub = svc_publication(kernels)
    stream = pub.layers[0]
    packets = l3t3_key(16)
    pub.learn_structure(packets[0])
    for i, data in enumerate(packets):
        now = 1.0 + i * 0.01
        stream.cache.put(data, stream.unwrapper.unwrap(int.from_bytes(data[2:4], "big")), now)
        stream.meter.add(len(data), now)
        stream.last_packet_at = now
    now = 2.0
    whole = float(stream.meter.bps(now))
    rates = pub.rates.measure(pub, now)
    assert sorted(rates) == [0, 1, 2]
    assert pub.active_layers(now) == frozenset({0, 1, 2})
    costs = [pub.layer_bps(s, now) for s in range(3)]
    assert 0 < costs[0] < costs[1] < costs[2] == pytest.approx(whole)
    assert [r[-1] for _, r in sorted(rates.items())] == costs


@settings(max_examples=60, deadline=None)
@given(
    changes=st.lists(
        st.tuples(
            st.integers(1, 60),  # packets until the change
            st.one_of(st.none(), st.integers(0, 2)),  # spatial target (None: pause)
            st.one_of(st.none(), st.integers(0, 2)),  # temporal target
        ),
        max_size=6,
    ),
    key_every=st.integers(2, 12),
)
def test_compiled_subscription_forwards_svc_as_the_reference_does(
    compiled_kernels: Kernels,
    changes: list[tuple[int, int | None, int | None]],
    key_every: int,
) -> None:
    """Random target changes over an L3T3_KEY stream: both bundles send the same bytes, the
    outgoing sequence has no hole, and no layer above the current target goes out after the
    next picture start."""
    packets = l3t3_key(40, key_every=key_every)
    outputs = []
    for kernels in (REFERENCE, compiled_kernels):
        pub = svc_publication(kernels)
        pub.learn_structure(packets[0])
        sub = new_subscription(pub, kernels)
        selector = sub.selector
        assert selector is not None
        selector.set_target(2, None)
        chunks: list[tuple[int | None, int | None, list[bytes]]] = []
        start = 0
        target: tuple[int | None, int | None] = (2, None)
        for count, spatial, temporal in [*changes, (len(packets), 2, None)]:
            chunk = packets[start : start + count]
            chunks.append((*target, run(pub, sub, chunk, 1.0 + start / 100)))
            start += len(chunk)
            selector.set_target(spatial, temporal)
            target = (spatial, temporal)
        outputs.append(chunks)
    assert outputs[0] == outputs[1]
    sent = [p for _, _, chunk in outputs[0] for p in chunk]
    seqs = seqs_of(sent)
    assert seqs == list(range(1000, 1000 + len(seqs)))
    for spatial, temporal, chunk in outputs[0]:
        if spatial is None:
            assert chunk == []  # paused at once
            continue
        layers = layers_of(chunk)
        starts = [parse_vp9(p, payload_offset(p)).is_start_of_frame for p in chunk]
        # From the first picture start on, nothing above the target goes out.
        begin = next(
            (i for i, (sid, _, _) in enumerate(layers) if sid == 0 and starts[i]), len(layers)
        )
        for sid, tid, _ in layers[begin:]:
            assert sid <= spatial
            assert temporal is None or tid <= temporal


def test_resumed_stream_continues_picture_ids_and_tl0picidx(kernels: Kernels) -> None:
    """Pictures the subscriber never got (paused) leave no jump in its picture ids or
    TL0PICIDX: the keyframe it resumes on continues from the last ones sent, and a
    retransmission carries the values the packet was first sent with."""
    pub = svc_publication(kernels)
    sub = new_subscription(pub, kernels)
    selector = sub.selector
    assert selector is not None
    selector.set_target(2, None)
    packets = l3t3_key(16, key_every=8)
    sent = run(pub, sub, packets[:24], 1.0)  # pictures 0-3
    selector.set_preferences(None, None, True)
    assert run(pub, sub, packets[24:48], 2.0) == []  # pictures 4-7: paused
    selector.set_preferences(None, None, False)
    resumed = run(pub, sub, packets[48:], 3.0)  # picture 8 is a keyframe
    assert len(resumed) == 48
    descs = [parse_vp9(p, payload_offset(p)) for p in sent + resumed]
    pictures = [d.picture_id for d in descs[::6]]  # one per picture (6 packets each)
    assert pictures == list(range(12))
    assert [d.tl0picidx for d in descs[::6]] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    again = sub.retransmit([seqs_of(resumed)[0]], 3.5, 0)
    assert len(again) == 1
    assert parse_vp9(again[0], payload_offset(again[0])).picture_id == 4


def test_vp9_pictures_wrap_in_the_field_width() -> None:
    pics = Vp9Pictures()
    assert pics.translate(120, 7, wide=False) == (120, 7)
    assert pics.translate(127, 7, wide=False) == (127, 7)
    assert pics.translate(0, 8, wide=False) == (0, 8)  # the 7-bit field wrapped
    pics.switch_source()
    assert pics.translate(3000, 200, wide=False) == (1, 9)
    assert pics.translate(3001, 200, wide=False) == (2, 9)
    assert pics.rewrites
    pics.switch_source()
    assert pics.translate(7, 5) == (3, 10)  # 15-bit now: last sent (2) + 1


def test_vp9_simulcast_switch_continues_picture_ids(kernels: Kernels) -> None:
    """A switch between VP9 simulcast streams (two encoders, unrelated counters) continues
    the subscriber's picture id and TL0PICIDX from the last ones sent."""
    codec = NegotiatedCodec(PT, "VP9", 90000, None, None, ())
    pub = Publication(
        "TR_v", "PA_a", "video", "cam", "0", codec, {}, rids=("q", "f"), kernels=kernels
    )
    low, high = pub.add_stream(SSRC, 0), pub.add_stream(SSRC + 1, 1)
    sub = new_subscription(pub, kernels)
    assert sub.selector is not None and not sub.svc
    sent: list[bytes] = []

    def emit(route: Any, _out: Any, n: int) -> bool:
        sent.append(bytes(route.buf[:n]))
        return True

    def picture(stream: Any, seq: int, pid: int, tl0: int, key: bool, now: float) -> None:
        data = vp9_packet(seq, pid * 3000, pid, 0, 0, key=key, marker=True, tl0=tl0)
        data = data[:8] + stream.ssrc.to_bytes(4, "big") + data[12:]
        ingest(
            0,
            VP9,
            stream,
            ((sub, None),),
            data,
            now=now,
            twcc_id=0,
            level_id=0,
            emit=emit,
            ready=lambda _route: True,
        )

    sub.selector.set_available(frozenset({0, 1}))
    sub.selector.set_target(0, None)
    for i in range(3):  # the low stream: pictures 100-102
        picture(low, 10 + i, 100 + i, 50 + i, i == 0, 1.0 + i / 30)
        picture(high, 500 + i, 9000 + i, 7 + i, i == 0, 1.0 + i / 30)
    sub.selector.set_target(1, None)
    for i in range(3):  # a keyframe on the high stream: the switch
        picture(low, 13 + i, 103 + i, 53 + i, False, 2.0 + i / 30)
        picture(high, 503 + i, 9003 + i, 10 + i, i == 0, 2.0 + i / 30)
    descs = [parse_vp9(p, payload_offset(p)) for p in sent]
    # 100-103 from the low stream (103 arrived before the high stream's keyframe), then the
    # high stream's 9003-9005 (TL0PICIDX 10-12) as 104-106.
    assert [d.picture_id for d in descs] == list(range(100, 107))
    assert [d.tl0picidx for d in descs] == list(range(50, 57))
    assert [int.from_bytes(p[8:12], "big") for p in sent] == [OUT_SSRC] * 7
    assert seqs_of(sent) == list(range(1000, 1007))
