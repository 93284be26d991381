"""Tests for RTCP compound parsing and the SR/RR/SDES/BYE/NACK/PLI/FIR/REMB packet types."""

from __future__ import annotations

import struct

import pytest
from fixture_files import allocation_bound, peak_allocation
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.packet.errors import ParseError
from sfu.packet.rtcp import (
    Bye,
    Fir,
    FirEntry,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    RtcpPacket,
    SdesChunk,
    SdesItem,
    SenderReport,
    SourceDescription,
    UnknownRtcpPacket,
    build_transport_feedback,
    nack_pairs_from_seqs,
    parse_compound,
    seqs_from_nack_pairs,
    serialize_compound,
)

H = bytes.fromhex

# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def paddings(draw: st.DrawFn, align: int = 0) -> bytes:
    """RTCP padding (count octet last) that keeps a body of ``align`` (mod 4) octets aligned."""
    need = -align % 4
    size = draw(st.sampled_from([need, need + 4, need + 8]))
    if size == 0:
        return b""
    return draw(st.binary(min_size=size - 1, max_size=size - 1)) + bytes([size])


aligned_bytes = st.integers(0, 4).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))

report_blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=u8,
    cumulative_lost=st.integers(-(1 << 23), (1 << 23) - 1),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
senders = st.builds(
    SenderReport,
    ssrc=u32,
    ntp_timestamp=st.integers(0, (1 << 64) - 1),
    rtp_timestamp=u32,
    packet_count=u32,
    octet_count=u32,
    reports=st.lists(report_blocks, max_size=4),
    extension=aligned_bytes,
    padding=paddings(),
)
receivers = st.builds(
    ReceiverReport,
    ssrc=u32,
    reports=st.lists(report_blocks, max_size=4),
    extension=aligned_bytes,
    padding=paddings(),
)
sdes_items = st.builds(SdesItem, item_type=st.integers(1, 255), value=st.binary(max_size=40))
sdes = st.builds(
    SourceDescription,
    chunks=st.lists(
        st.builds(SdesChunk, ssrc=u32, items=st.lists(sdes_items, max_size=3)), max_size=4
    ),
    padding=paddings(),
)
byes = st.builds(
    Bye,
    ssrcs=st.lists(u32, max_size=5),
    reason=st.none() | st.binary(max_size=40),
    padding=paddings(),
)
nacks = st.builds(
    Nack, sender_ssrc=u32, media_ssrc=u32, pairs=st.lists(st.tuples(u16, u16), max_size=6)
)
plis = st.builds(Pli, sender_ssrc=u32, media_ssrc=u32, padding=paddings())
firs = st.builds(
    Fir,
    sender_ssrc=u32,
    media_ssrc=u32,
    entries=st.lists(
        st.builds(FirEntry, ssrc=u32, seq_nr=u8, reserved=st.integers(0, 0xFFFFFF)), max_size=4
    ),
    padding=paddings(),
)
rembs = st.builds(
    Remb,
    sender_ssrc=u32,
    bitrate_exp=st.integers(0, 63),
    bitrate_mantissa=st.integers(0, (1 << 18) - 1),
    ssrcs=st.lists(u32, max_size=5),
    media_ssrc=u32,
    padding=paddings(),
)
unknowns = st.builds(
    UnknownRtcpPacket,
    packet_type=st.sampled_from([204, 207, 208, 192, 223, 255]),
    count=st.integers(0, 31),
    body=aligned_bytes,
    padding=paddings(),
)
twccs = st.builds(
    build_transport_feedback,
    sender_ssrc=u32,
    media_ssrc=u32,
    base_seq=u16,
    fb_count=u8,
    reference_time_us=st.integers(10**9 - 200_000, 10**9 + 100_000),
    arrivals=st.lists(st.none() | st.integers(10**9, 10**9 + 300_000), max_size=30),
)
any_packet: st.SearchStrategy[RtcpPacket] = st.one_of(
    senders, receivers, sdes, byes, nacks, plis, firs, rembs, unknowns, twccs
)
compounds = st.lists(any_packet, min_size=1, max_size=5)


def parse_or_reject(data: bytes) -> None:
    """Parsing raises only ParseError, and whatever parses must round-trip byte-exactly."""
    try:
        packets = parse_compound(data)
    except ParseError:
        return
    assert serialize_compound(packets) == data


# --------------------------------------------------------------------------------------
# Known byte layouts written out from the RFCs
# --------------------------------------------------------------------------------------

