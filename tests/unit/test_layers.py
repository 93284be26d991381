"""Simulcast layer selection: targets move freely, the current layer switches only at keyframes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath.values import Decision, LayerPair
from sfu.core.layers import SimulcastSelector

DROP, FORWARD, SWITCH = Decision.DROP, Decision.FORWARD, Decision.FORWARD_SWITCH


def pkt(
    sel: SimulcastSelector,
    spatial: int,
    temporal: int | None = 0,
    *,
    kf: bool = False,
    start: bool = True,
    now: float = 0.0,
    sync: bool = True,
) -> Decision:
    return sel.decide(spatial, temporal, kf, start, now, layer_sync=sync)


def started(num_spatial: int = 3, spatial: int = 0) -> SimulcastSelector:
    """A selector already forwarding ``spatial`` (all temporal layers)."""
    sel = SimulcastSelector(num_spatial)
    sel.set_target(spatial, None)
    assert pkt(sel, spatial, kf=True) is SWITCH
    assert sel.current == LayerPair(spatial, None)
    return sel


def test_nothing_is_forwarded_before_the_first_keyframe() -> None:
    sel = SimulcastSelector(3)
    assert sel.current == LayerPair(None, None)
    assert sel.target == LayerPair(0, None)
    assert pkt(sel, 0) is DROP
    assert sel.keyframe_needed(0.0) == 0
    assert pkt(sel, 0, kf=True, start=False) is DROP  # a keyframe is entered at its start only
    assert pkt(sel, 0, kf=True) is SWITCH
    assert pkt(sel, 0, kf=True, start=False) is FORWARD
    assert pkt(sel, 0) is FORWARD
    assert pkt(sel, 1, kf=True) is DROP  # above the target
    assert sel.switches == 1
    assert sel.keyframe_needed(10.0) is None


def test_switch_up_waits_for_a_keyframe_of_the_target_and_requests_one() -> None:
    sel = started()
    sel.set_target(2, None)
    assert sel.switch_pending is True
    assert sel.current.spatial == 0
    # Until the keyframe, the current layer keeps flowing and the target's deltas are dropped.
    assert pkt(sel, 0, now=0.01) is FORWARD
    assert pkt(sel, 2, now=0.01) is DROP
    assert sel.keyframe_needed(0.0) == 2
    assert sel.keyframe_needed(0.2) is None  # rate-limited
    assert sel.keyframe_needed(0.49) is None
    assert sel.keyframe_needed(0.5) == 2
    assert sel.keyframe_requests == 2
    assert pkt(sel, 2, kf=True, now=0.6) is SWITCH
    assert sel.last_switch_at == 0.6
    assert pkt(sel, 0, now=0.6) is DROP
    assert pkt(sel, 0, kf=True, now=0.6) is DROP
    assert pkt(sel, 2, now=0.61) is FORWARD
    assert [sel.switch_pending] == [False]
    assert sel.keyframe_needed(5.0) is None
    assert sel.switches == 2


def test_a_new_target_layer_gets_its_keyframe_request_at_once() -> None:
    """The interval is per layer: each simulcast layer is its own stream, so a request for
    the low layer right after one for the middle layer is no repeat (at a 400 kbit/s cap the
    low layer's request waited out the middle one's while the middle layer overran the cap)."""
    sel = started(spatial=2)
    sel.set_target(1, None)
    assert sel.keyframe_needed(0.0) == 1
    sel.set_target(0, None)
    assert sel.keyframe_needed(0.1) == 0
    assert sel.keyframe_needed(0.3) is None  # the same layer again: rate-limited
    sel.set_target(1, None)  # back: the middle layer's own interval still runs
    assert sel.keyframe_needed(0.35) is None
    assert sel.keyframe_needed(0.5) == 1
    assert sel.keyframe_requests == 3


def test_keyframe_request_interval_is_configurable() -> None:
    sel = SimulcastSelector(2, keyframe_request_interval=2.0)
    assert sel.keyframe_needed(1.0) == 0
    assert sel.keyframe_needed(2.9) is None
    assert sel.keyframe_needed(3.0) == 0


def test_switch_up_may_stop_at_an_intermediate_layer_whose_keyframe_comes_first() -> None:
    sel = started()
    sel.set_target(2, None)
    assert pkt(sel, 1, kf=True) is SWITCH
    assert sel.current.spatial == 1
    assert sel.switch_pending
    assert sel.keyframe_needed(0.0) == 2
    assert pkt(sel, 0, kf=True) is DROP  # never back down while going up
    assert pkt(sel, 2, kf=True) is SWITCH
    assert sel.current.spatial == 2


def test_switch_down_at_a_keyframe_of_any_lower_layer_down_to_the_target() -> None:
    sel = started(spatial=2)
    sel.set_target(0, None)
    assert pkt(sel, 2) is FORWARD
    assert pkt(sel, 0) is DROP  # a delta frame of the lower layer cannot start it
    assert sel.keyframe_needed(0.0) == 0
    assert pkt(sel, 1, kf=True) is SWITCH
    assert pkt(sel, 2, kf=True) is DROP
    assert pkt(sel, 0, kf=True) is SWITCH
    assert sel.current.spatial == 0
    assert sel.switches == 3


def test_forward_switch_once_per_switch_for_a_multi_packet_keyframe() -> None:
    sel = started()
    sel.set_target(1, None)
    decisions = [pkt(sel, 1, kf=True, start=(i == 0)) for i in range(5)]
    assert decisions == [SWITCH] + [FORWARD] * 4
    # Another keyframe on the same layer is a plain forward, not a new switch.
    assert pkt(sel, 1, kf=True) is FORWARD
    assert sel.switches == 2


def test_never_forwards_two_spatial_layers_at_once() -> None:
    sel = started()
    sel.set_target(2, None)
    forwarded: set[int] = set()
    for spatial in (0, 1, 2, 0, 1, 2):
        if pkt(sel, spatial) is not DROP:
            forwarded.add(spatial)
    assert forwarded == {0}


def test_pause_drops_everything_and_resume_needs_a_keyframe() -> None:
    sel = started()
    sel.set_target(None, None)
    assert sel.current == LayerPair(None, None)
    assert sel.target == LayerPair(None, None)
    for spatial in range(3):
        assert pkt(sel, spatial, kf=True) is DROP
    assert sel.keyframe_needed(0.0) is None
    sel.set_target(1, 0)
    assert pkt(sel, 1) is DROP
    assert sel.keyframe_needed(1.0) == 1
    assert pkt(sel, 1, kf=True) is SWITCH


def test_subscriber_pause_overrides_the_allocator() -> None:
    sel = started()
    sel.set_preferences(paused=True)
    assert pkt(sel, 0, kf=True) is DROP
    sel.set_target(2, None)
    assert sel.target == LayerPair(None, None)
    assert pkt(sel, 2, kf=True) is DROP
    sel.set_preferences(paused=False)
    assert sel.target.spatial == 2
    assert pkt(sel, 2, kf=True) is SWITCH


def test_preferences_cap_the_target() -> None:
    sel = started()
    sel.set_preferences(max_spatial=1, max_temporal=0)
    sel.set_target(2, 2)
    assert sel.requested == LayerPair(2, 2)
    assert sel.target == LayerPair(1, 0)
    assert pkt(sel, 2, kf=True) is DROP
    assert sel.keyframe_needed(0.0) == 1
    assert pkt(sel, 1, kf=True) is SWITCH
    assert pkt(sel, 1, 1) is DROP
    assert pkt(sel, 1, 0) is FORWARD
    sel.set_preferences()  # caps lifted
    assert sel.target == LayerPair(2, 2)
    sel.set_preferences(max_spatial=9)  # a cap above the top layer is the top layer
    assert sel.target.spatial == 2


def test_a_stopped_layer_falls_back_downwards() -> None:
    sel = started(spatial=2)
    sel.set_available({0, 1})
    assert sel.target.spatial == 1
    assert sel.available == frozenset({0, 1})
    assert pkt(sel, 2) is FORWARD  # whatever still arrives of it keeps flowing until the switch
    assert sel.keyframe_needed(0.0) == 1
    assert pkt(sel, 1, kf=True) is SWITCH
    sel.set_available({0})
    assert sel.target.spatial == 0
    sel.set_available({0, 1, 2})
    assert sel.target.spatial == 2
    # Nothing at or below the target: nothing to forward.
    sel.set_target(0, None)
    sel.set_available({1, 2})
    assert sel.target == LayerPair(None, None)
    assert sel.current == LayerPair(None, None)
    assert pkt(sel, 1, kf=True) is DROP
    sel.set_available(set())
    assert sel.target == LayerPair(None, None)


def test_temporal_filtering_and_switching_at_frame_starts() -> None:
    sel = SimulcastSelector(1)
    sel.set_target(0, 1)
    assert pkt(sel, 0, 0, kf=True) is SWITCH
    assert sel.current == LayerPair(0, 1)
    assert pkt(sel, 0, 1) is FORWARD
    assert pkt(sel, 0, 2) is DROP
    assert pkt(sel, 0, None) is FORWARD  # no temporal id: nothing to filter on
    # Going down mid-frame finishes the frame in flight, then drops the layer.
    assert pkt(sel, 0, 1) is FORWARD
    sel.set_target(0, 0)
    assert pkt(sel, 0, 1, start=False) is FORWARD
    assert pkt(sel, 0, 1) is DROP
    assert sel.current.temporal == 0
    # Going up waits for a frame start with layer sync.
    sel.set_target(0, 2)
    assert pkt(sel, 0, 2, start=False) is DROP
    assert pkt(sel, 0, 2, sync=False) is DROP
    assert pkt(sel, 0, 1, sync=True) is FORWARD
    assert sel.current.temporal == 1
    assert pkt(sel, 0, 2, sync=False) is DROP
    assert pkt(sel, 0, 2, sync=True) is FORWARD
    assert sel.current.temporal == 2
    assert sel.temporal_switches == 3


def test_a_keyframe_lifts_the_temporal_limit_to_the_target() -> None:
    sel = SimulcastSelector(1)
    sel.set_target(0, 0)
    assert pkt(sel, 0, 0, kf=True) is SWITCH
    sel.set_target(0, None)
    assert pkt(sel, 0, 0, kf=True) is FORWARD
    assert sel.current == LayerPair(0, None)
    assert pkt(sel, 0, 2) is FORWARD


def test_a_keyframe_above_the_temporal_target_does_not_start_a_layer() -> None:
    sel = SimulcastSelector(2)
    sel.set_target(0, 0)
    assert pkt(sel, 0, 1, kf=True) is DROP
    assert sel.current == LayerPair(None, None)
    assert pkt(sel, 0, 0, kf=True) is SWITCH


def test_out_of_range_packets_are_dropped_and_bad_settings_rejected() -> None:
    sel = SimulcastSelector(2)
    assert pkt(sel, -1, kf=True) is DROP
    assert pkt(sel, 5, kf=True) is DROP
    with pytest.raises(ValueError):
        sel.set_target(2, None)
    with pytest.raises(ValueError):
        sel.set_target(0, -1)
    with pytest.raises(ValueError):
        sel.set_available({0, 2})
    with pytest.raises(ValueError):
        sel.set_preferences(max_spatial=-1)
    with pytest.raises(ValueError):
        sel.set_preferences(max_temporal=-1)
    with pytest.raises(ValueError):
        SimulcastSelector(0)
    with pytest.raises(ValueError):
        SimulcastSelector(2, keyframe_request_interval=-1)
    assert SimulcastSelector(3).num_spatial == 3


_layer = st.integers(0, 2)
_rarely = st.sampled_from([False] * 9 + [True])
_rarely_none = st.sampled_from([0, 1, 2] * 3 + [None])
_all = frozenset({0, 1, 2})
_available = st.sampled_from([_all, _all, _all, _all, {0, 1}, {0}, {1, 2}, {0, 2}, set()])
_packet = st.tuples(
    st.just("pkt"),
    _layer,
    st.one_of(_layer, st.just(0), st.none()),
    st.booleans(),  # keyframe
    st.sampled_from([True, True, False]),  # start of frame
    st.booleans(),  # layer sync
)
_setting = st.one_of(
    st.tuples(st.just("target"), _rarely_none, st.none() | _layer),
    st.tuples(st.just("prefs"), st.none() | _layer, st.none() | _layer, _rarely),
    st.tuples(st.just("avail"), _available),
    st.tuples(st.just("tick"), st.floats(0.0, 0.4)),
    st.tuples(st.just("kf")),
)
# Packets are most of the stream; settings change now and then, pauses rarely.
_ops = st.integers(0, 9).flatmap(lambda k: _packet if k < 7 else _setting)


@settings(max_examples=200)
@given(st.lists(_ops, min_size=20, max_size=100))
def test_random_sequences_keep_the_switching_invariants(ops: list[tuple[Any, ...]]) -> None:
    sel = SimulcastSelector(3)
    now = 0.0
    last_request: dict[int, float] = {}
    switches = 0
    for op in ops:
        kind = op[0]
        if kind == "pkt":
            _, spatial, temporal, kf, start, sync = op
            before, target = sel.current, sel.target
            decision = sel.decide(spatial, temporal, kf, start, now, layer_sync=sync)
            after = sel.current
            assert sel.target == target  # a packet never moves the target
            if decision is DROP:
                assert after.spatial == before.spatial
                continue
            # Only the current layer is ever forwarded, and only within its temporal limit.
            assert after.spatial == spatial
            if temporal is not None and after.temporal is not None:
                assert temporal <= after.temporal
            if start and temporal is not None and target.temporal is not None:
                assert temporal <= target.temporal
            if decision is FORWARD:
                assert before.spatial == spatial
                continue
            # A switch: at a keyframe start, towards the target and never past it.
            switches += 1
            assert kf and start
            assert target.spatial is not None
            assert before.spatial != spatial
            if before.spatial is None or before.spatial < target.spatial:
                assert (before.spatial or -1) < spatial <= target.spatial
            else:
                assert target.spatial <= spatial < before.spatial
        elif kind == "tick":
            now += op[1]
        elif kind == "kf":
            layer = sel.keyframe_needed(now)
            if layer is not None:
                assert layer == sel.target.spatial
                assert layer != sel.current.spatial
                # Rate-limited per layer (each is its own stream).
                if layer in last_request:
                    assert now - last_request[layer] >= 0.5
                last_request[layer] = now
        else:
            before = sel.current
            if kind == "target":
                sel.set_target(op[1], op[2])
            elif kind == "prefs":
                sel.set_preferences(op[1], op[2], op[3])
            else:
                sel.set_available(op[1])
            # Settings move the current layer only to stop it.
            assert sel.current.spatial in (before.spatial, None)
            target = sel.target
            if target.spatial is None:
                assert sel.current.spatial is None
            else:
                assert target.spatial in sel.available
                requested = sel.requested.spatial
                assert requested is not None and target.spatial <= requested
    assert sel.switches == switches
