"""The compiled RTP munger (``sfu._fastpath._munger``) against the reference.

Hypothesis drives random call sequences (translate, drop, switch_source, munge with random and
malformed packets, sequence numbers near the wrap, reordering, duplicates, valid and invalid
arguments) through ``sfu.core.munger.RtpMunger`` and the compiled class side by side: every
return value, every exception (type and message), every byte written and all public state must
be equal after each step; likewise for ``SkipHistory``. Example tests run against both
implementations. Under SFU_NO_EXTENSIONS=1 the compiled classes are not used and only the
reference's parametrizations run.
"""

from __future__ import annotations

import struct
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_selection import load_compiled

from sfu._fastpath.values import REWIND_LIMIT, TranslationParams
from sfu.core import munger as munger_py
from sfu.core.munger import DROPPED


@pytest.fixture(scope="module")
def munger_c() -> ModuleType:
    """The compiled module (skipped or failed as the run's kernel selection says)."""
    return load_compiled("sfu._fastpath._munger")


@pytest.fixture(scope="module", params=["python", "cython"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """Each module in turn: the reference, then the compiled one."""
    return munger_py if request.param == "python" else request.getfixturevalue("munger_c")


S16 = 1 << 16
S32 = 1 << 32


def rtp(
    seq: int, ts: int, ssrc: int, pt: int = 96, payload: bytes = b"\x10\x01\x02", b0: int = 0x80
) -> bytes:
    return struct.pack("!BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


# -- differential ------------------------------------------------------------------------------


def state(m: Any) -> dict[str, Any]:
    """Every public property and counter of a munger."""
    names = (
        "last_out_seq",
        "last_out_ts",
        "source_ssrc",
        "clock_rate",
        "out_ssrc",
        "forwarded",
        "skipped",
        "holes",
        "duplicates",
        "too_old",
        "switches",
    )
    return {name: getattr(m, name) for name in names}


def outcome(fn: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """Call ``fn``; its outcome as ("ok", value) or ("raise", (type, message))."""
    try:
        result = fn(*args, **kwargs)
    except Exception as exc:  # any exception must match the reference's
        return "raise", (type(exc), str(exc))
    if isinstance(result, TranslationParams):
        fields = (result.drop, result.out_seq, result.out_ts, result.switched, result.reason)
        return "ok", (TranslationParams, fields)
    return "ok", (type(result), result)


ssrcs = st.sampled_from([None, 1, 2, 0xFFFFFFFF])
dts = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1 / 16000, 0.02]), st.floats(0, 3))
# Sequence numbers relative to a moving cursor: in order, reordered, duplicated, far jumps.
seq_moves = st.one_of(
    st.integers(-3, 3),
    st.integers(-600, 40),
    st.sampled_from([S16, -S16, 0x8000, -0x8000, 0x7FFF]),
    st.integers(-(S16 * 3), S16 * 3),
)
ts_moves = st.one_of(
    st.integers(-3000, 3000),
    st.sampled_from([S32, -(S32 >> 1) + 1, (S32 >> 1) - 1, 0x80000000]),
)
op = st.one_of(
    st.tuples(st.just("translate"), seq_moves, ts_moves, dts, ssrcs),
    st.tuples(st.just("translate"), seq_moves, ts_moves, dts, ssrcs),
    st.tuples(st.just("drop"), seq_moves, st.just(0), st.just(0.0), st.none()),
    st.tuples(
        st.just("switch_source"),
        seq_moves,
        ts_moves,
        dts,
        st.tuples(ssrcs, st.sampled_from([None, None, -1, 0, 2, 8000, 48000])),
    ),
    st.tuples(
        st.just("munge"),
        seq_moves,
        ts_moves,
        dts,
        st.tuples(
            st.sampled_from([1, 2, 7, 0xFFFFFFFF]),  # the packet's SSRC
            st.sampled_from([0, 96, 97, 111, 127]),  # its payload type
            st.sampled_from([0x80, 0x80, 0x80, 0x00, 0x81, 0x90, 0xA0, 0xB0, 0x8F]),  # b0
            st.binary(max_size=24),  # what follows the fixed header
            st.sampled_from([1500, 1500, 0, 12, 15, 20]),  # dst size
            st.sampled_from([12, 1 << 20, 5]),  # cut the packet to this length
        ),
    ),
)
# rewind: outgoing numbers to give back, as offsets behind the newest (a pacer's tail, gaps,
# numbers ahead of it, duplicates).
op = st.one_of(
    op,
    st.tuples(
        st.just("rewind"),
        st.just(0),
        st.just(0),
        st.just(0.0),
        st.one_of(
            st.integers(0, 600).map(lambda n: list(range(n))),
            st.lists(st.integers(-3, 700), max_size=40),
        ),
    ),
)
pt_maps = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from([0, 96, 97, 111, 127, 200]),
        st.one_of(st.none(), st.integers(0, 127), st.sampled_from([-1, 128, 300])),
        max_size=4,
    ),
)


