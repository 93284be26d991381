"""Tests for the VP8 munger: picture id, TL0PICIDX and KEYIDX continuity (RFC 7741 §4.2)
across source switches and dropped temporal layers, and payload bytes left untouched."""

from __future__ import annotations

import itertools
import struct

import pytest
from fixture_files import rtp_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath.values import Vp8Translation
from sfu.codecs.vp8 import Vp8Descriptor, parse_vp8
from sfu.core.munger import RtpMunger
from sfu.core.vp8_munger import Vp8Munger, should_forward
from sfu.packet.errors import ParseError
from sfu.packet.rtp import RtpPacket, payload_offset

KEY = b"\x10\x02\x00\x9d\x01\x2a"  # P=0: keyframe payload header
DELTA = b"\x11\x02\x00"  # P=1


def desc(
    pid: int | None = None,
    tl0: int | None = None,
    tid: int | None = None,
    keyidx: int | None = None,
    *,
    wide: bool = True,
    start: bool = True,
    key: bool = False,
) -> Vp8Descriptor:
    """A parsed descriptor, built through the wire format so the fields are consistent."""
    d = Vp8Descriptor(
        extended=True,
        start_of_partition=start,
        picture_id=pid,
        picture_id_15bit=wide and pid is not None,
        tl0picidx=tl0,
        temporal_id=tid,
        keyidx=keyidx,
    )
    return parse_vp8(d.serialize() + (KEY if key else DELTA))


def out(m: Vp8Munger, d: Vp8Descriptor, source: int | None = None) -> Vp8Translation:
    t = m.translate(d, source)
    assert t is not None
    return t


# -- helpers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tid", "max_tid", "expected"),
    [(None, 0, True), (None, -1, True), (0, 0, True), (1, 0, False), (2, 2, True), (0, -1, False)],
)
def test_should_forward(tid: int | None, max_tid: int, expected: bool) -> None:
    assert should_forward(desc(1, 0, tid), max_tid) is expected


def test_payload_offset_matches_fixtures_and_headers() -> None:
    for name in ("chromium_vp8.hex", "aiortc_vp8.hex"):
        for p in rtp_payloads(name):
            assert payload_offset(p.data) == p.start
    pkt = RtpPacket(
        payload_type=96,
        csrcs=(1, 2),
        extension_profile=0xBEDE,
        extension_data=b"\x10\x01\x00\x00",
        payload=b"\x90",
    ).serialize()
    assert payload_offset(pkt) == 12 + 8 + 4 + 4
    assert payload_offset(pkt + b"trailing", len(pkt)) == 28
    for bad in (pkt[:11], pkt[:27], b"\x00" + pkt[1:], pkt[:21]):
        with pytest.raises(ParseError):
            payload_offset(bad)
    with pytest.raises(ParseError):
        payload_offset(pkt, len(pkt) + 1)


# -- continuity ----------------------------------------------------------------------------


def test_first_source_keeps_its_values() -> None:
    m = Vp8Munger()
    t = out(m, desc(1234, 7, 0, 3, key=True))
    assert (t.picture_id is not None and t.picture_id & 0x7FFF, t.tl0picidx, t.keyidx) == (
        1234,
        7,
        3,
    )
    assert m.last_picture_id == t.picture_id and m.last_tl0picidx == 7 and m.last_keyidx == 3
    assert m.switches == 1
    assert "picture_id" in repr(t)


