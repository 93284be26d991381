"""The compiled retransmission cache (``sfu._fastpath._cache``) against the reference.

Hypothesis drives random call sequences (packets of every size around ``max_size``, negative,
repeated, late and far-apart sequence numbers, clears, ``now`` moving forward) through
``sfu.core.retransmission.RetransmissionBuffer`` and the compiled class side by side: every
return value, exception and public property must be equal after each step. Example tests run
against both. Under SFU_NO_EXTENSIONS=1 the compiled class is not used.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.core import retransmission as cache_py
from sfu.core.kernels import Kernels


@pytest.fixture(scope="module")
def cls(each_kernels: Kernels) -> type[Any]:
    """Each implementation in turn: the reference, then the compiled class."""
    return each_kernels.RetransmissionBuffer


@pytest.fixture(scope="module")
def compiled_cls(compiled_kernels: Kernels) -> type[Any]:
    """The compiled class (skipped or failed as the run's kernel selection says)."""
    return compiled_kernels.RetransmissionBuffer


def state(c: Any) -> dict[str, Any]:
    """Every public property and counter."""
    names = ["capacity", "max_size", "max_age", "memory_bytes", "newest"]
    names += ["stored", "too_large", "too_old", "hits", "misses"]
    return {name: getattr(c, name) for name in names}


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """A call's result (views as bytes) or its exception's type and message."""
    try:
        result = fn(*args)
    except Exception as exc:  # the exception itself is what is compared
        return ("raised", type(exc), str(exc))
    if isinstance(result, memoryview):
        return ("view", bytes(result))
    return ("ok", result)


# -- examples, both implementations --------------------------------------------------------


def test_put_get_and_counters(cls: Any) -> None:
    c = cls(capacity=8, max_size=16, max_age=1.0)
    assert c.memory_bytes == 8 * (16 + 20)
    assert c.newest is None
    c.put(b"hello", 70000, 1.0)
    got = c.get(70000, 1.5)
    assert got is not None and bytes(got) == b"hello"
    assert c.get(70000, 2.01) is None  # older than max_age
    assert c.get(70008, 1.0) is None  # same slot, other seq
    c.put(b"x" * 17, 70001, 1.0)  # too large
    c.put(b"late", 69992, 1.0)  # slot of 70000 holds a newer packet
    assert state(c) == {
        "capacity": 8,
        "max_size": 16,
        "max_age": 1.0,
        "memory_bytes": 288,
        "newest": 70000,
        "stored": 1,
        "too_large": 1,
        "too_old": 1,
        "hits": 1,
        "misses": 2,
    }
    c.clear()
    assert c.newest is None and c.get(70000, 1.0) is None
    assert c.stored == 1  # counters are kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "capacity must be a positive power of two, got 0"),
        ((12,), "capacity must be a positive power of two, got 12"),
        ((8, 0), "max_size must be positive"),
        ((8, 10, 0.0), "max_age must be positive"),
    ],
)
def test_constructor_validation(cls: Any, args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(*args)


def test_negative_seq_raises_on_put_and_misses_on_get(cls: Any) -> None:
    c = cls(capacity=4, max_size=8)
    with pytest.raises(ValueError, match="non-negative"):
        c.put(b"abc", -1, 0.0)
    c.put(b"x" * 9, -1, 0.0)  # too large is checked first: counted, no exception
    assert c.too_large == 1
    assert c.get(-1, 0.0) is None and c.misses == 1


def test_view_is_overwritten_when_the_slot_is_reused(cls: Any) -> None:
    c = cls(capacity=2, max_size=4)
    c.put(b"aaaa", 0, 0.0)
    view = c.get(0, 0.0)
    assert view is not None and bytes(view) == b"aaaa"
    c.put(b"bbbb", 2, 0.0)  # same slot
    assert bytes(view) == b"bbbb"


def test_compiled_view_keeps_the_storage_alive_and_is_read_only(compiled_cls: type[Any]) -> None:
    c = compiled_cls(capacity=4, max_size=8)
    c.put(bytearray(b"packet"), 3, 0.0)
    view = c.get(3, 0.0)
    assert view is not None and view.readonly
    del c
    gc.collect()
    assert bytes(view) == b"packet"
    with pytest.raises(TypeError):
        view[0] = 0


# -- differential --------------------------------------------------------------------------

_seqs = st.one_of(
    st.integers(-3, 40), st.integers(65530, 65545), st.integers(2**62, 2**63 + 5), st.just(-(2**70))
)
_packets = st.binary(max_size=20).flatmap(
    lambda b: st.sampled_from([b, bytearray(b), memoryview(b), memoryview(b + b)[::2]])
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _packets, _seqs, st.floats(0.0, 0.7)),
        st.tuples(st.just("get"), _seqs, st.floats(0.0, 0.7)),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.sampled_from([1, 2, 4, 8]),
    max_size=st.integers(1, 18),
    max_age=st.sampled_from([0.25, 1.0, 3]),
    ops=_ops,
)
def test_random_call_sequences_match_the_reference(
    compiled_cls: type[Any],
    capacity: int,
    max_size: int,
    max_age: float,
    ops: list[tuple[Any, ...]],
) -> None:
    ref = cache_py.RetransmissionBuffer(capacity, max_size, max_age)
    got = compiled_cls(capacity, max_size, max_age)
    assert state(got) == state(ref)
    now = 0.0
    for op in ops:
        if op[0] == "put":
            _, packet, seq, dt = op
            now += dt
            if seq >= 2**63 and len(packet) <= max_size:
                # Beyond int64: both refuse it (the reference after half-writing the slot).
                assert outcome(got.put, packet, seq, now)[:2] == ("raised", ValueError)
                assert outcome(ref.put, packet, seq, now)[:2] == ("raised", ValueError)
                return
            assert outcome(got.put, packet, seq, now) == outcome(ref.put, packet, seq, now)
        elif op[0] == "get":
            _, seq, dt = op
            now += dt
            if seq >= 2**63:
                # The reference's int64 column cannot compare such a value; both miss.
                assert got.get(seq, now) is None
                ref.misses += 1
            else:
                assert outcome(got.get, seq, now) == outcome(ref.get, seq, now)
        else:
            got.clear()
            ref.clear()
        assert state(got) == state(ref)


@settings(max_examples=200, deadline=None)
@given(
    capacity=st.one_of(st.integers(-2, 70), st.just(2.0)),
    max_size=st.one_of(st.integers(-2, 3), st.just(1.5)),
    max_age=st.sampled_from([-1, 0, 0.0, 0.5, 2]),
)
def test_constructor_matches_the_reference(
    compiled_cls: type[Any], capacity: Any, max_size: Any, max_age: Any
) -> None:
    ref = outcome(cache_py.RetransmissionBuffer, capacity, max_size, max_age)
    got = outcome(compiled_cls, capacity, max_size, max_age)
    assert got[0] == ref[0]
    if ref[0] == "raised":
        assert got[1:] == ref[1:]
    else:
        assert state(got[1]) == state(ref[1])
