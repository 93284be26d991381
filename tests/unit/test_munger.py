"""Tests for the per-subscription RTP munger: continuity of sequence numbers and timestamps
across source switches, deliberate drops, reordering, duplicates and wrap-around."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from fixture_files import rtp_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath.values import REORDER_WINDOW, TranslationParams
from sfu.core.munger import DROPPED, RtpMunger, SkipHistory
from sfu.packet.rtp import RtpPacket

S16 = 1 << 16
S32 = 1 << 32


def fwd(m: RtpMunger, seq: int, ts: int, now: float = 0.0, ssrc: int | None = None) -> int:
    """Translate a packet that must be forwarded; return its outgoing wire sequence number."""
    p = m.translate(seq, ts, now, ssrc)
    assert not p.drop, p
    return p.out_seq % S16


def rtp(seq: int, ts: int, ssrc: int, pt: int = 96, payload: bytes = b"\x10\x01\x02") -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


# -- basics ----------------------------------------------------------------------------------


def test_first_source_keeps_its_numbers_by_default() -> None:
    m = RtpMunger(0x1234)
    p = m.translate(1000, 5000, 0.0)
    assert (p.out_seq % S16, p.out_ts % S32) == (1000, 5000)
    assert p.switched and not p.drop
    assert m.last_out_seq == p.out_seq and m.last_out_ts == p.out_ts
    q = m.translate(1001, 8000, 0.03)
    assert (q.out_seq - p.out_seq, q.out_ts - p.out_ts) == (1, 3000)
    assert not q.switched
    assert (m.forwarded, m.switches) == (2, 1)


def test_initial_values_chosen_by_the_caller() -> None:
    m = RtpMunger(1, initial_seq=65535, initial_ts=S32 - 1)
    assert fwd(m, 7, 100) == 65535
    p = m.translate(8, 190, 0.001)
    assert (p.out_seq % S16, p.out_ts % S32) == (0, 89)  # both wrapped on the wire
    assert p.out_seq > 0 and p.out_ts > 0  # extended inside


def test_switch_continues_sequence_and_advances_timestamp_by_elapsed_time() -> None:
    m = RtpMunger(1, initial_seq=100, initial_ts=1_000_000)
    fwd(m, 5000, 77, now=10.0)
    fwd(m, 5001, 3077, now=10.02)
    last_ts = m.last_out_ts
    assert last_ts is not None
    # A different layer: unrelated numbers; 0.5 s of wall clock later at 90 kHz.
    m.switch_source(40000, 123456789, now=10.52)
    p = m.translate(40000, 123456789, 10.52)
    assert p.out_seq % S16 == 102
    assert p.out_ts == last_ts + 45000
    q = m.translate(40001, 123456789 + 3000, 10.55)
    assert (q.out_seq - p.out_seq, q.out_ts - p.out_ts) == (1, 3000)
    assert m.switches == 2


def test_switch_without_elapsed_time_still_moves_timestamp() -> None:
    m = RtpMunger(1)
    fwd(m, 10, 1000, now=3.0)
    before = m.last_out_ts
    assert before is not None
    m.switch_source(999, 55, now=3.0)
    assert m.translate(999, 55, 3.0).out_ts == before + 1
    m.switch_source(5, 7, now=2.0)  # a clock going backwards still gives +1
    assert m.translate(5, 7, 2.0).out_ts == before + 2


def test_switch_clock_rate_is_used_and_kept() -> None:
    m = RtpMunger(1, clock_rate=48000)
    fwd(m, 1, 0, now=0.0)
    m.switch_source(100, 9, now=0.02, clock_rate=8000)
    assert m.clock_rate == 8000
    assert m.last_out_ts is not None
    assert m.translate(100, 9, 0.02).out_ts == m.last_out_ts
    assert m.last_out_ts % S32 == 160


def test_implicit_switch_on_new_ssrc_and_adoption_after_explicit_switch() -> None:
    m = RtpMunger(1)
    a = m.translate(10, 0, 0.0, ssrc=0xA)
    b = m.translate(11, 0, 0.0, ssrc=0xA)
    c = m.translate(500, 9999, 0.1, ssrc=0xB)
    assert (a.switched, b.switched, c.switched) == (True, False, True)
    assert c.out_seq == b.out_seq + 1 and c.out_ts == b.out_ts + 9000
    # Explicit switch without an SSRC: the next packet's SSRC is adopted, not a second switch.
    m.switch_source(70, 1, now=0.2)
    d = m.translate(70, 1, 0.2, ssrc=0xC)
    e = m.translate(71, 1, 0.2, ssrc=0xC)
    assert d.out_seq == c.out_seq + 1 and e.out_seq == d.out_seq + 1
    assert m.switches == 3 and m.source_ssrc == 0xC


def test_constructor_validation() -> None:
    with pytest.raises(ValueError):
        RtpMunger(-1)
    with pytest.raises(ValueError):
        RtpMunger(1, clock_rate=0)
    m = RtpMunger(1)
    with pytest.raises(ValueError):
        m.switch_source(1, 1, 0.0, clock_rate=-5)


def test_translation_params_repr() -> None:
    assert "out_seq=3" in repr(TranslationParams(3, 4))
    assert "duplicate" in repr(TranslationParams(-1, -1, True, reason="duplicate"))


# -- drops, losses, reordering, duplicates ------------------------------------------------------


def test_drop_leaves_no_hole() -> None:
    m = RtpMunger(1, initial_seq=0)
    outs = []
    for seq in range(20, 30):
        if seq % 3 == 0:
            assert m.drop(seq)
        else:
            outs.append(fwd(m, seq, seq * 10))
    assert outs == list(range(len(outs)))
    assert m.skipped == 3 and m.holes == 0


def test_loss_keeps_hole_and_late_packet_fills_it_around_drops() -> None:
    m = RtpMunger(1, initial_seq=0)
    assert fwd(m, 10, 0) == 0
    # 11 is late, 12 is dropped on purpose, 13 goes out.
    assert m.drop(12)
    assert fwd(m, 13, 0) == 2
    assert fwd(m, 11, 0) == 1  # the hole left for the lost packet
    assert fwd(m, 14, 0) == 3


def test_late_packet_before_several_drop_runs() -> None:
    m = RtpMunger(1, initial_seq=0)
    fwd(m, 0, 0)
    for seq in (2, 3, 5, 7, 8):
        m.drop(seq)
    assert fwd(m, 9, 0) == 4  # 0, [1], 4 (in 4), [6], 9
    assert fwd(m, 6, 0) == 3
    assert fwd(m, 4, 0) == 2
    assert fwd(m, 1, 0) == 1
    assert m.translate(3, 0, 0.0).reason == "dropped"  # a copy of a dropped packet
    assert m.translate(6, 0, 0.0).reason == "duplicate"


def test_duplicates_are_dropped() -> None:
    m = RtpMunger(1)
    fwd(m, 100, 0)
    fwd(m, 102, 0)
    assert m.translate(102, 0, 0.0).reason == "duplicate"
    assert m.translate(100, 0, 0.0).reason == "duplicate"
    fwd(m, 101, 0)
    assert m.translate(101, 0, 0.0).reason == "duplicate"
    assert m.duplicates == 3 and m.forwarded == 3


def test_late_drop_leaves_a_hole_and_blocks_the_stale_copy() -> None:
    m = RtpMunger(1, initial_seq=0)
    fwd(m, 1, 0)
    fwd(m, 3, 0)
    assert not m.drop(2)  # 3 already took out seq 2: out seq 1 stays a hole
    assert m.holes == 1
    assert m.translate(2, 0, 0.0).drop
    assert m.drop(2)  # already accounted
    assert m.drop(1)  # already forwarded: nothing to change
    assert m.holes == 1


def test_packets_before_the_switch_are_dropped() -> None:
    m = RtpMunger(1)
    m.switch_source(1000, 0, 0.0)
    fwd(m, 1000, 0)
    p = m.translate(999, 0, 0.0)
    assert p.drop and p.reason == "pre_switch"
    assert m.drop(998)  # never had a place: no hole
    assert m.too_old == 1 and m.holes == 0


def test_packets_beyond_the_reorder_window_are_dropped() -> None:
    m = RtpMunger(1)
    m.switch_source(0, 0, 0.0)
    fwd(m, 0, 0)
    fwd(m, REORDER_WINDOW + 5, 0)
    assert m.translate(5, 0, 0.0).reason == "too_old"
    assert fwd(m, 6, 0) == 6


def test_history_eviction_makes_old_packets_unplaceable() -> None:
    m = RtpMunger(1, history=2, initial_seq=0)
    fwd(m, 0, 0)
    for seq in (2, 4, 6):  # three runs, only two kept: placement below 3 is unknown
        m.drop(seq)
    fwd(m, 7, 0)
    assert m.translate(1, 0, 0.0).reason == "too_old"
    assert fwd(m, 5, 0) == 3  # out 0: in 0, 1: (in 1, lost), 2: in 3, 3: in 5, 4: in 7
    assert fwd(m, 3, 0) == 2


def test_drop_before_any_source_is_harmless() -> None:
    m = RtpMunger(1)
    assert m.drop(5)
    assert m.last_out_seq is None
    assert fwd(m, 6, 0) == 6


def test_wrap_around_with_wire_values() -> None:
    m = RtpMunger(1, initial_seq=10, initial_ts=20)
    seqs = [65533, 65534, 65535, 0, 1, 2]
    tss = [S32 - 3000, S32 - 3000, S32 - 1, 2999, 2999, 6000]
    outs = [m.translate(s, t, 0.0) for s, t in zip(seqs, tss, strict=True)]
    assert [p.out_seq % S16 for p in outs] == [10, 11, 12, 13, 14, 15]
    assert [p.out_ts - outs[0].out_ts for p in outs] == [0, 0, 2999, 5999, 5999, 9000]
    # a late packet from before the wrap, given as a wire value after it
    m2 = RtpMunger(1, initial_seq=0)
    fwd(m2, 65535, 0)
    fwd(m2, 1, 0)
    assert fwd(m2, 0, 0) == 1


# -- SkipHistory -------------------------------------------------------------------------------


def test_skip_history_runs_and_floor() -> None:
    h = SkipHistory(limit=2)
    h.reset(10)
    for x in (11, 12, 15, 20):
        h.skip(x)
    assert h.runs == [(15, 16), (20, 21)]
    assert h.floor == 13
    assert h.offset_after(14) == 2
    assert h.offset_after(17) == 1
    assert h.offset_after(21) == 0
    assert h.offset_after(15) is None
    assert h.offset_after(12) is None
    with pytest.raises(ValueError):
        SkipHistory(0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200), st.integers(1, 8))
def test_skip_history_matches_model(skips: list[bool], limit: int) -> None:
    h = SkipHistory(limit)
    h.reset(0)
    skipped = [x for x, s in enumerate(skips) if s]
    for x in skipped:
        h.skip(x)
    runs = h.runs
    assert len(runs) <= limit
    for x in range(len(skips)):
        got = h.offset_after(x)
        if x in skipped or x < h.floor:
            assert got is None
        else:
            assert got == sum(1 for y in skipped if y > x)


# -- properties ----------------------------------------------------------------------------


@dataclass
class Segment:
    """One source: its starting wire values and per-packet (forward?, ts step) decisions."""

    ssrc: int
    seq0: int
    ts0: int
    keep: list[bool]
    steps: list[int]
    gap: float
    swaps: list[int]
    dups: list[int]


@st.composite
def segments(draw: st.DrawFn) -> list[Segment]:
    out = []
    for i in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 40))
        # The first packet (where the switch happens) and the last (so that every hole a late
        # drop leaves lies below a later packet) are forwarded.
        keep = [True, *draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))]
        keep[-1] = True
        out.append(
            Segment(
                ssrc=i + 1,
                seq0=draw(st.one_of(st.integers(0, 0xFFFF), st.integers(0xFFF0, 0xFFFF))),
                ts0=draw(st.one_of(st.integers(0, S32 - 1), st.integers(S32 - 20000, S32 - 1))),
                keep=keep,
                steps=draw(st.lists(st.sampled_from([0, 0, 1, 3000]), min_size=n, max_size=n)),
                gap=draw(st.floats(0, 2)),
                swaps=draw(st.lists(st.integers(1, max(1, n - 2)), max_size=6)),
                dups=draw(st.lists(st.integers(0, n - 1), max_size=3)),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(segments(), st.booleans(), st.booleans())
def test_outgoing_sequence_is_continuous(
    segs: list[Segment], reorder: bool, extended: bool
) -> None:
    m = RtpMunger(0xFEED, clock_rate=90000)
    now = 100.0
    sent: list[int] = []  # extended out seqs of forwarded packets, in sending order
    late_drops = 0
    prev_last_ts: int | None = None
    ts_offset = 0
    for seg in segs:
        now += seg.gap
        n = len(seg.keep)
        order = list(range(n))
        if reorder:
            for i in seg.swaps:
                if i + 1 < n - 1:
                    order[i], order[i + 1] = order[i + 1], order[i]
        events = [(i, False) for i in order]
        for d in seg.dups:  # a second copy, after the original
            events.insert(events.index((d, False)) + 1 + (d % 3), (d, True))
        ts_of = [seg.ts0 + sum(seg.steps[: i + 1]) for i in range(n)]
        highest = -1
        in_order_ts: list[int] = []
        handled: set[int] = set()
        for i, dup in events:
            seq = seg.seq0 + i + S16 if extended else (seg.seq0 + i) & 0xFFFF
            ts = ts_of[i] if extended else ts_of[i] & 0xFFFFFFFF
            now += 0.001
            if not seg.keep[i]:
                ok = m.drop(seq)
                if not dup and i < highest:
                    late_drops += 1
                    assert not ok
                else:
                    assert ok
            else:
                p = m.translate(seq, ts, now, ssrc=seg.ssrc)
                if dup or i in handled:
                    assert p.drop
                else:
                    assert not p.drop, (i, p)
                    assert p.switched == (i == 0)
                    if i == 0 and prev_last_ts is not None:
                        assert p.out_ts >= prev_last_ts + 1
                    # within a source the timestamp offset is constant (mod 2**32)
                    if i == 0:
                        ts_offset = (p.out_ts - ts_of[0]) % S32
                    assert (p.out_ts - ts_of[i]) % S32 == ts_offset
                    if i > highest:
                        in_order_ts.append(p.out_ts)
                    sent.append(p.out_seq)
            handled.add(i)
            highest = max(highest, i)
        assert in_order_ts == sorted(in_order_ts)  # non-decreasing across the segment
        prev_last_ts = m.last_out_ts
    # no duplicates, and every gap in the outgoing sequence is a drop that came too late
    assert len(set(sent)) == len(sent)
    assert max(sent) - min(sent) + 1 - len(sent) == late_drops == m.holes
    assert m.last_out_seq == max(sent)
    if not reorder:
        assert sent == list(range(sent[0], sent[0] + len(sent)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, S32 - 1)), min_size=1, max_size=8),
    st.lists(st.floats(0, 5), min_size=8, max_size=8),
)
def test_switches_keep_timestamps_moving_with_wall_clock(
    starts: list[tuple[int, int]], gaps: list[float]
) -> None:
    m = RtpMunger(1)
    now = 0.0
    prev = None
    for (seq, ts), gap in zip(starts, gaps, strict=False):
        last_ts, last_time = m.last_out_ts, now
        now += gap
        m.switch_source(seq, ts, now)
        p = m.translate(seq, ts, now)
        if prev is not None and last_ts is not None:
            assert p.out_seq == prev + 1
            assert p.out_ts == last_ts + max(1, round((now - last_time) * 90000))
        prev = p.out_seq


# -- munge: decide and apply with the fast-path kernel -------------------------------------


def test_munge_real_vp8_packets_keeps_payload_and_rewrites_header() -> None:
    packets = rtp_payloads("chromium_vp8.hex")
    m = RtpMunger(0xCAFEBABE, {96: 101}, initial_seq=500, initial_ts=9)
    dst = bytearray(1500)
    first = packets[0]
    for pkt in packets:
        n = m.munge(pkt.data, pkt.seq, 0.0, dst)
        assert n == len(pkt.data)
        out = RtpPacket.parse(dst[:n])
        src = RtpPacket.parse(pkt.data)
        assert out.ssrc == 0xCAFEBABE and out.payload_type == 101
        assert out.sequence_number == (500 + pkt.seq - first.seq) % S16
        assert out.timestamp == (9 + pkt.timestamp - first.timestamp) % S32
        assert out.payload == src.payload and out.marker == src.marker
        assert out.extension_data == src.extension_data and out.csrcs == src.csrcs
        assert dst[12:n] == pkt.data[12:]  # everything after the fixed header, untouched
    assert m.forwarded == len(packets)


def test_munge_implicit_switch_by_ssrc() -> None:
    m = RtpMunger(7, initial_seq=0, initial_ts=0)
    dst = bytearray(100)
    assert m.munge(rtp(10, 1000, 0xA), 10, 0.0, dst) == 15
    assert m.munge(rtp(20000, 5, 0xB), 20000, 1.0, dst) == 15
    out = RtpPacket.parse(bytes(dst[:15]))
    assert (out.ssrc, out.sequence_number, out.timestamp) == (7, 1, 90000)
    assert m.switches == 2


def test_munge_unknown_payload_type_is_dropped_without_hole() -> None:
    m = RtpMunger(7, {96: 96}, initial_seq=0)
    dst = bytearray(100)
    assert m.munge(rtp(1, 0, 5), 1, 0.0, dst) == 15
    assert m.munge(rtp(2, 0, 5, pt=13), 2, 0.0, dst) == DROPPED
    assert m.munge(rtp(3, 0, 5), 3, 0.0, dst) == 15
    assert RtpPacket.parse(bytes(dst[:15])).sequence_number == 1
    assert m.munge(rtp(3, 0, 5), 3, 0.0, dst) == DROPPED  # duplicate


def test_munge_failures_leave_no_hole() -> None:
    m = RtpMunger(7, initial_seq=0)
    dst = bytearray(100)
    assert m.munge(b"\x80\x60", 1, 0.0, dst) == -1
    assert m.munge(rtp(1, 0, 5), 1, 0.0, dst) == 15
    bad_padding = bytearray(rtp(2, 0, 5))
    bad_padding[0] |= 0x20
    bad_padding[-1] = 200
    assert m.munge(bytes(bad_padding), 2, 0.0, dst) == -1
    assert m.munge(rtp(3, 0, 5, payload=bytes(200)), 3, 0.0, dst) == -2
    assert m.munge(rtp(4, 0, 5), 4, 0.0, dst) == 15
    assert RtpPacket.parse(bytes(dst[:15])).sequence_number == 1
    assert (m.forwarded, m.skipped) == (2, 2)
