"""ReceiveStats and SendStats: RFC 3550 §6.4 report statistics, RTT and SR timestamps."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.core.rtcp_stats import (
    NTP_EPOCH_OFFSET,
    SR_HISTORY,
    ReceiveStats,
    SendStats,
    ntp_short,
    unix_to_ntp,
)
from sfu.packet.rtcp import (
    ReceiverReport,
    ReportBlock,
    SenderReport,
    parse_compound,
    serialize_compound,
)
from sfu.packet.seqnum import SequenceUnwrapper

BASE = 1 << 16  # where SequenceUnwrapper puts the first packet of a stream
VIDEO = 90_000
AUDIO = 48_000


def _block(stats: ReceiveStats, now: float) -> ReportBlock:
    block = stats.report_block(now)
    assert block is not None
    return block


# --------------------------------------------------------------------------------------
# ReceiveStats: loss
# --------------------------------------------------------------------------------------


def test_no_block_before_any_packet() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    assert stats.report_block(1.0) is None
    assert stats.highest_ext_seq is None
    assert stats.packets_received == 0 and stats.packets_lost == 0


def test_in_order_stream_has_no_loss() -> None:
    stats = ReceiveStats(ssrc=7, clock_rate=VIDEO)
    for i in range(100):
        stats.on_packet(BASE + i, i * 3000, now=i / 30)
    block = _block(stats, 4.0)
    assert block.ssrc == 7
    assert block.fraction_lost == 0 and block.cumulative_lost == 0
    assert block.highest_seq == 99  # cycles count from the first packet's
    assert stats.highest_ext_seq == BASE + 99
    assert stats.packets_received == 100 and stats.packets_lost == 0


def test_gaps_count_as_lost() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    for seq in (0, 1, 2, 5, 6, 9):
        stats.on_packet(BASE + seq, 0, now=0.0)
    assert stats.packets_expected == 10
    assert stats.packets_lost == 4
    block = _block(stats, 1.0)
    assert block.cumulative_lost == 4
    assert block.fraction_lost == 4 * 256 // 10


def test_reordering_is_not_loss() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    for seq in (0, 2, 1, 4, 3, 5):
        stats.on_packet(BASE + seq, 0, now=0.0)
    assert stats.packets_lost == 0
    assert stats.highest_ext_seq == BASE + 5
    block = _block(stats, 1.0)
    assert (block.fraction_lost, block.cumulative_lost, block.highest_seq) == (0, 0, 5)


def test_packet_older_than_the_first_extends_expected() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    stats.on_packet(BASE + 10, 0, now=0.0)
    stats.on_packet(BASE + 8, 0, now=0.001)  # 9 is lost, 8 was merely late
    assert stats.packets_expected == 3
    assert stats.packets_lost == 1


def test_duplicates_count_as_received_so_loss_can_go_negative() -> None:
    # RFC 3550 §6.4.1: received includes duplicates; cumulative lost may be negative.
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    for seq in (0, 1, 1, 2, 2, 3):
        stats.on_packet(BASE + seq, 0, now=0.0)
    assert stats.packets_received == 6
    assert stats.packets_lost == -2
    block = _block(stats, 1.0)
    assert block.cumulative_lost == -2
    assert block.fraction_lost == 0  # a negative interval loss reports as 0
    # Still round-trips through the wire format (signed 24 bits).
    rr = ReceiverReport(ssrc=99, reports=[block])
    assert parse_compound(serialize_compound([rr])) == [rr]


def test_retransmission_fills_a_hole() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    for seq in (0, 1, 3):
        stats.on_packet(BASE + seq, 0, now=0.0)
    assert stats.packets_lost == 1
    stats.on_packet(BASE + 2, 0, now=0.05, is_retransmission=True)
    assert stats.packets_lost == 0


def test_sequence_wrap_through_unwrapper() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    unwrap = SequenceUnwrapper()
    wire = [65530, 65531, 65533, 65534, 65535, 0, 1, 3, 4]  # 65532 and 2 are lost
    for i, seq in enumerate(wire):
        stats.on_packet(unwrap.unwrap(seq), i * 3000, now=i / 30)
    assert stats.packets_lost == 2
    block = _block(stats, 1.0)
    assert block.cumulative_lost == 2
    assert block.highest_seq == (1 << 16) | 4  # one wrap cycle, seq 4
    assert block.fraction_lost == 2 * 256 // 11


def test_fraction_lost_is_per_interval() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    seq = 0
    now = 0.0

    def send(count: int, lose: set[int]) -> None:
        nonlocal seq, now
        for k in range(count):
            if k not in lose:
                stats.on_packet(BASE + seq, 0, now)
            seq += 1
            now += 0.01

    send(10, lose={3, 4})  # first interval: 2 of 10 lost (the last one must arrive)
    first = _block(stats, now)
    assert first.fraction_lost == 2 * 256 // 10
    assert first.cumulative_lost == 2
    send(20, lose=set())  # second interval: no loss
    second = _block(stats, now)
    assert second.fraction_lost == 0
    assert second.cumulative_lost == 2
    send(4, lose={0, 1, 2})  # third: 3 of 4 lost
    third = _block(stats, now)
    assert third.fraction_lost == 3 * 256 // 4
    assert third.cumulative_lost == 5
    assert _block(stats, now).fraction_lost == 0  # nothing since: empty interval


def test_cumulative_lost_clamps_to_24_bits() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    stats.on_packet(0, 0, now=0.0)
    stats.on_packet(1 << 24, 0, now=0.1)  # the caller's extended seq jumped 16M ahead
    block = _block(stats, 1.0)
    assert block.cumulative_lost == (1 << 23) - 1
    assert block.fraction_lost == 255
    assert stats.packets_lost == (1 << 24) - 1  # the property is not clamped
    ReceiverReport(ssrc=2, reports=[block]).serialize()  # fits the wire format


# --------------------------------------------------------------------------------------
# ReceiveStats: jitter (RFC 3550 §A.8)
# --------------------------------------------------------------------------------------


def test_jitter_is_zero_for_constant_transit() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    transit = 0.040
    for i in range(500):
        ts = (4_294_000_000 + i * 3000) & 0xFFFFFFFF  # wraps the 32-bit timestamp on the way
        stats.on_packet(BASE + i, ts, now=100.0 + i / 30 + transit)
    assert stats.jitter == pytest.approx(0.0, abs=1e-3)
    assert _block(stats, 200.0).jitter == 0


def test_jitter_converges_to_mean_absolute_transit_difference() -> None:
    # Transit alternating between 10 ms and 30 ms: |D| is always 20 ms, so J -> 20 ms.
    stats = ReceiveStats(ssrc=1, clock_rate=AUDIO)
    for i in range(2000):
        transit = 0.010 if i % 2 else 0.030
        stats.on_packet(BASE + i, i * 960, now=i * 0.020 + transit)
    assert stats.jitter_seconds == pytest.approx(0.020, rel=1e-3)
    assert stats.jitter == pytest.approx(0.020 * AUDIO, rel=1e-3)
    assert _block(stats, 100.0).jitter == pytest.approx(960, abs=1)


def test_jitter_grows_with_variable_transit() -> None:
    rng = random.Random(7)
    steady = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    noisy = ReceiveStats(ssrc=2, clock_rate=VIDEO)
    for i in range(300):
        steady.on_packet(BASE + i, i * 3000, now=i / 30 + 0.05)
        noisy.on_packet(BASE + i, i * 3000, now=i / 30 + 0.05 + rng.uniform(0, 0.04))
    assert steady.jitter_seconds < 1e-6
    assert noisy.jitter_seconds > 0.005


def test_retransmissions_do_not_feed_jitter() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    for i in range(100):
        stats.on_packet(BASE + i, i * 3000, now=i / 30)
    # A retransmission of an old packet arrives very late relative to its timestamp.
    stats.on_packet(BASE + 50, 50 * 3000, now=100 / 30, is_retransmission=True)
    stats.on_packet(BASE + 100, 100 * 3000, now=100 / 30)
    assert stats.jitter == pytest.approx(0.0, abs=1e-3)
    assert stats.packets_received == 102


def test_timestamp_discontinuity_is_not_jitter() -> None:
    stats = ReceiveStats(ssrc=1, clock_rate=VIDEO)
    for i in range(50):
        stats.on_packet(BASE + i, i * 3000, now=i / 30)
    stats.on_packet(BASE + 50, 1_000_000_000, now=50 / 30)  # encoder restarted elsewhere
    for i in range(51, 60):
        stats.on_packet(BASE + i, 1_000_000_000 + (i - 50) * 3000, now=i / 30)
    assert stats.jitter == pytest.approx(0.0, abs=1e-3)


# --------------------------------------------------------------------------------------
# SendStats: sender reports
# --------------------------------------------------------------------------------------


def test_ntp_conversion() -> None:
    assert unix_to_ntp(0.0) == NTP_EPOCH_OFFSET << 32
    assert unix_to_ntp(1.5) == ((NTP_EPOCH_OFFSET + 1) << 32) | (1 << 31)
    assert unix_to_ntp(2.9999999999999) == (NTP_EPOCH_OFFSET + 3) << 32  # rounds up a second
    ntp = unix_to_ntp(1_700_000_000.25)
    assert ntp >> 32 == 1_700_000_000 + NTP_EPOCH_OFFSET
    assert ntp & 0xFFFFFFFF == 1 << 30
    assert ntp_short(ntp) == ((ntp >> 32) & 0xFFFF) << 16 | (1 << 14)


def test_no_sender_report_before_any_packet() -> None:
    assert SendStats(ssrc=1, clock_rate=VIDEO).sender_report(1.0, 1_700_000_000.0) is None


def test_sender_report_counts_and_extrapolates_timestamp() -> None:
    send = SendStats(ssrc=0x1234, clock_rate=VIDEO)
    for i in range(10):
        send.on_packet(rtp_timestamp=1000 + i * 3000, payload_bytes=1000 + i, now=5.0 + i / 30)
    assert send.packets_sent == 10 and send.octets_sent == 10_045
    last_at = 5.0 + 9 / 30
    sr = send.sender_report(now=last_at + 0.5, wallclock=1_700_000_000.5)
    assert sr is not None
    assert sr.ssrc == 0x1234
    assert sr.packet_count == 10 and sr.octet_count == 10_045
    assert sr.rtp_timestamp == 1000 + 9 * 3000 + 45_000  # 0.5 s at 90 kHz later
    assert sr.ntp_timestamp == unix_to_ntp(1_700_000_000.5)
    assert sr.reports == []
    assert parse_compound(serialize_compound([sr])) == [sr]


def test_sender_report_timestamp_wraps_and_ignores_older_timestamps() -> None:
    send = SendStats(ssrc=1, clock_rate=AUDIO)
    send.on_packet(0xFFFFFF00, 100, now=1.0)
    send.on_packet(0xFFFFFF00 - 960, 100, now=1.01)  # an older frame, e.g. a retransmission
    sr = send.sender_report(now=1.02, wallclock=1_000.0)
    assert sr is not None
    assert sr.rtp_timestamp == (0xFFFFFF00 + 960) & 0xFFFFFFFF  # anchored at 1.0, wrapped
    assert send.packets_sent == 2


def test_sender_report_counts_wrap_modulo_32_bits() -> None:
    send = SendStats(ssrc=1, clock_rate=VIDEO)
    send.on_packet(0, (1 << 32) + 5, now=0.0)
    sr = send.sender_report(now=0.0, wallclock=0.0)
    assert sr is not None
    assert sr.octet_count == 5 and send.octets_sent == (1 << 32) + 5


def test_sr_maps_rtp_time_to_wallclock_consistently() -> None:
    # Two SRs at different times give the same RTP-per-second slope as the clock rate.
    send = SendStats(ssrc=1, clock_rate=VIDEO)
    send.on_packet(500, 10, now=10.0)
    a = send.sender_report(now=10.2, wallclock=1_000_000.2)
    b = send.sender_report(now=12.2, wallclock=1_000_002.2)
    assert a is not None and b is not None
    ntp_delta = (b.ntp_timestamp - a.ntp_timestamp) / (1 << 32)
    assert (b.rtp_timestamp - a.rtp_timestamp) / VIDEO == pytest.approx(ntp_delta, abs=1e-4)


# --------------------------------------------------------------------------------------
# Round trip time (RFC 3550 §6.4.1)
# --------------------------------------------------------------------------------------


def test_rtt_from_sr_and_rr_round_trip() -> None:
    """SR out through the wire, the subscriber's ReceiveStats answers, RTT comes out."""
    send = SendStats(ssrc=0xABC, clock_rate=VIDEO)
    recv = ReceiveStats(ssrc=0xABC, clock_rate=VIDEO)  # stands for the subscriber's side
    for i in range(30):
        send.on_packet(i * 3000, 1200, now=i / 30)
        recv.on_packet(BASE + i, i * 3000, now=i / 30 + 0.04)
    sr = send.sender_report(now=1.0, wallclock=1_700_000_123.456)
    assert sr is not None
    (sr_in,) = parse_compound(serialize_compound([sr]))
    assert isinstance(sr_in, SenderReport)
    recv.on_sender_report(sr_in.ntp_timestamp, now=1.040)  # 40 ms one way
    block = _block(recv, now=1.290)  # held 250 ms before reporting
    assert block.lsr == ntp_short(sr.ntp_timestamp)
    assert block.dlsr == round(0.250 * 65536)
    (rr_in,) = parse_compound(serialize_compound([ReceiverReport(ssrc=5, reports=[block])]))
    assert isinstance(rr_in, ReceiverReport)
    send.on_report_block(rr_in.reports[0], now=1.330)  # 40 ms back
    assert send.rtt == pytest.approx(0.080, abs=0.001)