@settings(max_examples=250, deadline=None)
@given(
    out_ssrc=st.sampled_from([0, 1234, 0xFFFFFFFF, -1, S32]),
    pt_map=pt_maps,
    clock_rate=st.sampled_from([90000, 48000, 2, 0, -5]),
    initial_seq=st.one_of(st.none(), st.integers(-(S16 * 2), S16 * 2)),
    initial_ts=st.one_of(st.none(), st.integers(-(S32 * 2), S32 * 2)),
    history=st.sampled_from([64, 1, 2, 3, 256, 0, -1]),
    start_seq=st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0xFFF0, 0xFFFF, S16 * 5 - 3])),
    start_ts=st.one_of(st.integers(0, 0xFFFFFFFF), st.sampled_from([0xFFFFFF00, 5])),
    ops=st.lists(op, max_size=80),
)
def test_compiled_matches_reference(
    munger_c: ModuleType,
    out_ssrc: int,
    pt_map: dict[int, int | None] | None,
    clock_rate: int,
    initial_seq: int | None,
    initial_ts: int | None,
    history: int,
    start_seq: int,
    start_ts: int,
    ops: list[tuple[str, int, int, float, Any]],
) -> None:
    kwargs: dict[str, Any] = {
        "clock_rate": clock_rate,
        "initial_seq": initial_seq,
        "initial_ts": initial_ts,
        "history": history,
    }
    ref = outcome(munger_py.RtpMunger, out_ssrc, pt_map, **kwargs)
    got = outcome(munger_c.RtpMunger, out_ssrc, pt_map, **kwargs)
    if ref[0] == "raise":
        assert got == ref
        return
    assert got[0] == "ok", got
    py, c = ref[1][1], got[1][1]
    # A third munger takes munge() through the engine's nogil C entry point (munger_munge).
    # Where the reference raises, that one cannot: from there on it is not compared.
    engine: Any = munger_c.RtpMunger(out_ssrc, pt_map, **kwargs)
    assert state(c) == state(py)
    seq, ts, now = start_seq, start_ts, 10.0
    for name, dseq, dts_, dt, extra in ops:
        seq, ts, now = max(0, seq + dseq), max(0, ts + dts_), now + dt
        if name == "translate":
            step: tuple[Any, ...] = (name, seq, ts, now, extra)
            expected = outcome(py.translate, seq, ts, now, extra)
            assert outcome(c.translate, seq, ts, now, extra) == expected, step
            if engine is not None:
                assert outcome(engine.translate, seq, ts, now, extra) == expected, step
        elif name == "drop":
            step = (name, seq)
            expected = outcome(py.drop, seq)
            assert outcome(c.drop, seq) == expected, step
            if engine is not None:
                assert outcome(engine.drop, seq) == expected, step
        elif name == "rewind":
            last = py.last_out_seq or 0
            discarded = [(last - back) & 0xFFFF for back in extra]
            step = (name, discarded)
            expected = outcome(py.rewind, discarded)
            assert outcome(c.rewind, discarded) == expected, step
            if engine is not None:
                assert outcome(engine.rewind, discarded) == expected, step
        elif name == "switch_source":
            ssrc, rate = extra
            step = (name, seq, ts, now, rate, ssrc)
            expected = outcome(py.switch_source, seq, ts, now, rate, ssrc=ssrc)
            assert outcome(c.switch_source, seq, ts, now, rate, ssrc=ssrc) == expected, step
            if engine is not None:
                assert outcome(engine.switch_source, seq, ts, now, rate, ssrc=ssrc) == expected
        else:
            pssrc, pt, b0, tail, dst_len, cut = extra
            packet = rtp(seq, ts, pssrc, pt, tail, b0)[:cut]
            dst_py, dst_c = bytearray(b"\xee" * dst_len), bytearray(b"\xee" * dst_len)
            step = (name, packet.hex(), seq, now, dst_len)
            expected = outcome(py.munge, packet, seq, now, dst_py)
            assert outcome(c.munge, packet, seq, now, dst_c) == expected, step
            assert dst_c == dst_py, step
            if engine is not None and expected[0] == "raise":
                engine = None
            elif engine is not None:
                dst_e = bytearray(b"\xee" * dst_len)
                assert outcome(munger_c.munge_nogil, engine, packet, seq, now, dst_e) == expected
                assert dst_e == dst_py, step
        assert state(c) == state(py), step
        if engine is not None:
            assert state(engine) == state(py), step