def test_switch_continues_all_three_counters_with_wrap() -> None:
    m = Vp8Munger()
    for pid, tl0 in ((32766, 254), (32767, 255), (0, 0)):  # source A wraps 15 bits and 8 bits
        out(m, desc(pid, tl0, 0, 31), source=0xA)
    a = m.last_picture_id
    assert a is not None and a & 0x7FFF == 0 and m.last_tl0picidx == 0
    # source B: unrelated counters, starts at a keyframe
    t = out(m, desc(9000, 100, 0, 4, key=True), source=0xB)
    assert t.picture_id == a + 1
    assert (t.tl0picidx, t.keyidx) == (1, 0)  # 0 + 1, 31 + 1 (5-bit wrap)
    t2 = out(m, desc(9001, 100, 1, 4), source=0xB)  # TID 1: same TL0PICIDX
    t3 = out(m, desc(9002, 101, 0, 4), source=0xB)
    assert t2.picture_id == a + 2 and t2.tl0picidx == 1
    assert t3.picture_id == a + 3 and t3.tl0picidx == 2
    assert m.switches == 2
    # an explicit switch back to A, without a source key
    m.switch_source()
    t4 = out(m, desc(5, 17, 0, 9, key=True))
    assert (t4.picture_id, t4.tl0picidx, t4.keyidx) == (a + 4, 3, 1)
    assert out(m, desc(6, 17, 2, 9), source=0xA).picture_id == a + 5  # adopts, no switch
    assert m.switches == 3


def test_dropped_temporal_layers_leave_no_picture_id_gap() -> None:
    m = Vp8Munger()
    pattern = [0, 2, 1, 2]
    tl0 = 40
    pids: list[int] = []
    tl0s: list[int] = []
    for i in range(16):
        tid = pattern[i % 4]
        if tid == 0:
            tl0 = (tl0 + 1) & 0xFF
        for _ in range(2):  # two packets per frame
            d = desc(20000 + i, tl0, tid, 0)
            if should_forward(d, 0):
                t = out(m, d)
                assert t.picture_id is not None and t.tl0picidx is not None
                pids.append(t.picture_id)
                tl0s.append(t.tl0picidx)
            else:
                m.drop(d)
    assert pids[::2] == list(range(pids[0], pids[0] + 4))  # consecutive pictures
    assert pids[::2] == pids[1::2]  # both packets of a picture agree
    assert tl0s[::2] == [41, 42, 43, 44]
    assert m.dropped_pictures == 12


def test_upstream_loss_keeps_its_gap() -> None:
    m = Vp8Munger()
    a = out(m, desc(100)).picture_id
    b = out(m, desc(103)).picture_id
    assert a is not None and b == a + 3


def test_late_packets_of_older_pictures() -> None:
    m = Vp8Munger()
    m.switch_source()
    t10 = out(m, desc(10, key=True))
    m.drop(desc(11))
    t12 = out(m, desc(12))
    assert t10.picture_id is not None and t12.picture_id == t10.picture_id + 1
    assert out(m, desc(10, start=False)).picture_id == t10.picture_id
    assert m.translate(desc(11, start=False)) is None  # part of a dropped picture
    assert m.translate(desc(9)) is None  # from before the switch
    assert m.last_picture_id == t12.picture_id  # late packets do not move "last"
    m.drop(desc(12, start=False))  # a forwarded picture cannot be dropped any more
    assert out(m, desc(13)).picture_id == t10.picture_id + 2
    assert m.rejected == 2 and m.dropped_pictures == 1


def test_rest_of_a_dropped_picture_is_rejected() -> None:
    m = Vp8Munger()
    out(m, desc(50))
    m.drop(desc(51))
    m.drop(desc(51, start=False))
    assert m.translate(desc(51, start=False)) is None
    assert m.dropped_pictures == 1


def test_late_older_packet_does_not_move_tl0_or_keyidx() -> None:
    m = Vp8Munger()
    out(m, desc(1, 5, 0, 2))
    out(m, desc(2, 6, 0, 3))
    assert out(m, desc(1, 5, 0, 2, start=False)).tl0picidx == 5
    assert (m.last_tl0picidx, m.last_keyidx) == (6, 3)


def test_seven_bit_picture_ids_wrap() -> None:
    m = Vp8Munger()
    got = []
    for pid in (126, 127, 0, 1):
        t = out(m, desc(pid, wide=False))
        assert t.picture_id is not None
        got.append(t.picture_id)
    assert got == list(range(got[0], got[0] + 4))
    buf = bytearray(desc(0, wide=False).serialize() + DELTA)
    assert m.translate(parse_vp8(buf)) is not None
    assert m.munge(buf, 0, desc=parse_vp8(bytes([0x90, 0x80, 2]) + DELTA))
    assert parse_vp8(buf).picture_id == (got[0] + 4) & 0x7F


