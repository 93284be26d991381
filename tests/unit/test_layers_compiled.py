"""The compiled simulcast selector (``sfu._fastpath._layers``) against the reference.

Hypothesis drives random call sequences (valid and invalid arguments, ``now`` increasing)
through ``sfu.core.layers.SimulcastSelector`` and the compiled class side by side: every return
value, every exception (type and message) and all public state must be equal after each step.
Example tests run against both implementations. Under SFU_NO_EXTENSIONS=1 the compiled class is
not used and only the reference's parametrizations run.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selector_differential import call, construct, state

from sfu._fastpath.values import Decision, LayerPair
from sfu.core import layers as layers_py
from sfu.core.kernels import Kernels


@pytest.fixture(scope="module")
def impl(each_kernels: Kernels) -> Kernels:
    """Each bundle in turn: the reference selector, then the compiled one."""
    return each_kernels


# -- differential ------------------------------------------------------------------------------


spatial_arg = st.one_of(st.none(), st.integers(-2, 9))
temporal_arg = st.one_of(
    st.none(), st.integers(-2, 5), st.sampled_from([1 << 16, (1 << 16) + 3, 1 << 40])
)
step = st.floats(0, 0.4, allow_nan=False)
op = st.one_of(
    st.tuples(st.just("set_target"), st.tuples(spatial_arg, temporal_arg), st.just({}), step),
    st.tuples(
        st.just("set_preferences"),
        st.tuples(st.one_of(st.none(), st.integers(-1, 10)), temporal_arg, st.booleans()),
        st.just({}),
        step,
    ),
    st.tuples(
        st.just("set_available"),
        st.tuples(st.one_of(st.sets(st.integers(-1, 9)), st.frozensets(st.integers(0, 3)))),
        st.just({}),
        step,
    ),
    st.tuples(
        st.just("decide"),
        st.tuples(st.integers(-2, 9), temporal_arg, st.booleans(), st.booleans()),
        st.fixed_dictionaries({"layer_sync": st.booleans()}),
        step,
    ),
    st.tuples(st.just("keyframe_needed"), st.just(()), st.just({}), step),
)
# Packets of a few layers with keyframes now and then: the usual traffic around control calls.
packets = st.tuples(
    st.just("decide"),
    st.tuples(
        st.integers(0, 2),
        st.one_of(st.none(), st.integers(0, 2)),
        st.booleans(),
        st.booleans(),
    ),
    st.fixed_dictionaries({"layer_sync": st.booleans()}),
    step,
)


@settings(max_examples=300, deadline=None)
@given(
    num=st.integers(-1, 9),
    interval=st.sampled_from([-0.5, 0.0, 0.25, 0.5, 1.0]),
    ops=st.lists(st.one_of(op, packets, packets), max_size=80),
)
def test_compiled_matches_reference(
    compiled_kernels: Kernels,
    num: int,
    interval: float,
    ops: list[tuple[str, tuple[Any, ...], dict[str, Any], float]],
) -> None:
    ref = construct(layers_py.SimulcastSelector, num, interval)
    got = construct(compiled_kernels.SimulcastSelector, num, interval)
    if ref[0] == "raise":
        assert got == ref
        return
    assert got[0] == "ok", got
    py, c = ref[1], got[1]
    assert state(c) == state(py)
    now = 100.0
    for name, args, kwargs, dt in ops:
        now += dt
        full = (*args, now) if name in ("decide", "keyframe_needed") else args
        expected = call(py, name, full, kwargs)
        assert call(c, name, full, kwargs) == expected, (name, full, kwargs)
        assert state(c) == state(py), (name, full, kwargs)


# -- examples (both implementations) -----------------------------------------------------------


def test_start_climb_and_pause(impl: ModuleType) -> None:
    sel = impl.SimulcastSelector(3)
    assert sel.decide(0, 0, False, True, 1.0) is Decision.DROP  # no keyframe yet
    assert sel.decide(0, 0, True, True, 1.0) is Decision.FORWARD_SWITCH
    assert sel.current == LayerPair(0, None)
    sel.set_target(2, 1)
    assert sel.keyframe_needed(1.1) == 2
    assert sel.keyframe_needed(1.2) is None  # rate-limited
    assert sel.decide(2, 2, False, True, 1.3) is Decision.DROP
    assert sel.decide(1, 0, True, True, 1.4) is Decision.FORWARD_SWITCH  # stops on the way up
    assert sel.decide(0, 0, False, True, 1.5) is Decision.DROP
    assert sel.decide(1, 2, False, False, 1.5) is Decision.DROP  # above the temporal target
    assert sel.decide(2, 0, True, True, 1.6) is Decision.FORWARD_SWITCH
    assert (sel.switches, sel.last_switch_at, sel.keyframe_requests) == (3, 1.6, 1)
    sel.set_preferences(paused=True)
    assert sel.current == LayerPair(None, None) and not sel.switch_pending
    assert sel.decide(2, 0, True, True, 1.7) is Decision.DROP


def test_temporal_switch_up_needs_layer_sync(impl: ModuleType) -> None:
    sel = impl.SimulcastSelector(1)
    sel.set_target(0, 0)
    assert sel.decide(0, 0, True, True, 0.0) is Decision.FORWARD_SWITCH
    assert sel.decide(0, 1, False, True, 0.1) is Decision.DROP
    sel.set_target(0, 2)
    assert sel.decide(0, 1, False, True, 0.2, layer_sync=False) is Decision.DROP
    assert sel.temporal_switches == 0
    assert sel.decide(0, 1, False, True, 0.3, layer_sync=True) is Decision.FORWARD
    assert (sel.current, sel.temporal_switches) == (LayerPair(0, 1), 1)


def test_validation_messages(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"num_spatial must be in 1\.\.8"):
        impl.SimulcastSelector(9)
    with pytest.raises(ValueError, match="keyframe_request_interval must not be negative"):
        impl.SimulcastSelector(2, keyframe_request_interval=-1)
    sel = impl.SimulcastSelector(2)
    with pytest.raises(ValueError, match=r"spatial layer 2 out of range 0\.\.1"):
        sel.set_target(2, None)
    with pytest.raises(ValueError, match=r"spatial layers must be in 0\.\.1"):
        sel.set_available({0, 5})
    assert sel.available == frozenset({0, 1})  # a refused update changes nothing
    with pytest.raises(AttributeError):
        sel.no_such_attribute = 1


def test_c_api_layout_constants(compiled_kernels: Kernels) -> None:
    """The ints the engine gets from selector_decide are Decision's."""
    sel = compiled_kernels.SimulcastSelector(2)
    assert [int(d) for d in Decision] == [0, 1, 2]
    assert sel.decide(0, None, True, True, 0.0) == 2
    sel.switches = 7
    sel.last_switch_at = None
    assert (sel.switches, sel.last_switch_at) == (7, None)