@settings(max_examples=200, deadline=None)
@given(
    limit=st.sampled_from([1, 2, 3, 5, 64, 256, 0, -3]),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["skip", "skip", "skip", "offset_after", "reset"]), st.integers(-5, 40)
        ),
        max_size=120,
    ),
)
def test_skip_history_matches_reference(
    munger_c: ModuleType, limit: int, ops: list[tuple[str, int]]
) -> None:
    ref = outcome(munger_py.SkipHistory, limit)
    got = outcome(munger_c.SkipHistory, limit)
    if ref[0] == "raise":
        assert got == ref
        return
    py, c = ref[1][1], got[1][1]
    x = 0
    for name, arg in ops:
        if name == "skip":
            x += 1 + arg % 3  # increasing inputs, with and without gaps
            assert outcome(c.skip, x) == outcome(py.skip, x)
        elif name == "offset_after":
            assert outcome(c.offset_after, x - arg) == outcome(py.offset_after, x - arg)
        else:
            x += arg % 7
            assert outcome(c.reset, x) == outcome(py.reset, x)
        assert (c.runs, c.floor) == (py.runs, py.floor)


# -- examples (both implementations) -----------------------------------------------------------


def test_continuity_across_switch_and_drops(impl: ModuleType) -> None:
    m = impl.RtpMunger(0xABCD, clock_rate=90000, initial_seq=0xFFFE, initial_ts=10)
    assert m.translate(500, 7000, 0.0, 1).out_seq % S16 == 0xFFFE
    assert m.drop(501) is True  # leaves no hole
    p = m.translate(502, 7100, 0.01, 1)
    assert (p.out_seq % S16, p.out_ts % S32, p.switched) == (0xFFFF, 110, False)
    late = m.translate(501, 7050, 0.02, 1)
    assert late.drop and late.reason == "dropped"
    m.switch_source(9000, 123456, 0.5, ssrc=2)  # 0.49 s after the last packet
    p = m.translate(9000, 123456, 0.5, 2)
    assert (p.out_seq % S16, p.out_ts, p.switched) == (0, m.last_out_ts, False)
    assert p.out_ts - (S32 + 110) == round(0.49 * 90000)
    assert m.translate(8999, 123000, 0.5, 2).reason == "pre_switch"
    assert m.translate(9000, 123456, 0.5, 2).reason == "duplicate"
    assert (m.forwarded, m.skipped, m.duplicates, m.too_old, m.switches) == (3, 1, 2, 1, 2)


