"""The compiled VP8 kernels (``sfu._fastpath._vp8``) against the references.

* ``parse_vp8``: random bytes (well formed, malformed, truncated) and random ``offset`` / ``end``
  windows give the same ``Vp8Descriptor`` or the same ParseError message.
* ``rewrite_vp8_descriptor`` / ``Vp8Munger.apply``: the same bytes afterwards, the same errors.
* ``Vp8Munger``: random call sequences (translate with and without a source, drop, switches,
  munge; picture ids that advance, repeat, go back and wrap, in both widths; small histories so
  runs are evicted, long ones so the C ring grows) return equal translations and leave equal
  properties and counters after each step.

Under SFU_NO_EXTENSIONS=1 the compiled module is not used and only the reference's examples run.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_selection import load_compiled

from sfu._fastpath.values import Vp8Translation
from sfu.codecs import vp8 as vp8_py
from sfu.codecs.vp8 import Vp8Descriptor
from sfu.core import vp8_munger as munger_py
from sfu.core.kernels import Kernels
from sfu.packet.errors import ParseError


@pytest.fixture(scope="module")
def vp8_c() -> ModuleType:
    """The compiled module (skipped or failed as the run's kernel selection says)."""
    return load_compiled("sfu._fastpath._vp8")


@pytest.fixture(scope="module", params=["python", "cython"])
def parse(request: pytest.FixtureRequest) -> Any:
    """Each parser in turn: the reference, then the compiled one."""
    if request.param == "python":
        return vp8_py.parse_vp8
    return request.getfixturevalue("vp8_c").parse_vp8


@pytest.fixture(scope="module")
def cls(each_kernels: Kernels) -> type[Any]:
    """Each VP8 munger in turn: the reference, then the compiled one."""
    return each_kernels.Vp8Munger


KEY = b"\x10\x02"  # VP8 payload header with P=0 (keyframe)
DELTA = b"\x11\x02"


def desc(
    pid: int | None,
    tl0: int | None = None,
    tid: int | None = None,
    keyidx: int | None = None,
    *,
    wide: bool = True,
    start: bool = True,
) -> Vp8Descriptor:
    return Vp8Descriptor(
        extended=True,
        start_of_partition=start,
        picture_id=pid,
        picture_id_15bit=wide,
        tl0picidx=tl0,
        temporal_id=tid,
        keyidx=keyidx,
    )


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """A call's result (translations as tuples) or its exception's type and message."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # the exception itself is what is compared
        return ("raised", type(exc), str(exc))
    if isinstance(result, Vp8Translation):
        return ("translation", result.picture_id, result.tl0picidx, result.keyidx)
    if isinstance(result, Vp8Descriptor):
        return ("descriptor", result, result.size, result.is_start_of_frame)
    return ("ok", result)


def state(m: Any) -> dict[str, Any]:
    names = ["last_picture_id", "last_tl0picidx", "last_keyidx"]
    names += ["switches", "dropped_pictures", "rejected"]
    return {name: getattr(m, name) for name in names}


# -- examples, both implementations --------------------------------------------------------


def test_parse_full_descriptor(parse: Any) -> None:
    d = parse(bytes([0x90, 0xF0, 0x81, 0x23, 0x05, 0x65]) + KEY)
    assert d == Vp8Descriptor(
        extended=True,
        start_of_partition=True,
        picture_id=0x123,
        picture_id_15bit=True,
        tl0picidx=5,
        temporal_id=1,
        layer_sync=True,
        keyidx=5,
        is_keyframe=True,
    )
    assert d.size == 6 and d.is_start_of_frame


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty payload"),
        (b"\x80", "truncated extension octet"),
        (b"\x80\x80", "truncated picture id"),
        (b"\x80\x80\x80", "truncated 15-bit picture id"),
        (b"\x80\x40", "truncated TL0PICIDX"),
        (b"\x80\x10", "truncated T/K octet"),
        (b"\x10", "descriptor without payload"),
    ],
)
def test_parse_errors(parse: Any, data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(data)


def test_switch_drop_and_late_packets(cls: Any) -> None:
    m = cls()
    t = m.translate(desc(32767, 255, 0, 31), source=1)
    assert isinstance(t, Vp8Translation)
    a = t.picture_id
    assert a is not None
    assert (a, t.tl0picidx, t.keyidx) == ((1 << 16) + 32767, 255, 31)
    m.drop(desc(0, None, 1))  # picture 0 wraps and is dropped: no gap
    assert m.translate(desc(1, 0, 0), source=1).picture_id == a + 1
    assert m.translate(desc(0, None, 1, start=False), source=1) is None  # dropped picture
    t = m.translate(desc(9000, 100, 0, 4), source=2)  # new source continues every counter
    assert (t.picture_id, t.tl0picidx, t.keyidx) == (a + 2, 1, 0)
    assert state(m) == {
        "last_picture_id": a + 2,
        "last_tl0picidx": 1,
        "last_keyidx": 0,
        "switches": 2,
        "dropped_pictures": 1,
        "rejected": 1,
    }


def test_munge_and_apply_rewrite_in_place(cls: Any) -> None:
    m = cls()
    m.translate(desc(10, 3, 0, 1))
    m.switch_source()
    buf = bytearray(desc(700, 80, 0, 9).serialize() + KEY)
    assert m.munge(buf, source=7) is True
    assert vp8_py.parse_vp8(buf).picture_id == ((1 << 16) + 11) & 0x7FFF
    assert (m.last_tl0picidx, m.last_keyidx) == (4, 2)
    seven = bytearray(desc(5, 1, None, 3, wide=False).serialize() + DELTA)
    cls.apply(seven, 0, Vp8Translation(0x1FF, 0x1FF, 0x3F))  # truncated to each field
    assert vp8_py.parse_vp8(seven) == desc(0x7F, 0xFF, None, 0x1F, wide=False)
    with pytest.raises(ParseError, match="offset outside the buffer"):
        cls.apply(seven, len(seven), Vp8Translation(1, 1, 1))


def test_compiled_refuses_negative_picture_ids_and_sources(vp8_c: ModuleType) -> None:
    m = vp8_c.Vp8Munger()
    with pytest.raises(ValueError, match="picture_id"):
        m.translate(desc(-1))
    with pytest.raises(ValueError, match="source"):
        m.translate(desc(1), source=-5)
    assert m.switches == 0  # refused before any state changed
    with pytest.raises(ValueError, match="limit must be at least 1"):
        vp8_c.Vp8Munger(0)


# -- differential: parse and rewrite -------------------------------------------------------

_buffers = st.binary(max_size=9).flatmap(
    lambda b: st.sampled_from([b, bytearray(b), memoryview(b), memoryview(b"..." + b)[3:]])
)


@settings(max_examples=300, deadline=None)
@given(
    data=_buffers,
    offset=st.integers(-2, 11),
    end=st.one_of(st.none(), st.integers(-2, 11)),
)
def test_parse_matches_the_reference(
    vp8_c: ModuleType, data: Any, offset: int, end: int | None
) -> None:
    assert outcome(vp8_c.parse_vp8, data, offset, end) == outcome(
        vp8_py.parse_vp8, data, offset, end
    )
    assert outcome(vp8_c.parse_vp8, data) == outcome(vp8_py.parse_vp8, data)


def layouts() -> list[bytes]:
    """Every descriptor layout (X, I with M, L, T, K) followed by one payload octet."""
    out = []
    for ext in range(0x00, 0x100, 0x10):
        for wide in (False, True):
            body = bytes([0x90, ext])
            if ext & 0x80:
                body += bytes([0x80 | 0x12, 0x34]) if wide else bytes([0x12])
            if ext & 0x40:
                body += b"\x56"
            if ext & 0x30:
                body += b"\xe7"
            out.append(body + b"\x00")
    return [*out, b"\x10\x00", b"\x00\x01"]


def test_every_layout_and_truncation_matches_the_reference(vp8_c: ModuleType) -> None:
    for full in layouts():
        for cut in range(len(full) + 1):
            data = full[:cut]
            assert outcome(vp8_c.parse_vp8, data) == outcome(vp8_py.parse_vp8, data)
            for values in ((0x7ABC, 0x99, 0x1B), (None, None, None), (3, None, 40)):
                ref, got = bytearray(data), bytearray(data)
                assert outcome(vp8_c.rewrite_vp8_descriptor, got, 0, *values) == outcome(
                    vp8_py.rewrite_vp8_descriptor, ref, 0, *values
                )
                assert got == ref


def test_parse_of_non_contiguous_buffers_matches_the_reference(vp8_c: ModuleType) -> None:
    data = memoryview(bytes([0x90, 0, 0x80, 0, 0xFF, 0, 0x07, 0, 0x10, 0]))[::2]
    assert outcome(vp8_c.parse_vp8, data) == outcome(vp8_py.parse_vp8, data)


_maybe = st.one_of(st.none(), st.integers(-70000, 70000), st.integers(0, 255))


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=8),
    offset=st.integers(-1, 9),
    picture_id=_maybe,
    tl0picidx=_maybe,
    keyidx=_maybe,
    read_only=st.booleans(),
)
def test_rewrite_matches_the_reference(
    vp8_c: ModuleType,
    data: bytes,
    offset: int,
    picture_id: int | None,
    tl0picidx: int | None,
    keyidx: int | None,
    read_only: bool,
) -> None:
    ref: Any = data if read_only else bytearray(data)
    got: Any = data if read_only else bytearray(data)
    args = (offset, picture_id, tl0picidx, keyidx)
    assert outcome(vp8_c.rewrite_vp8_descriptor, got, *args) == outcome(
        vp8_py.rewrite_vp8_descriptor, ref, *args
    )
    assert got == ref
    t = Vp8Translation(picture_id, tl0picidx, keyidx)
    assert outcome(vp8_c.Vp8Munger.apply, got, offset, t) == outcome(
        munger_py.Vp8Munger.apply, ref, offset, t
    )
    assert got == ref


# -- differential: munger ------------------------------------------------------------------


@st.composite
def descriptors(draw: st.DrawFn, cursor: list[int]) -> Vp8Descriptor:
    """Picture ids mostly near the previous one (new, repeated, late), in both widths."""
    wide = draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else cursor[1] == 1
    step = draw(st.one_of(st.integers(-3, 4), st.integers(-40000, 40000)))
    cursor[0] += step if abs(step) < 5 or draw(st.integers(0, 4)) == 0 else 1
    pid = None if draw(st.integers(0, 14)) == 0 else cursor[0] & (0x7FFF if wide else 0x7F)
    return desc(
        pid,
        draw(st.one_of(st.none(), st.integers(0, 255))),
        draw(st.one_of(st.none(), st.integers(0, 3))),
        draw(st.one_of(st.none(), st.integers(0, 31))),
        wide=wide,
        start=draw(st.booleans()),
    )


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    cursor = [draw(st.integers(0, 0x7FFF)), int(draw(st.booleans()))]
    ops: list[tuple[Any, ...]] = []
    sources = st.one_of(st.none(), st.sampled_from([1, 2, 0xFFFFFFFF]))
    for _ in range(draw(st.integers(0, 60))):
        kind = draw(st.sampled_from(["translate"] * 4 + ["drop"] * 3 + ["switch", "munge"]))
        if kind == "switch":
            ops.append((kind,))
        elif kind == "drop":
            ops.append((kind, draw(descriptors(cursor))))
        else:
            ops.append((kind, draw(descriptors(cursor)), draw(sources)))
    return ops


def run_step(m: Any, op: tuple[Any, ...]) -> tuple[Any, ...]:
    if op[0] == "switch":
        return outcome(m.switch_source)
    if op[0] == "drop":
        return outcome(m.drop, op[1])
    if op[0] == "translate":
        return outcome(m.translate, op[1], source=op[2])
    buf = bytearray(b"\xaa" + op[1].serialize() + DELTA)
    result = outcome(m.munge, buf, 1, len(buf) - 1, source=op[2])
    return (*result, bytes(buf))


@settings(max_examples=300, deadline=None)
@given(history=st.integers(1, 5), script=scripts())
def test_munger_call_sequences_match_the_reference(
    vp8_c: ModuleType, history: int, script: list[tuple[Any, ...]]
) -> None:
    ref = munger_py.Vp8Munger(history)
    got = vp8_c.Vp8Munger(history)
    for op in script:
        assert run_step(got, op) == run_step(ref, op)
        assert state(got) == state(ref)


@settings(max_examples=40, deadline=None)
@given(
    history=st.integers(30, 140),
    pattern=st.lists(st.booleans(), min_size=300, max_size=600),
)
def test_long_histories_match_the_reference(
    vp8_c: ModuleType, history: int, pattern: list[bool]
) -> None:
    """More dropped runs than the C ring starts with (64): it grows, then evicts at ``history``,
    and late packets of pictures in evicted runs are refused as in the reference."""
    ref = munger_py.Vp8Munger(history)
    got = vp8_c.Vp8Munger(history)
    for i, forward in enumerate(pattern):
        d = desc(i & 0x7FFF, i & 0xFF, 0)
        if forward or i == 0:
            assert outcome(got.translate, d) == outcome(ref.translate, d)
        else:
            got.drop(d)
            ref.drop(d)
        assert state(got) == state(ref)
    for i in range(len(pattern)):  # a late packet of every picture, forwarded or dropped
        d = desc(i & 0x7FFF, i & 0xFF, 0, start=False)
        assert outcome(got.translate, d) == outcome(ref.translate, d)
        assert state(got) == state(ref)