def test_descriptors_without_fields() -> None:
    m = Vp8Munger()
    t = out(m, parse_vp8(b"\x10" + KEY))
    assert (t.picture_id, t.tl0picidx, t.keyidx) == (None, None, None)
    m.drop(parse_vp8(b"\x10" + DELTA))  # nothing to account
    assert m.dropped_pictures == 0
    buf = bytearray(b"\x10" + KEY)
    assert m.munge(buf)
    assert buf == b"\x10" + KEY


def test_munge_in_place_and_reject() -> None:
    m = Vp8Munger()
    first = bytearray(desc(300, 9, 0, 1, key=True).serialize() + KEY)
    assert m.munge(first)
    m.switch_source()
    buf = bytearray(b"\x80\x60" + bytes(10) + desc(7000, 200, 0, 20, key=True).serialize() + KEY)
    assert m.munge(buf, 12)
    d = parse_vp8(buf, 12)
    assert (d.picture_id, d.tl0picidx, d.keyidx) == (301, 10, 2)
    assert buf[:12] == b"\x80\x60" + bytes(10) and buf[-len(KEY) :] == KEY
    old = bytearray(desc(6999, 200, 0, 20).serialize() + DELTA)
    before = bytes(old)
    assert not m.munge(old)  # from before the switch: left alone, not to be forwarded
    assert old == before
    with pytest.raises(ParseError):
        m.munge(bytearray(b"\x90"))


# -- properties ----------------------------------------------------------------------------

PATTERNS = {1: [0], 2: [0, 1], 3: [0, 2, 1, 2]}


