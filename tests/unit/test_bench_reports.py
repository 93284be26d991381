"""The bench's synthetic subscribers report what they received (RFC 3550 receiver reports)."""

from __future__ import annotations

from typing import Any

import pytest

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
    assert summary["valid"] and summary["generator_behind_windows"] == 0
    assert summarize_soak([]) == {}


def test_soak_windows_say_whether_the_generator_kept_up() -> None:
    """A window the generator under-offered (starved of CPU) invalidates the verdict and its
    loss is not counted against the server."""
    from bench._loadgen_py import KIND_AUDIO, StreamSpec
    from bench.scenarios import planned_pps
    from bench.soak import generator_kept_up, summarize_soak

    audio = StreamSpec(ssrc=1, payload_type=111, kind=KIND_AUDIO, packet_size=100,
                       frame_interval_ns=20_000_000, keyframe_interval=0)  # fmt: skip
    video = StreamSpec(ssrc=2, payload_type=96, packets_per_frame=2, keyframe_packets=8,
                       frame_interval_ns=1_000_000_000 // 30, keyframe_interval=90)  # fmt: skip
    # 50 audio packets/s; video: 30 frames/s x (2 + 6 extra keyframe packets / 90 frames).
    assert planned_pps([audio], 1.0) == pytest.approx(50.0)
    assert planned_pps([audio, video], 2.0) == pytest.approx(100.0 + 60.0 * (2 + 6 / 90))
    assert generator_kept_up(96.0, 100.0, 0)
    assert not generator_kept_up(94.0, 100.0, 0)
    assert not generator_kept_up(100.0, 100.0, 3)  # skipped frames as late
    samples = [
        {"t": t, "rss_bytes": 1, "fds": 1, "loss": 0.01 if t == 20 else 0.0, "p99_ms": 1.0,
         "egress_pps": 1.0, "generator_kept_up": t != 20}
        for t in range(0, 100, 10)
    ]  # fmt: skip
    summary = summarize_soak(samples)
    assert summary["loss_windows"] == 1 and summary["loss_windows_generator_kept_up"] == 0
    assert summary["generator_behind_windows"] == 1 and not summary["valid"]


def _step(rate: float, egress: float, p99: float | None, bound: float | None) -> Any:
    from bench.scenarios import StepResult

    return StepResult(
        rate=rate, window_s=1.0, sent_pps=egress / 10, egress_pps=egress, received_pps=egress,
        loss=0.0, duplicates=0, reordered=0, latency_p50_ms=1.0, latency_p99_ms=p99,
        latency_p999_ms=p99, server_cpu_s=0.5, server_cpu_util=0.5,
        server_cpu_s_per_million_packets=5.0, generator_cpu_util=0.3, srtp_errors=0,
        late_frames=0, send_errors=0, p99_bound_ms=bound,
    )  # fmt: skip


def test_find_max_counts_a_step_only_while_p99_is_within_the_bound() -> None:
    """A backlogged step (everything delivered, late) is no maximum; the report says the bound."""
    from bench.report import format_table
    from bench.scenarios import RunResult

    run = RunResult(
        target="sfu", scenario="fanout", load="x", publishers=1, subscriptions=100,
        setup_s=1.0, srtp_profile="p", implementation="cython", p99_bound_ms=50.0,
    )  # fmt: skip
    run.steps = [_step(1.0, 227_000.0, 28.0, 50.0), _step(1.5, 343_000.0, 282.0, 50.0)]
    run.stopped_by = "p99"
    best = run.best()
    assert best is not None and best.egress_pps == 227_000
    assert run.steps[1].over_latency_bound() and not run.steps[1].sustained()
    assert _step(1.0, 1, None, 50.0).over_latency_bound()  # unmeasured latency is not within
    assert not _step(1.0, 1, 900.0, None).over_latency_bound()  # no bound: not judged
    table = format_table([run], find_max=True)
    assert "max sustained egress 227,000 pps" in table and "p99 <= 50 ms" in table
    assert run.as_dict(True)["p99_bound_ms"] == 50.0


def test_rooms_replicate_the_plan_under_distinct_names() -> None:
    import pytest

    from bench.__main__ import _config, parse_args
    from bench.scenarios import ScenarioConfig

    cfg = _config(parse_args(["meeting", "--rooms", "4", "--p99-bound-ms", "30"]))
    names = cfg.room_names()
    assert len(set(names)) == 4 and all(n.startswith(cfg.room) for n in names)
    assert cfg.p99_bound_ms == 30.0 and cfg.load_label() == "4 rooms x 6 participants"
    one = ScenarioConfig(scenario="audio")
    assert one.room_names() == [one.room]
    with pytest.raises(ValueError, match="rooms"):
        ScenarioConfig(rooms=0)


def test_spread_rooms_report_each_server_port_and_worker() -> None:
    """``--spread``: loss and latency per server media port (worker) of the subscribers,
    and the server's own forwarding-latency histogram per worker, in the window."""
    from bench._loadgen_py import HIST_EDGES_NS
    from bench.scenarios import by_group
    from bench.targets import forwarding_buckets, forwarding_quantiles

    slots = len(HIST_EDGES_NS) + 1

    def recv(unique: int, highest: int, bucket: int) -> dict[str, Any]:
        hist = [0] * slots
        hist[bucket] = unique
        return {"streams": [(1, unique, 0, 0, 1, highest, 0)], "hist": hist, "srtp_errors": 0}

    before = {"recv": {0: recv(0, 0, 1), 1: recv(0, 0, 1), 2: recv(0, 0, 1)}}
    before["recv"] = {
        i: {**r, "streams": [], "hist": [0] * slots} for i, r in before["recv"].items()
    }
    after = {"recv": {0: recv(100, 100, 5), 1: recv(100, 100, 9), 2: recv(90, 100, 9)}}
    groups = by_group(before, after, {0: "40000", 1: "40001", 2: "40001"})
    assert set(groups) == {"40000", "40001"}
    assert groups["40000"]["loss"] == 0 and groups["40001"]["loss"] == 0.05
    assert groups["40001"]["subscribers"] == 2
    p99_home, p99_shard = groups["40000"]["latency_p99_ms"], groups["40001"]["latency_p99_ms"]
    assert p99_home is not None and p99_shard is not None and p99_shard > p99_home

    def text(counts: dict[str, list[int]]) -> str:
        lines = ["# TYPE sfu_forwarding_latency_seconds histogram"]
        for worker, (a, b, c) in counts.items():
            for le, n in (("0.0001", a), ("0.001", b), ("+Inf", c)):
                lines.append(
                    f'sfu_forwarding_latency_seconds_bucket{{le="{le}",worker="{worker}"}} {n}'
                )
        return "\n".join(lines) + "\n"

    first = forwarding_buckets(text({"0": [10, 10, 10], "1": [0, 0, 0]}))
    second = forwarding_buckets(text({"0": [110, 110, 110], "1": [50, 140, 150]}))
    quantiles = forwarding_quantiles(first, second)
    assert quantiles["0"] == {"samples": 100.0, "p50_ms": 0.1, "p99_ms": 0.1}
    assert quantiles["1"] == {"samples": 150.0, "p50_ms": 1.0, "p99_ms": None}  # past 1 ms