def test_rtt_from_hand_made_block_uses_the_named_sr() -> None:
    send = SendStats(ssrc=9, clock_rate=VIDEO)
    send.on_packet(0, 100, now=0.0)
    first = send.sender_report(now=1.0, wallclock=5_000.0)
    second = send.sender_report(now=2.0, wallclock=5_001.0)
    assert first is not None and second is not None
    dlsr = round(0.5 * 65536)
    # The block names the first SR: RTT = 2.7 - 1.0 - 0.5.
    block = ReportBlock(9, 64, 3, 100, 900, ntp_short(first.ntp_timestamp), dlsr)
    send.on_report_block(block, now=2.7)
    assert send.rtt == pytest.approx(1.2, abs=0.001)
    assert send.fraction_lost == 0.25
    assert send.cumulative_lost == 3
    assert send.jitter_seconds == pytest.approx(0.01)
    block = ReportBlock(9, 0, 3, 100, 0, ntp_short(second.ntp_timestamp), dlsr)
    send.on_report_block(block, now=2.6)
    assert send.rtt == pytest.approx(0.1, abs=0.001)


def test_rtt_unchanged_without_lsr_or_for_unknown_sr() -> None:
    send = SendStats(ssrc=9, clock_rate=VIDEO)
    send.on_packet(0, 100, now=0.0)
    assert send.rtt is None
    send.on_report_block(ReportBlock(9, 0, 0, 1, 0, 0, 0), now=1.0)  # LSR 0: no SR seen yet
    assert send.rtt is None
    send.on_report_block(ReportBlock(9, 0, 0, 1, 0, 0x12345678, 0), now=1.0)
    assert send.rtt is None