def test_rewind_gives_back_the_newest_run_of_numbers_that_never_left(impl: ModuleType) -> None:
    m = impl.RtpMunger(9, initial_seq=0xFFFD)
    assert m.rewind([0xFFFD]) == 0  # nothing forwarded yet
    dst = bytearray(100)
    for i in range(8):  # out 0xFFFD .. 4, across the wrap
        assert m.munge(rtp(100 + i, 3000 * i, 1), 100 + i, i / 30, dst) > 0
    last = m.last_out_seq
    # 2, 3, 4 never left (1 did; 0 did not, but 1 is between): the run back from 4 is 3 long.
    assert m.rewind([4, 3, 0, 2, 0x1234]) == 3
    assert m.last_out_seq == last - 3
    # The next packet, of any source, starts there.
    assert m.munge(rtp(500, 90000, 2), 500, 0.5, dst) > 0
    assert struct.unpack_from("!H", dst, 2)[0] == 2
    assert m.rewind([]) == 0 and m.rewind([0x7777]) == 0
    # At most REWIND_LIMIT numbers.
    newest = m.last_out_seq
    assert m.rewind([(newest - k) & 0xFFFF for k in range(REWIND_LIMIT + 10)]) == REWIND_LIMIT


def test_round_half_to_even_for_ticks(impl: ModuleType) -> None:
    """1.25 s at 2 Hz is 2.5 ticks, which rounds to 2; then 0.25 s is 0.5 tick: 0, so 1."""
    m = impl.RtpMunger(1, clock_rate=2)
    m.translate(1, 100, 0.0, 1)
    m.switch_source(50, 0, 1.25, ssrc=2)
    assert m.translate(50, 0, 1.25, 2).out_ts == S32 + 100 + 2
    m.switch_source(80, 0, 1.5, ssrc=3)
    assert m.translate(80, 0, 1.5, 3).out_ts == S32 + 102 + 1


def test_duplicate_window_spans_words(impl: ModuleType) -> None:
    """300 packets in order, then each again: all duplicates (bits carried across 64-bit words)."""
    m = impl.RtpMunger(1)
    for seq in range(1000, 1300):
        assert not m.translate(seq, seq, 0.0, 1).drop
    for seq in range(1000, 1300):
        assert m.translate(seq, seq, 0.0, 1).reason == "duplicate"
    for seq in range(1300, 1400, 2):  # every other one dropped: their late copies stay out
        assert m.drop(seq) is True
        assert not m.translate(seq + 1, seq, 0.0, 1).drop
    for seq in range(1300, 1400, 2):
        assert m.translate(seq, seq, 0.0, 1).reason == "dropped"
    for seq in range(1400, 1600):
        assert not m.translate(seq, seq, 0.0, 1).drop
    assert m.translate(1599 - 511, 0, 0.0, 1).reason == "duplicate"  # the window's last bit
    assert m.translate(1599 - 512, 0, 0.0, 1).reason == "too_old"
    assert (m.forwarded, m.duplicates, m.too_old, m.skipped) == (550, 351, 1, 50)


def test_first_packet_of_a_source_dropped_then_seen_again(impl: ModuleType) -> None:
    m = impl.RtpMunger(1)
    m.switch_source(5000, 0, 0.0, ssrc=9)
    assert m.drop(5000) is True
    assert m.translate(5001, 0, 0.0, 9).out_seq == S16 + 5000  # takes the dropped one's place
    assert m.translate(5000, 0, 0.0, 9).reason == "dropped"  # at the floor: known, and skipped
    assert m.translate(4999, 0, 0.0, 9).reason == "pre_switch"
    assert (m.duplicates, m.too_old) == (1, 1)


def test_munge_rewrites_maps_and_retracts(impl: ModuleType) -> None:
    m = impl.RtpMunger(0x01020304, {96: 100, 97: None}, initial_seq=7, initial_ts=9)
    dst = bytearray(64)
    assert m.munge(rtp(1000, 5, 0x55, pt=96, b0=0x80), 1000, 0.0, dst) == 15
    assert bytes(dst[:12]) == bytes.fromhex("80640007000000090102030" + "4")
    assert m.munge(rtp(1001, 6, 0x55, pt=97), 1001, 0.0, dst) == DROPPED  # not forwarded
    assert m.munge(rtp(1002, 6, 0x55, pt=98), 1002, 0.0, dst) == DROPPED  # missing from the map
    assert m.munge(rtp(1003, 6, 0x55, b0=0x20), 1003, 0.0, dst) == -1  # malformed: version 0
    assert m.munge(rtp(1004, 6, 0x55), 1004, 0.0, bytearray(4)) == -2
    assert (m.forwarded, m.skipped, m.last_out_seq % S16) == (1, 4, 7)  # no hole left
    assert m.munge(b"\x80" * 11, 1005, 0.0, dst) == -1  # too short to read: not translated
    assert m.munge(rtp(1006, 6, 0x55), 1006, 0.0, dst) == 15
    assert (dst[2] << 8 | dst[3], m.last_out_seq % S16) == (9, 9)  # 1005 stays a hole