RR_ONE_BLOCK = H(
    "81c90007"  # V=2 RC=1 PT=201 length=7
    "12345678"  # SSRC of sender
    "aabbccdd"  # SSRC_1
    "10fffffe"  # fraction lost 16/256, cumulative lost -2
    "00010005"  # extended highest seq
    "00000020"  # jitter
    "11223344"  # LSR
    "00010000"  # DLSR (1 s)
)

SR_NO_BLOCKS = H("80c80006 00000001 e3a1b2c3 d4e5f607 00015f90 0000000a 000004d2")

SDES_CNAME = H("81ca0003 01020304 01 04" + b"abcd".hex() + "0000")  # CNAME "abcd", 2 nulls
BYE_REASON = H("81cb0002 01020304 03" + b"bye".hex())  # reason "bye" fills the word
NACK_100 = H("81cd0003 00000001 00000002 00640005")
PLI = H("81ce0002 00000001 00000002")
FIR = H("84ce0004 00000001 00000000 0badbeef 05000000")
# One SSRC, exponent 2, mantissa 250000: 1 Mbit/s.
REMB_1M = H("8fce0005 00000001 00000000" + b"REMB".hex() + "01 0bd090 0badbeef")


def test_receiver_report_known_bytes() -> None:
    (rr,) = parse_compound(RR_ONE_BLOCK)
    assert rr == ReceiverReport(
        0x12345678,
        [ReportBlock(0xAABBCCDD, 16, -2, 0x10005, 0x20, 0x11223344, 0x10000)],
    )
    assert rr.serialize() == RR_ONE_BLOCK
    assert ReceiverReport.parse(RR_ONE_BLOCK) == rr


def test_sender_report_known_bytes() -> None:
    sr = SenderReport.parse(SR_NO_BLOCKS)
    assert sr.ssrc == 1
    assert sr.ntp_timestamp == 0xE3A1B2C3D4E5F607
    assert (sr.rtp_timestamp, sr.packet_count, sr.octet_count) == (90000, 10, 1234)
    assert sr.reports == [] and sr.extension == b"" and sr.padding == b""
    assert sr.serialize() == SR_NO_BLOCKS