def test_only_recent_srs_are_remembered() -> None:
    send = SendStats(ssrc=9, clock_rate=VIDEO)
    send.on_packet(0, 100, now=0.0)
    srs = [send.sender_report(now=float(i), wallclock=9_000.0 + i) for i in range(SR_HISTORY + 3)]
    oldest, newest = srs[0], srs[-1]
    assert oldest is not None and newest is not None
    send.on_report_block(ReportBlock(9, 0, 0, 1, 0, ntp_short(oldest.ntp_timestamp), 0), 20.0)
    assert send.rtt is None  # forgotten
    send.on_report_block(ReportBlock(9, 0, 0, 1, 0, ntp_short(newest.ntp_timestamp), 0), 20.0)
    assert send.rtt == pytest.approx(20.0 - (SR_HISTORY + 2), abs=0.001)


def test_negative_rtt_clamps_to_zero() -> None:
    send = SendStats(ssrc=9, clock_rate=VIDEO)
    send.on_packet(0, 100, now=0.0)
    sr = send.sender_report(now=1.0, wallclock=1.0)
    assert sr is not None
    # The receiver claims it held the SR longer than the whole round trip took.
    send.on_report_block(ReportBlock(9, 0, 0, 1, 0, ntp_short(sr.ntp_timestamp), 65536), 1.5)
    assert send.rtt == 0.0


