"""The bench's synthetic subscribers report what they received (RFC 3550 receiver reports)."""

from __future__ import annotations

from bench.client import report_blocks
from sfu.packet.rtcp import ReceiverReport, parse_compound


def test_report_blocks_count_loss_per_interval() -> None:
    # (ssrc, unique, duplicates, reordered, first, highest, bytes)
    first = [(0xAAAA, 100, 0, 0, 65530, 65629, 0), (0xBBBB, 50, 2, 1, 10, 59, 0)]
    blocks, seen = report_blocks(first, {})
    assert [(b.ssrc, b.cumulative_lost, b.fraction_lost, b.highest_seq) for b in blocks] == [
        (0xAAAA, 0, 0, 65629),  # extended past the 16-bit wrap
        (0xBBBB, 0, 0, 59),
    ]
    # Next interval: 100 more expected on 0xAAAA, 75 arrived -> 25% lost in it.
    second = [(0xAAAA, 175, 0, 0, 65530, 65729, 0), (0xBBBB, 50, 2, 1, 10, 59, 0)]
    blocks, seen = report_blocks(second, seen)
    assert (blocks[0].cumulative_lost, blocks[0].fraction_lost) == (25, 64)
    assert (blocks[1].cumulative_lost, blocks[1].fraction_lost) == (0, 0)
    # It serializes to an RR the server's parser reads back unchanged.
    rr = ReceiverReport(0x1234, blocks)
    (parsed,) = parse_compound(rr.serialize())
    assert isinstance(parsed, ReceiverReport) and parsed.reports == blocks
    # At most 31 blocks (the 5-bit count).
    many = [(i, 1, 0, 0, 0, 0, 0) for i in range(1, 40)]
    assert len(report_blocks(many, {})[0]) == 31


def test_soak_summary_compares_the_first_and_last_minute() -> None:
    from bench.soak import summarize_soak

    samples = [
        {"t": t, "rss_bytes": 100_000_000 + (t > 500) * 1_000_000, "fds": 20, "loss": 0.0,
         "p99_ms": 2.0 if t != 300 else 5.0, "egress_pps": 1000.0, "server_egress_lost": 0.0}
        for t in range(0, 601, 10)
    ]  # fmt: skip
    samples[30]["loss"] = 0.002
    summary = summarize_soak(samples)
    assert summary["rss_growth"] == 0.01
    assert summary["loss_windows"] == 1 and summary["worst_window_loss"] == 0.002
    assert summary["p99_first_minute_ms"] == 2.0 and summary["p99_drift"] == 2.5
    assert summarize_soak([]) == {}