@st.composite
def sources(draw: st.DrawFn) -> list[tuple[int, int, int, list[int], int, list[int]]]:
    """Per source: (start pid, start tl0, keyidx, TID per frame, max_tid, packets per frame)."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        pattern = PATTERNS[draw(st.sampled_from(sorted(PATTERNS)))]
        n = draw(st.integers(1, 30))
        out.append(
            (
                draw(st.one_of(st.integers(0, 0x7FFF), st.integers(0x7FF0, 0x7FFF))),
                draw(st.integers(0, 255)),
                draw(st.integers(0, 31)),
                [pattern[i % len(pattern)] for i in range(n)],
                draw(st.integers(0, 2)),
                draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(sources())
def test_counters_are_continuous_across_switches_and_temporal_drops(
    srcs: list[tuple[int, int, int, list[int], int, list[int]]],
) -> None:
    m = Vp8Munger()
    prev_pid: int | None = None
    prev_tl0: int | None = None
    prev_key: int | None = None
    for index, (pid0, tl00, key, tids, max_tid, counts) in enumerate(srcs):
        tl0 = tl00
        for frame, (tid, count) in enumerate(zip(tids, counts, strict=True)):
            if tid == 0 and frame:
                tl0 = (tl0 + 1) & 0xFF
            for k in range(count):
                raw = desc(
                    (pid0 + frame) & 0x7FFF, tl0, tid, key, start=k == 0, key=frame == 0 and k == 0
                ).serialize()
                buf = bytearray(raw + (KEY if frame == 0 and k == 0 else DELTA))
                d = parse_vp8(buf)
                if not should_forward(d, max_tid):
                    m.drop(d)
                    continue
                assert m.munge(buf, desc=d, source=index)
                o = parse_vp8(buf)
                assert buf[len(raw) :] == (KEY if frame == 0 and k == 0 else DELTA)
                assert o.size == d.size and o.temporal_id == d.temporal_id
                assert o.picture_id is not None and o.tl0picidx is not None
                assert o.keyidx is not None
                if prev_pid is not None and prev_tl0 is not None and prev_key is not None:
                    new_picture = k == 0
                    assert (o.picture_id - prev_pid) & 0x7FFF == int(new_picture)
                    new_tl0 = new_picture and tid == 0
                    assert (o.tl0picidx - prev_tl0) & 0xFF == int(new_tl0)
                    assert (o.keyidx - prev_key) & 0x1F == int(frame == 0 and k == 0)
                prev_pid, prev_tl0, prev_key = o.picture_id, o.tl0picidx, o.keyidx
    assert m.switches == len(srcs)


# -- real packets through both mungers ------------------------------------------------------


def test_chromium_vp8_through_both_mungers_keeps_payload_bytes() -> None:
    packets = rtp_payloads("chromium_vp8.hex")
    descs = [parse_vp8(p.data, p.start, p.end) for p in packets]
    # A second "layer": the second half again under another SSRC with shifted counters,
    # starting at a keyframe; pictures with pid % 3 == 1 are dropped as if temporal-filtered.
    half = next(i for i, d in enumerate(descs) if i >= len(descs) // 2 and d.is_keyframe)
    stream: list[tuple[bytes, int, int]] = []  # (packet, extended seq, index into packets)
    for i, p in enumerate(packets):
        stream.append((p.data, p.seq, i))
    for i in range(half, len(packets)):
        p = packets[i]
        b = bytearray(p.data)
        struct.pack_into("!HII", b, 2, (p.seq + 12345) & 0xFFFF, p.timestamp + 777, 0xB0B)
        pid = descs[i].picture_id
        assert pid is not None
        Vp8Munger.apply(b, p.start, Vp8Translation(pid + 10000, None, None))
        stream.append((bytes(b), p.seq + 12345, i))
    rtp = RtpMunger(0x5EED, {96: 98})
    vp8 = Vp8Munger()
    dst = bytearray(1500)
    # (part, in seq, in pid, out seq, out pid) of every forwarded packet
    forwarded: list[tuple[int, int, int, int, int]] = []
    dropped_seqs: set[tuple[int, int]] = set()
    dropped_pids: set[tuple[int, int]] = set()
    for data, seq, i in stream:
        part = int(data[8:12] == b"\x00\x00\x0b\x0b")
        start = payload_offset(data)
        d = parse_vp8(data, start, packets[i].end)
        assert d.picture_id is not None
        if d.picture_id % 3 == 1 and not d.is_keyframe:
            rtp.drop(seq)
            vp8.drop(d)
            dropped_seqs.add((part, seq))
            dropped_pids.add((part, d.picture_id))
            continue
        t = vp8.translate(d, source=part)
        assert t is not None
        n = rtp.munge(data, seq, 0.0, dst)
        assert n == len(data)
        vp8.apply(dst, start, t)
        o = RtpPacket.parse(bytes(dst[:n]))
        od = parse_vp8(o.payload)
        src = packets[i]
        # only the RTP header fields and the picture id changed: the VP8 payload is identical
        assert o.payload[od.size :] == src.data[src.start + descs[i].size : src.end]
        assert od.size == descs[i].size and od.is_keyframe == descs[i].is_keyframe
        assert o.ssrc == 0x5EED and o.payload_type == 98 and o.marker == src.marker
        assert od.picture_id is not None
        forwarded.append((part, seq, d.picture_id, o.sequence_number, od.picture_id))
    assert dropped_pids and rtp.switches == 2 and vp8.switches == 2
    for a, c in itertools.pairwise(forwarded):
        if a[0] != c[0]:  # the switch: both counters continue at +1
            assert ((c[3] - a[3]) & 0xFFFF, (c[4] - a[4]) & 0x7FFF) == (1, 1)
            continue
        part = a[0]
        # the upstream distance less what was dropped on purpose in between; upstream gaps stay
        gone_seqs = sum(1 for q in range(a[1] + 1, c[1]) if (part, q) in dropped_seqs)
        assert (c[3] - a[3]) & 0xFFFF == c[1] - a[1] - gone_seqs
        dpid = (c[2] - a[2]) & 0x7FFF
        gone = sum(1 for q in range(1, dpid) if (part, (a[2] + q) & 0x7FFF) in dropped_pids)
        assert (c[4] - a[4]) & 0x7FFF == dpid - gone