def test_block_about_another_ssrc_is_rejected() -> None:
    send = SendStats(ssrc=9, clock_rate=VIDEO)
    with pytest.raises(ValueError):
        send.on_report_block(ReportBlock(10, 0, 0, 1, 0, 0, 0), now=1.0)


def test_invalid_clock_rate() -> None:
    with pytest.raises(ValueError):
        ReceiveStats(ssrc=1, clock_rate=0)
    with pytest.raises(ValueError):
        SendStats(ssrc=1, clock_rate=-1)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------


@given(
    received=st.lists(st.integers(0, 300), min_size=1, max_size=200),
    split=st.integers(0, 200),
)
def test_loss_accounting_property(received: list[int], split: int) -> None:
    """Cumulative loss is expected minus received; blocks always fit the wire format."""
    stats = ReceiveStats(ssrc=3, clock_rate=VIDEO)
    blocks: list[ReportBlock] = []
    for k, seq in enumerate(received):
        stats.on_packet(BASE + seq, seq * 3000, now=k * 0.001)
        if k == split:
            blocks.append(_block(stats, k * 0.001))
    blocks.append(_block(stats, 1.0))
    expected = max(received) - min(received) + 1
    assert stats.packets_expected == expected
    assert stats.packets_lost == expected - len(received)
    assert blocks[-1].cumulative_lost == expected - len(received)
    assert blocks[-1].highest_seq == max(received)
    distinct_missing = expected - len(set(received))
    if len(blocks) == 1 and distinct_missing == 0:
        assert blocks[0].fraction_lost == 0
    rr = ReceiverReport(ssrc=4, reports=blocks)
    assert parse_compound(serialize_compound([rr])) == [rr]


def test_loss_to_act_on_spans_at_least_a_hundred_packets() -> None:
    from sfu.core.rtcp_stats import LOSS_MIN_PACKETS, SendStats
    from sfu.packet.rtcp import ReportBlock

    stats = SendStats(0xABC, 90000)

    def report(highest: int, lost: int, fraction: int) -> None:
        block = ReportBlock(0xABC, fraction, lost, highest, 0, 0, 0)
        stats.on_report_block(block, 1.0)

    # Many small reports (one per NACK) at a steady 5%: the per-report fraction swings,
    # the measured loss stays near 5%.
    highest, lost = 1000, 0
    report(highest, lost, 0)
    for i in range(40):
        highest += 10
        lost += 1 if i % 2 else 0
        report(highest, lost, 128 if i % 2 else 0)
    assert stats.fraction_lost in (0.0, 0.5)
    assert 0.03 <= stats.loss <= 0.07
    # A real 20% loss over a span of LOSS_MIN_PACKETS is seen.
    report(highest + LOSS_MIN_PACKETS, lost + LOSS_MIN_PACKETS // 5, 51)
    assert abs(stats.loss - 0.2) < 0.02