def test_sender_report_with_blocks_and_extension() -> None:
    block = ReportBlock(7, 255, (1 << 23) - 1, 0xFFFFFFFF, 1, 2, 3)
    sr = SenderReport(9, 1 << 63, 5, 6, 7, [block, block], extension=b"\x01\x02\x03\x04")
    data = sr.serialize()
    assert data[0] == 0x82 and data[1] == 200
    assert struct.unpack_from(">H", data, 2)[0] == (len(data) // 4) - 1
    assert SenderReport.parse(data) == sr


def test_sdes_known_bytes() -> None:
    (packet,) = parse_compound(SDES_CNAME)
    assert isinstance(packet, SourceDescription)
    assert packet.chunks == [SdesChunk(0x01020304, [SdesItem(1, b"abcd")])]
    assert packet.chunks[0].cname == "abcd"
    assert packet.serialize() == SDES_CNAME


def test_sdes_chunk_needing_four_nulls() -> None:
    # ssrc(4) + item(2+2) = 8 octets: the terminator needs a whole extra word (§6.5).
    packet = SourceDescription([SdesChunk(5, [SdesItem(1, b"xy")]), SdesChunk(6)])
    data = packet.serialize()
    assert data[4:] == H("00000005 01027879 00000000 00000006 00000000")
    assert SourceDescription.parse(data) == packet
    assert packet.chunks[1].cname is None


def test_sdes_invalid_utf8_cname_is_lenient() -> None:
    chunk = SdesChunk(1, [SdesItem(1, b"\xff\xfe")])
    assert chunk.cname == "\ufffd\ufffd"


def test_bye_known_bytes() -> None:
    bye = Bye.parse(BYE_REASON)
    assert bye == Bye([0x01020304], b"bye")
    assert bye.serialize() == BYE_REASON
    assert Bye([1, 2]).serialize() == H("82cb0002 00000001 00000002")
    assert Bye.parse(Bye([1], b"").serialize()) == Bye([1], b"")


def test_nack_known_bytes() -> None:
    nack = Nack.parse(NACK_100)
    assert nack == Nack(1, 2, [(100, 5)])
    assert nack.lost_seqs() == [100, 101, 103]
    assert Nack.from_seqs(1, 2, [103, 100, 101]).serialize() == NACK_100


def test_pli_known_bytes() -> None:
    assert Pli.parse(PLI) == Pli(1, 2)
    assert Pli(1, 2).serialize() == PLI


def test_fir_known_bytes() -> None:
    fir = Fir.parse(FIR)
    assert fir == Fir(1, 0, [FirEntry(0x0BADBEEF, 5)])
    assert fir.serialize() == FIR


def test_remb_known_bytes() -> None:
    remb = Remb.parse(REMB_1M)
    assert (remb.bitrate_exp, remb.bitrate_mantissa, remb.ssrcs) == (2, 250_000, [0x0BADBEEF])
    assert remb.bitrate == 1_000_000
    assert Remb.from_bitrate(1, 1_000_000, [0x0BADBEEF]).serialize() == REMB_1M


@given(st.integers(0, 1 << 80))
def test_remb_from_bitrate_rounds_down_minimally(bps: int) -> None:
    remb = Remb.from_bitrate(1, bps, [])
    assert remb.bitrate <= bps < remb.bitrate + (1 << remb.bitrate_exp)
    assert remb.bitrate_mantissa < 1 << 18
    assert remb.bitrate_exp == 0 or remb.bitrate_mantissa >= 1 << 17
    assert Remb.parse(remb.serialize()) == remb


def test_remb_rejects_impossible_bitrates() -> None:
    with pytest.raises(ValueError):
        Remb.from_bitrate(1, -1, [])
    with pytest.raises(ValueError):
        Remb.from_bitrate(1, 1 << 90, [])


# --------------------------------------------------------------------------------------
# Compounds
# --------------------------------------------------------------------------------------


def test_compound_with_unknown_types_in_the_middle() -> None:
    app = H("80cc0002 00000001") + b"name"
    xr = H("80cf0003 00000001 04000002 00000000")
    weird = H("9fd00000")  # PT 208, count 31, empty body
    afb_not_remb = H("8fce0003 00000001 00000000") + b"ABCD"
    tmmbr = H("83cd0004 00000001 00000000 00000002 12345678")
    data = RR_ONE_BLOCK + app + xr + weird + afb_not_remb + tmmbr + SDES_CNAME + BYE_REASON
    packets = parse_compound(data)
    kinds = [type(p).__name__ for p in packets]
    assert kinds == [
        "ReceiverReport",
        "UnknownRtcpPacket",
        "UnknownRtcpPacket",
        "UnknownRtcpPacket",
        "UnknownRtcpPacket",
        "UnknownRtcpPacket",
        "SourceDescription",
        "Bye",
    ]
    unknown = packets[1]
    assert isinstance(unknown, UnknownRtcpPacket)
    assert (unknown.packet_type, unknown.count, unknown.body) == (204, 0, app[4:])
    assert [p.packet_type for p in packets[1:6] if isinstance(p, UnknownRtcpPacket)] == [
        204,
        207,
        208,
        206,
        205,
    ]
    assert serialize_compound(packets) == data


def test_reduced_size_compound_starting_with_feedback() -> None:
    packets = parse_compound(PLI + NACK_100 + REMB_1M + FIR)
    assert [type(p) for p in packets] == [Pli, Nack, Remb, Fir]
    assert parse_compound(PLI) == [Pli(1, 2)]


def test_padding_on_last_packet() -> None:
    padded = H("a0c90002 00000007 00000004")  # RR, P=1, 4 octets of padding
    packets = parse_compound(SR_NO_BLOCKS + padded)
    rr = packets[1]
    assert rr == ReceiverReport(7, padding=H("00000004"))
    assert serialize_compound(packets) == SR_NO_BLOCKS + padded


def test_padding_on_inner_packet_is_accepted() -> None:
    # libwebrtc pads every transport-cc packet and may batch several per datagram.
    padded_pli = H("a1ce0003 00000001 00000002 00000004")
    packets = parse_compound(padded_pli + PLI)
    assert packets == [Pli(1, 2, H("00000004")), Pli(1, 2)]
    assert serialize_compound(packets) == padded_pli + PLI


@pytest.mark.parametrize(
    "data",
    [
        b"",
        H("81c9"),  # truncated header
        H("41c90001 00000001"),  # version 1
        H("c1c90001 00000001"),  # version 3
        H("80c90002 00000001"),  # length beyond datagram
        H("80c90001 00000001 00"),  # trailing octet after last packet
        H("a0c90000"),  # padding bit on empty packet
        H("a0c90001 00000000"),  # padding count zero
        H("a0c90001 00000009"),  # padding count beyond packet
        H("80c90000"),  # RR without SSRC
        H("81c90001 00000001"),  # RR claims one block, has none
        H("80c80001 00000001"),  # SR without sender info
        H("81ca0001 00000001"),  # SDES chunk not terminated
        H("81ca0002 00000001 01050000"),  # SDES item longer than packet
        H("81ca0002 00000001 00000100"),  # SDES non-zero terminator padding
        H("81ca0003 00000001 00000000 00000000"),  # SDES data after last chunk
        H("82cb0001 00000001"),  # BYE count beyond packet
        H("81cb0002 00000001 05616263"),  # BYE reason longer than packet
        H("81cb0003 00000001 01610000 00000000"),  # BYE junk after reason
        H("81cb0002 00000001 01610100"),  # BYE non-zero reason padding
        H("81cd0001 00000001"),  # NACK shorter than the two SSRCs
        H("81ce0003 00000001 00000002 00000000"),  # PLI with FCI
        H("84ce0003 00000001 00000000 00000001"),  # FIR with half an entry
        H("8fce0005 00000001 00000000") + b"REMB" + H("00000000 00000001"),
        H("8fce0005 00000001 00000000") + b"REMB" + H("02000000 00000001"),
        H("8fce0003 00000001 00000000") + b"REMB",  # REMB without bitrate word
    ],
)
def test_malformed_inputs_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        parse_compound(data)


def test_class_parse_checks_type_and_extent() -> None:
    with pytest.raises(ParseError):
        SenderReport.parse(RR_ONE_BLOCK)
    with pytest.raises(ParseError):
        ReceiverReport.parse(RR_ONE_BLOCK + PLI)
    with pytest.raises(ParseError):
        Nack.parse(H("83cd0002 00000001 00000002"))  # FMT 3 is not NACK
    with pytest.raises(ParseError):
        Pli.parse(FIR)
    with pytest.raises(ParseError):
        Fir.parse(PLI)
    with pytest.raises(ParseError):
        Remb.parse(H("8fce0003 00000001 00000000") + b"ABCD")
    assert UnknownRtcpPacket.parse(PLI) == UnknownRtcpPacket(206, 1, PLI[4:])
    assert ReceiverReport.parse(bytearray(RR_ONE_BLOCK)).ssrc == 0x12345678
    assert parse_compound(memoryview(PLI)) == [Pli(1, 2)]


@pytest.mark.parametrize(
    ("packet", "needle"),
    [
        (ReceiverReport(1 << 32), "ssrc"),
        (ReceiverReport(1, [ReportBlock(1, 256, 0, 0, 0, 0, 0)]), "fraction_lost"),
        (ReceiverReport(1, [ReportBlock(1, 0, 1 << 23, 0, 0, 0, 0)]), "cumulative_lost"),
        (ReceiverReport(1, [ReportBlock(1, 0, 0, 0, 0, 0, 0)] * 32), "31"),
        (ReceiverReport(1, extension=b"\x00"), "multiple of 4"),
        (ReceiverReport(1, padding=b"\x00\x00\x00\x03"), "padding"),
        (SenderReport(1, 1 << 64, 0, 0, 0), "ntp"),
        (SourceDescription([SdesChunk(1, [SdesItem(0, b"")])]), "SDES"),
        (SourceDescription([SdesChunk(1, [SdesItem(1, bytes(256))])]), "SDES"),
        (Bye([1], bytes(256)), "reason"),
        (Nack(1, 2, [(1 << 16, 0)]), "16 bits"),
        (Fir(1, 0, [FirEntry(1, 256)]), "FIR"),
        (Remb(1, 64, 0), "REMB"),
        (Remb(1, 0, 0, [0] * 256), "255"),
        (UnknownRtcpPacket(204, 32), "5 bits"),
        (UnknownRtcpPacket(256, 0), "packet type"),
    ],
)
def test_serialize_rejects_unrepresentable_values(packet: RtcpPacket, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        packet.serialize()


# --------------------------------------------------------------------------------------
# NACK helpers
# --------------------------------------------------------------------------------------


def test_nack_pairs_across_wrap() -> None:
    # 14 is PID + 16 (the last BLP bit); 15 is PID + 17 and needs a new pair.
    pairs = nack_pairs_from_seqs([0, 65535, 65534, 14, 15])
    assert pairs == [(65534, 0b1 | 0b10 | (1 << 15)), (15, 0)]
    assert seqs_from_nack_pairs(pairs) == [65534, 65535, 0, 14, 15]
    assert nack_pairs_from_seqs([]) == []
    assert nack_pairs_from_seqs([7, 7, 7 + 65536]) == [(7, 0)]


def test_nack_expansion_dedupes_overlapping_pairs() -> None:
    assert seqs_from_nack_pairs([(10, 0b11), (11, 0b1)]) == [10, 11, 12]


@given(u16, st.sets(st.integers(0, 2000), max_size=200))
def test_nack_pairs_round_trip_within_window(start: int, offsets: set[int]) -> None:
    seqs = [(start + o) & 0xFFFF for o in offsets]
    expected = [(start + o) & 0xFFFF for o in sorted(offsets)]
    pairs = nack_pairs_from_seqs(seqs)
    assert seqs_from_nack_pairs(pairs) == expected
    assert len(pairs) <= len(seqs)
    assert all(0 <= pid <= 0xFFFF and 0 <= blp <= 0xFFFF for pid, blp in pairs)
    nack = Nack.from_seqs(1, 2, seqs)
    assert Nack.parse(nack.serialize()).lost_seqs() == expected


@given(st.sets(st.integers(0, 0xFFFF), max_size=300))
def test_nack_pairs_preserve_any_set(seqs: set[int]) -> None:
    assert set(seqs_from_nack_pairs(nack_pairs_from_seqs(seqs))) == seqs


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@settings(max_examples=300)
@given(compounds)
def test_built_compounds_round_trip(packets: list[RtcpPacket]) -> None:
    data = serialize_compound(packets)
    assert len(data) % 4 == 0
    assert parse_compound(data) == packets
    for packet in packets:
        assert type(packet).parse(packet.serialize()) == packet


@settings(max_examples=400)
@given(st.binary(max_size=200))
def test_random_bytes_parse_or_reject(data: bytes) -> None:
    parse_or_reject(data)


@settings(max_examples=200)
@given(st.integers(0, 255), st.integers(0, 31), st.binary(max_size=120))
def test_random_bodies_with_valid_headers(pt_low: int, count: int, body: bytes) -> None:
    # Valid framing with random bodies reaches every type's body parser.
    body = body[: len(body) - len(body) % 4]
    for pt in (200, 201, 202, 203, 204, 205, 206, pt_low):
        for bit in (0, 0x20):
            data = bytes((0x80 | bit | count, pt)) + struct.pack(">H", len(body) // 4) + body
            parse_or_reject(data)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """Apply 1-3 random bit flips, truncations, insertions or deletions."""
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "byte"]))
        if not data:
            data = draw(st.binary(min_size=1, max_size=4))
            continue
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data = data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1 :]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        elif kind == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 4)) :]
        else:
            data = data[:at] + bytes([draw(u8)]) + data[at + 1 :]
    return data