def test_invalid_mapped_payload_type_raises_when_written(impl: ModuleType) -> None:
    m = impl.RtpMunger(5, {96: 300})
    with pytest.raises(ValueError, match=r"payload_type must be in 0\.\.127"):
        m.munge(rtp(1, 2, 3), 1, 0.0, bytearray(64))
    assert m.forwarded == 1  # translated before the kernel refused it, as in the reference


def test_validation_messages(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match="out_ssrc must be a 32-bit value"):
        impl.RtpMunger(S32)
    with pytest.raises(ValueError, match="clock_rate must be positive"):
        impl.RtpMunger(1, clock_rate=0)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        impl.RtpMunger(1, history=0)
    with pytest.raises(ValueError, match="clock_rate must be positive"):
        impl.RtpMunger(1).switch_source(1, 1, 0.0, clock_rate=-1)
    with pytest.raises(AttributeError):
        impl.RtpMunger(1).no_such_attribute = 1


def test_history_above_the_c_capacity_is_refused(munger_c: ModuleType) -> None:
    with pytest.raises(ValueError, match="limit must be at most 256"):
        munger_c.RtpMunger(1, history=257)
    with pytest.raises(ValueError, match="limit must be at most 256"):
        munger_c.SkipHistory(1000)
    h = munger_c.SkipHistory(256)
    for x in range(0, 1000, 2):  # 500 runs through a 256-run ring
        h.skip(x)
    assert len(h.runs) == 256 and h.runs[0] == (488, 489) and h.floor == 487
    assert (
        h.offset_after(487) == 256 and h.offset_after(486) is None and h.offset_after(998) is None
    )


def test_window_shift_crosses_word_boundaries(munger_c: ModuleType) -> None:
    """Packets 63, 64, 65 and 511 behind the newest are placed once and refused when repeated."""
    for impl in (munger_py, munger_c):
        m = impl.RtpMunger(1)
        m.translate(1000, 0, 0.0, 1)
        m.translate(1600, 0, 0.0, 1)
        for behind in (63, 64, 65, 511):
            assert not m.translate(1600 - behind, 0, 0.0, 1).drop
            assert m.translate(1600 - behind, 0, 0.0, 1).reason == "duplicate"
        assert m.translate(1600 - 512, 0, 0.0, 1).reason == "too_old"
        assert m.forwarded == 6


def test_negative_extended_timestamp_goes_out_modulo_2_32(munger_c: ModuleType) -> None:
    """Timestamps stepping back by almost 2**31 each time drive the extended value below zero:
    both write it modulo 2**32 (found by fuzzing the forwarder: it raised out of the packet
    path of the reference while the compiled forwarder wrapped), and translate() agrees."""
    results = []
    for impl in (munger_py, munger_c):
        m = impl.RtpMunger(1, initial_ts=0)
        outcomes = []
        for i in range(4):
            ts = (-i * ((1 << 31) - 1)) & 0xFFFFFFFF
            dst = bytearray(64)
            outcomes.append((outcome(m.munge, rtp(i, ts, 3), i, 0.0, dst), bytes(dst)))
        outcomes.append((outcome(m.translate, 10, 5, 0.0, 3), b""))
        results.append((outcomes, state(m)))
    assert results[1] == results[0]
    (status, (_, written)), wire = results[0][0][3]
    assert status == "ok" and written > 0
    assert wire[4:8] == ((-3 * ((1 << 31) - 1)) & 0xFFFFFFFF).to_bytes(4, "big")
