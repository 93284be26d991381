"""Tests for transport-wide congestion control feedback (RTPFB FMT 15)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest
from fixture_files import allocation_bound, peak_allocation
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.rtcp import parse_compound, serialize_compound
from sfu.packet.twcc import (
    STATUS_LARGE_DELTA,
    STATUS_NOT_RECEIVED,
    STATUS_SMALL_DELTA,
    RunLengthChunk,
    StatusVectorChunk,
    TransportFeedback,
    build_transport_feedback,
    chunk_capacity,
    decode_chunk,
    encode_run_length,
    encode_status_vector,
)

H = bytes.fromhex
SSRCS = "00000001 00000002 "  # sender and media source SSRCs

# base seq 1, 3 packets, reference time 16 (x64 ms), fb count 5; one run-length chunk of
# three small deltas 1, 2, 3 ms; 21 octets of content padded with the P bit to 24.
TWCC_RUN = H("afcd0006" + SSRCS + "0001 0003 000010 05 2003 04 08 0c 000003")

# base seq 0xfffe, 4 packets, reference -1, two-bit vector [small, large, lost, small].
TWCC_TWO_BIT = H(
    "8fcd0006" + SSRCS + "fffe" + "0004" + "ffffff" + "00" + "d840" + "10" + "fff0" + "20" + "0000"
)


def _chunks_statuses(fb: TransportFeedback) -> list[int]:
    return [status for _seq, status, _delta in fb.iter_packets()]


def test_run_length_known_bytes() -> None:
    fb = TransportFeedback.parse(TWCC_RUN)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq) == (1, 2, 1)
    assert (fb.status_count, fb.reference_time, fb.fb_count) == (3, 16, 5)
    assert fb.chunks == [0x2003]
    assert decode_chunk(fb.chunks[0]) == RunLengthChunk(STATUS_SMALL_DELTA, 3)
    assert fb.deltas == [4, 8, 12]
    assert fb.padding == H("000003") and fb.trailing == b""
    assert list(fb.iter_packets()) == [(1, 1, 1000), (2, 1, 2000), (3, 1, 3000)]
    assert list(fb.iter_arrivals()) == [(1, 1_025_000), (2, 1_027_000), (3, 1_030_000)]
    assert fb.reference_time_us == 1_024_000
    assert fb.serialize() == TWCC_RUN


def test_two_bit_vector_known_bytes_with_wrap_and_negative_reference() -> None:
    fb = TransportFeedback.parse(TWCC_TWO_BIT)
    assert fb.reference_time == -1
    assert decode_chunk(fb.chunks[0]) == StatusVectorChunk((1, 2, 0, 1, 0, 0, 0), True)
    assert fb.deltas == [0x10, -16, 0x20]
    assert fb.trailing == H("0000") and fb.padding == b""
    assert list(fb.iter_packets()) == [
        (0xFFFE, STATUS_SMALL_DELTA, 4000),
        (0xFFFF, STATUS_LARGE_DELTA, -4000),
        (0, STATUS_NOT_RECEIVED, None),
        (1, STATUS_SMALL_DELTA, 8000),
    ]
    assert fb.serialize() == TWCC_TWO_BIT


def test_one_bit_vector_known_bytes() -> None:
    # 14 statuses alternating received/lost, then a run of 2 lost (status count 16).
    word = 0b1_0_10101010101010
    data = H("afcd0007" + SSRCS + "0000 0010 000000 00") + struct.pack(
        ">HH", word, encode_run_length(0, 2)
    )
    data += bytes(range(1, 8)) + b"\x01"  # 7 deltas, then one octet of RTCP padding
    fb = TransportFeedback.parse(data)
    assert decode_chunk(fb.chunks[0]) == StatusVectorChunk((1, 0) * 7, False)
    assert fb.deltas == [1, 2, 3, 4, 5, 6, 7]
    assert _chunks_statuses(fb) == [1, 0] * 7 + [0, 0]
    assert fb.serialize() == data


def test_chunk_helpers() -> None:
    assert encode_run_length(2, 8191) == 0x5FFF
    assert chunk_capacity(0x5FFF) == 8191
    assert chunk_capacity(0x8000) == 14
    assert chunk_capacity(0xC000) == 7
    assert encode_status_vector([1] * 14, two_bit=False) == 0xBFFF
    assert encode_status_vector([3], two_bit=True) == 0xF000
    for bad in ([2], [0] * 15):
        with pytest.raises(ValueError):
            encode_status_vector(bad, two_bit=False)
    with pytest.raises(ValueError):
        encode_run_length(4, 1)


@given(st.integers(0, 0xFFFF))
def test_every_chunk_word_decodes_and_reencodes(word: int) -> None:
    chunk = decode_chunk(word)
    if isinstance(chunk, RunLengthChunk):
        assert encode_run_length(*chunk) == word
    else:
        assert encode_status_vector(chunk.symbols, chunk.two_bit) == word
        assert len(chunk.symbols) == chunk_capacity(word)


# --------------------------------------------------------------------------------------
# Builder chunk choices (libwebrtc strategy)
# --------------------------------------------------------------------------------------

MS = 1000


def _build(arrivals: Sequence[int | None]) -> TransportFeedback:
    return build_transport_feedback(1, 2, 100, 0, 0, arrivals)


def test_builder_long_run_uses_run_length() -> None:
    fb = _build([i * MS for i in range(100)])
    assert fb.chunks == [encode_run_length(STATUS_SMALL_DELTA, 100)]
    lost = _build([None] * 9000 + [0])
    assert lost.chunks == [
        encode_run_length(STATUS_NOT_RECEIVED, 8191),
        encode_run_length(STATUS_NOT_RECEIVED, 809),
        encode_run_length(STATUS_SMALL_DELTA, 1),
    ]


def test_builder_mixed_small_uses_one_bit_vectors() -> None:
    fb = _build([i * MS if i % 2 == 0 else None for i in range(28)])
    assert fb.chunks == [encode_status_vector([1, 0] * 7, two_bit=False)] * 2
    tail = _build([0, None, 0, None, 0, None, 0, None, 0])  # 9 statuses at the end
    assert tail.chunks == [encode_status_vector([1, 0, 1, 0, 1, 0, 1, 0, 1], two_bit=False)]


def test_builder_large_deltas_use_two_bit_vectors() -> None:
    fb = _build([0, 100 * MS, 100 * MS])
    assert fb.chunks == [encode_status_vector([1, 2, 1], two_bit=True)]
    # Ten mixed small statuses then a large one: first 7 go out two-bit, the rest follow.
    arrivals: list[int | None] = [0 if i % 2 else None for i in range(10)] + [200 * MS]
    assert _build(arrivals).chunks == [
        encode_status_vector([0, 1, 0, 1, 0, 1, 0], two_bit=True),
        encode_status_vector([1, 0, 1, 2], two_bit=True),
    ]


def test_builder_run_then_other_status() -> None:
    fb = _build([i * MS for i in range(8)] + [500 * MS])
    assert fb.chunks == [encode_run_length(1, 8), encode_run_length(2, 1)]
    large = _build([i * 100 * MS for i in range(1, 8)] + [700 * MS])
    assert large.chunks == [encode_run_length(2, 7), encode_run_length(1, 1)]


def test_builder_pads_like_libwebrtc_and_rounds() -> None:
    fb = build_transport_feedback(1, 2, 1, 5, 1_024_000, [1_025_100, 1_027_000, 1_029_876])
    assert fb.serialize() == TWCC_RUN
    assert fb.reference_time == 16


def test_builder_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        _build([0, 9_000_000])
    with pytest.raises(ValueError):
        _build([None] * 0x10000)
    with pytest.raises(ValueError):
        build_transport_feedback(1, 2, 0x10000, 0, 0, [])


def test_empty_feedback_round_trips() -> None:
    fb = _build([])
    assert fb.chunks == [] and fb.status_count == 0
    assert TransportFeedback.parse(fb.serialize()) == fb
    assert list(fb.iter_packets()) == []


# --------------------------------------------------------------------------------------
# Builder properties
# --------------------------------------------------------------------------------------

# Mostly small steps, with occasional large or negative ones (still within ±8 s).
steps = st.one_of(
    st.integers(0, 70_000),
    st.integers(-8_000_000, 8_000_000),
    st.integers(-5_000, 0),
)


@st.composite
def arrival_lists(draw: st.DrawFn) -> tuple[int, list[int | None]]:
    reference = draw(st.integers(0, ((1 << 23) - 1) * 64_000))
    now = reference + draw(st.integers(0, 64_000))
    arrivals: list[int | None] = []
    for _ in range(draw(st.integers(0, 120))):
        if draw(st.integers(0, 3)) == 0:
            run = draw(st.sampled_from([1, 2, 20, 300]))
            arrivals.extend([None] * run)
            continue
        now += draw(steps)
        arrivals.append(now)
    return reference, arrivals


@settings(max_examples=300)
@given(arrival_lists(), st.integers(0, 0xFFFF), st.integers(0, 0xFF))
def test_builder_iter_round_trip(
    case: tuple[int, list[int | None]], base_seq: int, fb_count: int
) -> None:
    reference, arrivals = case
    fb = build_transport_feedback(7, 8, base_seq, fb_count, reference, arrivals)
    data = fb.serialize()
    assert len(data) % 4 == 0
    parsed = TransportFeedback.parse(data)
    assert parsed == fb
    assert parse_compound(data) == [fb]
    got = list(parsed.iter_arrivals())
    assert [seq for seq, _ in got] == [(base_seq + i) & 0xFFFF for i in range(len(arrivals))]
    for (_, at), expected in zip(got, arrivals, strict=True):
        if expected is None:
            assert at is None
        else:
            assert at is not None
            assert abs(at - expected) <= 125  # quantized to 250 µs, no drift


@settings(max_examples=200)
@given(arrival_lists())
def test_builder_uses_two_bit_vectors_only_for_large_deltas(
    case: tuple[int, list[int | None]],
) -> None:
    reference, arrivals = case
    fb = build_transport_feedback(7, 8, 0, 0, reference, arrivals)
    statuses = _chunks_statuses(fb)
    assert len(fb.chunks) <= len(statuses) // 7 + 1  # every chunk but the last covers >= 7
    covered = 0
    for word in fb.chunks:
        chunk = decode_chunk(word)
        n = min(chunk_capacity(word), len(statuses) - covered)
        window = statuses[covered : covered + n]
        if isinstance(chunk, StatusVectorChunk) and chunk.two_bit:
            # Two-bit vectors appear only when a large delta is near (libwebrtc rule).
            assert STATUS_LARGE_DELTA in statuses[covered : covered + 14]
        if isinstance(chunk, RunLengthChunk):
            assert set(window) <= {chunk.status}
        covered += n
    assert covered == len(statuses)


# --------------------------------------------------------------------------------------
# Arbitrary valid chunk lists (every chunk type, spare symbols, trailing zeros)
# --------------------------------------------------------------------------------------

chunk_words = st.one_of(
    st.builds(encode_run_length, st.integers(0, 2), st.integers(0, 40)),
    st.builds(encode_run_length, st.sampled_from([0, 1, 2]), st.just(8191)),
    st.integers(0x8000, 0xBFFF),  # one-bit vectors
    st.integers(0xC000, 0xFFFF),  # two-bit vectors (reserved symbols filtered below)
)


@st.composite
def raw_feedbacks(draw: st.DrawFn) -> TransportFeedback:
    chunks = draw(st.lists(chunk_words, min_size=1, max_size=6))
    before_last = sum(chunk_capacity(w) for w in chunks[:-1])
    total = before_last + chunk_capacity(chunks[-1])
    assume(total > before_last and total <= 0xFFFF)
    status_count = draw(st.integers(before_last + 1, total))
    fb = TransportFeedback(
        sender_ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        media_ssrc=draw(st.integers(0, 0xFFFFFFFF)),
        base_seq=draw(st.integers(0, 0xFFFF)),
        status_count=status_count,
        reference_time=draw(st.integers(-(1 << 23), (1 << 23) - 1)),
        fb_count=draw(st.integers(0, 0xFF)),
        chunks=chunks,
    )
    statuses = _statuses_only(fb)
    assume(3 not in statuses)
    assume(len(statuses) - statuses.count(0) <= 600)
    fb.deltas = [
        draw(st.integers(0, 255) if s == STATUS_SMALL_DELTA else st.integers(-32768, 32767))
        for s in statuses
        if s
    ]
    content = 16 + 2 * len(chunks) + sum(s for s in statuses if s)
    gap = -content % 4
    if draw(st.booleans()):
        fb.trailing = bytes(gap)
    elif gap:
        fb.padding = bytes(gap - 1) + bytes([gap])
    return fb


def _statuses_only(fb: TransportFeedback) -> list[int]:
    """Statuses decoded independently of the module under test (via decode_chunk)."""
    out: list[int] = []
    remaining = fb.status_count
    for word in fb.chunks:
        chunk = decode_chunk(word)
        if isinstance(chunk, RunLengthChunk):
            symbols: tuple[int, ...] = (chunk.status,) * min(chunk.run_length, remaining)
        else:
            symbols = chunk.symbols[:remaining]
        out.extend(symbols)
        remaining -= len(symbols)
    return out


@settings(max_examples=300)
@given(raw_feedbacks())
def test_raw_feedback_round_trips(fb: TransportFeedback) -> None:
    data = fb.serialize()
    parsed = TransportFeedback.parse(data)
    assert parsed == fb
    assert parsed.serialize() == data
    packets = list(parsed.iter_packets())
    assert len(packets) == fb.status_count
    received = [delta for _, status, delta in packets if status]
    assert received == [d * 250 for d in fb.deltas]


@settings(max_examples=400)
@given(raw_feedbacks(), st.data())
def test_mutated_feedback_parses_or_rejects(fb: TransportFeedback, data: st.DataObject) -> None:
    wire = bytearray(fb.serialize())
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        at = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if kind == "flip" and wire:
            wire[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del wire[at:]
        elif kind == "insert":
            wire[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del wire[at : at + data.draw(st.integers(1, 4))]
    try:
        packets = parse_compound(bytes(wire))
    except ParseError:
        return
    assert serialize_compound(packets) == bytes(wire)


@settings(max_examples=300)
@given(st.binary(max_size=80), st.booleans())
def test_random_twcc_bodies_parse_or_reject(body: bytes, padded: bool) -> None:
    body = body[: len(body) - len(body) % 4]
    data = bytes((0xAF if padded else 0x8F, 205)) + struct.pack(">H", len(body) // 4) + body
    try:
        packets = parse_compound(data)
    except ParseError:
        return
    assert serialize_compound(packets) == data


# --------------------------------------------------------------------------------------
# Malformed input and serializer validation
# --------------------------------------------------------------------------------------

FIXED = SSRCS + "0000 "  # then status count, reference time and fb count


@pytest.mark.parametrize(
    "data",
    [
        H("8fcd0003" + SSRCS + "00000001"),  # fixed fields truncated
        H("8fcd0004" + FIXED + "0001 000000 00 "),  # chunks missing
        H("8fcd0005" + FIXED + "0003 000000 00 2003 0102"),  # third small delta missing
        H("8fcd0005" + FIXED + "0002 000000 00 4002 0001"),  # large delta truncated
        H("8fcd0005" + FIXED + "0001 000000 00 6001 0000"),  # reserved status
        H("8fcd0005" + FIXED + "0001 000000 00 f000 0000"),  # reserved in a vector
        H("8fcd0005" + FIXED + "ffff 000000 00 3fff 3fff"),  # run lengths never reach count
    ],
)
def test_malformed_feedback_raises_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        TransportFeedback.parse(data)
    with pytest.raises(ParseError):
        parse_compound(data)


def test_reserved_symbols_beyond_status_count_are_kept() -> None:
    # Two-bit vector whose unused symbols are 3: ignored, but kept for the round trip.
    data = H("8fcd0005" + FIXED + "0001 000000 00 dfff 0a 00")
    fb = TransportFeedback.parse(data)
    assert list(fb.iter_packets()) == [(0, 1, 2500)]
    assert fb.trailing == H("00")
    assert fb.serialize() == data


def test_parse_checks_type_and_format() -> None:
    with pytest.raises(ParseError):
        TransportFeedback.parse(H("81cd0002" + SSRCS))  # NACK, not TWCC
    with pytest.raises(ParseError):
        TransportFeedback.parse(TWCC_RUN + b"\x00\x00\x00\x00")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"chunks": [0x2003, 0x2001]}, "beyond status_count"),
        ({"chunks": [0x2002]}, "do not cover"),
        ({"deltas": [4, 8]}, "fewer deltas"),
        ({"deltas": [4, 8, 12, 1]}, "more deltas"),
        ({"deltas": [4, 8, 256]}, "0..255"),
        ({"chunks": [0x6003]}, "reserved"),
        ({"chunks": [0x4003], "deltas": [0, 0, 40000]}, "signed 16"),
        ({"reference_time": 1 << 23}, "24 bits"),
        ({"fb_count": 256}, "8 bits"),
        ({"base_seq": -1}, "16 bits"),
        ({"chunks": [0x12003]}, "16 bits"),
        ({"padding": b""}, "multiple of 4"),
    ],
)
def test_serialize_validates(changes: dict[str, object], needle: str) -> None:
    fb = TransportFeedback.parse(TWCC_RUN)
    for name, value in changes.items():
        setattr(fb, name, value)
    with pytest.raises(ValueError, match=needle):
        fb.serialize()


def test_iter_packets_rejects_inconsistent_objects() -> None:
    fb = TransportFeedback.parse(TWCC_RUN)
    fb.deltas = [1]
    with pytest.raises(ValueError):
        list(fb.iter_packets())
    fb.chunks = [0x6003]
    with pytest.raises(ValueError):
        list(fb.iter_packets())


# --------------------------------------------------------------------------------------
# Bounded allocation
# --------------------------------------------------------------------------------------


def _header(body: bytes) -> bytes:
    return H("8fcd") + struct.pack(">H", len(body) // 4) + body


ADVERSARIAL = [
    # 65535 packets claimed via 8 lost runs in 16 octets: nothing may be expanded.
    _header(bytes.fromhex(FIXED + "ffff 000000 00") + H("1fff") * 8 + H("1fff0000")),
    # A run of 8191 small deltas claimed with only a few octets present.
    _header(bytes.fromhex(FIXED + "1fff 000000 00") + H("3fff") + bytes(6)),
    # A run of 8191 large deltas with 1460 octets present.
    _header(bytes.fromhex(FIXED + "1fff 000000 00") + H("5fff") + bytes(1462)),
    # Status count beyond what 740 one-bit vectors cover: runs out of chunks.
    _header(bytes.fromhex(FIXED + "ffff 000000 00") + H("bfff") * 740),
    # Valid: 97 all-received one-bit vectors (1358 statuses) and their 1358 small deltas.
    _header(bytes.fromhex(FIXED + "054e 000000 00") + H("bfff") * 97 + bytes(1358)),
    # 256 two-bit vectors of large deltas need 3584 delta octets; only 1000 are present.
    _header(bytes.fromhex(FIXED + "0700 000000 00") + H("eaaa") * 256 + bytes(1000)),
    # Valid maximal: 1400 small deltas in one run.
    _header(bytes.fromhex(FIXED + "0578 000000 00") + H("2578") + bytes(1402)),
    # Valid maximal: 700 large deltas in one run.
    _header(bytes.fromhex(FIXED + "02bc 000000 00") + H("42bc") + bytes(1402)),
]


@pytest.mark.parametrize("data", ADVERSARIAL)
def test_parse_allocation_is_bounded(data: bytes) -> None:
    assert peak_allocation(parse_compound, data) < allocation_bound(data)


def test_huge_claimed_count_is_lazy() -> None:
    fb = TransportFeedback.parse(ADVERSARIAL[0])
    assert fb.status_count == 0xFFFF and fb.deltas == []
    assert sum(1 for _ in fb.iter_packets()) == 0xFFFF
    assert len(TransportFeedback.parse(ADVERSARIAL[4]).deltas) == 97 * 14
    assert TransportFeedback.parse(ADVERSARIAL[6]).deltas == [0] * 1400
    assert TransportFeedback.parse(ADVERSARIAL[7]).deltas == [0] * 700


@settings(max_examples=300)
@given(raw_feedbacks(), st.integers(-(1 << 40), 1 << 40))
def test_received_is_what_iter_arrivals_yields(fb: TransportFeedback, offset: int) -> None:
    seqs, times, lost = fb.received(offset)
    arrivals = list(fb.iter_arrivals())
    assert list(seqs) == [seq for seq, at in arrivals if at is not None]
    assert list(times) == [at + offset for _, at in arrivals if at is not None]
    assert lost == sum(1 for _, at in arrivals if at is None)


def test_received_counts_a_claimed_lost_run() -> None:
    # 65535 packets claimed lost in 8 run-length chunks (counted per run, see the docstring).
    fb = TransportFeedback.parse(ADVERSARIAL[0])
    seqs, times, lost = fb.received()
    assert (len(seqs), len(times), lost) == (0, 0, 0xFFFF)


def test_received_rejects_inconsistent_objects() -> None:
    fb = TransportFeedback.parse(TWCC_RUN)
    fb.deltas = [1]
    with pytest.raises(ValueError):
        fb.received()
    fb.chunks = [0x6003]
    with pytest.raises(ValueError):
        fb.received()