@settings(max_examples=400)
@given(st.data())
def test_mutated_compounds_parse_or_reject(data: st.DataObject) -> None:
    packets = data.draw(compounds)
    mutated = data.draw(mutations(serialize_compound(packets)))
    parse_or_reject(mutated)


# --------------------------------------------------------------------------------------
# Bounded allocation
# --------------------------------------------------------------------------------------


def _adversarial_inputs() -> list[bytes]:
    words = 375  # a 1500-octet datagram
    n_items = (4 * words - 8) // 2  # empty SDES items filling one chunk
    sdes_items = (
        H("81ca") + struct.pack(">H", words) + H("00000001") + b"\x01\x00" * n_items + bytes(4)
    )
    remb_255 = H("8fce0103") + bytes(8) + b"REMB" + H("ff000000") + bytes(4 * 255)
    return [
        H("9fc90001 00000001"),  # RR claims 31 blocks, has none
        H("9fc80006") + bytes(24),  # SR claims 31 blocks, has none
        H("9fca0000"),  # SDES claims 31 chunks, has none
        H("9fcb0000"),  # BYE claims 31 SSRCs, has none
        H("80c900ff") + bytes(1020),  # long profile extension
        H("81cd") + struct.pack(">H", words) + bytes(4 * words),  # maximal NACK
        H("84ce") + struct.pack(">H", 372) + bytes(4 * 372),  # maximal FIR
        H("80cc0000") * words,  # hundreds of tiny unknown packets
        H("80c90001 00000001") * (words // 2),  # hundreds of tiny RRs
        sdes_items,  # SDES with ~750 empty items
        (H("9fcb001f") + bytes(124)) * 12,  # many full BYEs
        remb_255,  # REMB with 255 SSRCs
    ]


@pytest.mark.parametrize("data", _adversarial_inputs())
def test_parse_allocation_is_bounded(data: bytes) -> None:
    if len(data) > 100:  # the large inputs are valid: make sure they reach the parsers
        assert serialize_compound(parse_compound(data)) == data
    assert peak_allocation(parse_compound, data) < allocation_bound(data)
