"""``python -m bench --cluster``'s arithmetic: the node link's counters read from ``/metrics``,
each node's CPU per packet, and the relay arm set against the baseline step by step."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import main, parse_args
from bench.cluster import cluster_comparison, format_cluster, link_counters
from bench.scenarios import RunResult, ScenarioConfig, StepResult, _node_cpu, step_rates

METRICS = """\
# HELP sfu_cluster_link_datagrams_total Flow datagrams over the node links
# TYPE sfu_cluster_link_datagrams_total counter
sfu_cluster_link_datagrams_total{event="published"} 1200.0
sfu_cluster_link_datagrams_total{event="received"} 3.0
sfu_cluster_link_datagrams_total{event="dropped"} 40.0
# HELP sfu_cluster_relay_packets_total Relay pipe datagrams
# TYPE sfu_cluster_relay_packets_total counter
sfu_cluster_relay_packets_total{direction="out"} 1210.0
sfu_cluster_relay_packets_total{direction="in"} 30.0
sfu_cluster_relay_packets_total{direction="filtered"} 7.0
# HELP sfu_cluster_relay_retransmissions_total Packets another node NACKed
# TYPE sfu_cluster_relay_retransmissions_total counter
sfu_cluster_relay_retransmissions_total{result="hit"} 9.0
sfu_cluster_relay_retransmissions_total{result="miss"} 2.0
# HELP sfu_cluster_links_lost_total QUIC node links that went down after coming up
# TYPE sfu_cluster_links_lost_total counter
sfu_cluster_links_lost_total 1.0
# HELP sfu_dataplane_datagrams_total Datagrams the data plane forwarded itself or handed to Python
# TYPE sfu_dataplane_datagrams_total counter
sfu_dataplane_datagrams_total{path="fast"} 10.0
sfu_dataplane_datagrams_total{path="slow"} 500.0
sfu_dataplane_datagrams_total{path="relayed"} 1180.0
sfu_dataplane_datagrams_total{path="relay_in"} 1170.0
"""


def step(rate: float, **values: Any) -> StepResult:
    base: dict[str, Any] = dict(
        rate=rate, window_s=10.0, sent_pps=400.0, egress_pps=20_000.0, received_pps=20_000.0,
        loss=0.0, duplicates=0, reordered=0, latency_p50_ms=1.0, latency_p99_ms=5.0,
        latency_p999_ms=9.0, server_cpu_s=None, server_cpu_util=None,
        server_cpu_s_per_million_packets=None, generator_cpu_util=0.1, srtp_errors=0,
        late_frames=0, send_errors=0,
    )  # fmt: skip
    base.update(values)
    return StepResult(**base)


def run(target: str, steps: list[StepResult]) -> RunResult:
    return RunResult(
        target=target, scenario="fanout", load="1 pub -> 50 subs", publishers=1,
        subscriptions=50, setup_s=0.1, srtp_profile=None, implementation="python", steps=steps,
    )  # fmt: skip


def test_link_counters_come_from_the_metrics_text() -> None:
    assert link_counters(METRICS) == {
        "published": 1200.0,
        "received": 3.0,
        "dropped": 40.0,
        "relay_out": 1210.0,
        "relay_in": 30.0,
        "resent": 9.0,
        "links_lost": 1.0,
        "dataplane_fast": 10.0,
        "dataplane_slow": 500.0,
        "dataplane_relayed": 1180.0,
        "dataplane_relay_in": 1170.0,
    }
    # A node without a link (or another carrier's metrics): unknown, not zero.
    assert set(link_counters("").values()) == {None}


def test_each_node_is_charged_per_egress_and_per_delivered_packet() -> None:
    lossy = step(1.0, egress_pps=20_000.0, received_pps=10_000.0)
    cpu = _node_cpu({"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 2.0}, 10.0, lossy)
    assert cpu["a"] == {
        "cpu_s": 1.0,
        "cpu_util": 0.1,
        "cpu_s_per_million_packets": 5.0,  # 1 s over 200,000 due
        "cpu_s_per_million_delivered": 10.0,  # 1 s over 100,000 received
    }
    assert cpu["b"]["cpu_s"] == 0.0
    assert _node_cpu({"a": None}, {"a": 3.0}, 10.0, lossy)["a"]["cpu_s"] is None


def test_the_relay_arm_is_set_against_the_baseline_at_each_rate() -> None:
    relay = run(
        "2-nodes",
        [
            step(
                1.0, server_cpu_util=0.5, latency_p50_ms=3.0, latency_p99_ms=25.0,
                server_cpu_by_node={"node-a": {"cpu_util": 0.1}, "node-b": {"cpu_util": 0.4}},
                link={"node-a": {"published_pps": 300.0, "dropped_pps": 0.0}},
            ),
            step(
                4.0, received_pps=40_000.0, loss=0.5, server_cpu_util=1.0,
                server_cpu_by_node={"node-a": {"cpu_util": 0.2}, "node-b": {"cpu_util": 0.8}},
                link={"node-a": {"published_pps": 600.0, "dropped_pps": 600.0}},
            ),
        ],
    )  # fmt: skip
    base = run(
        "1-node",
        [
            step(1.0, server_cpu_util=0.1, server_cpu_by_node={"node-a": {"cpu_util": 0.1}}),
            step(4.0, received_pps=80_000.0, server_cpu_util=0.3,
                 server_cpu_by_node={"node-a": {"cpu_util": 0.3}}),
        ],
    )  # fmt: skip
    doc = cluster_comparison([relay, base])
    first, second = doc["steps"]
    assert first["cpu_us_per_delivered_packet"] == {
        "baseline": 5.0,
        "node-a": 5.0,
        "node-b": 20.0,
        "relay_total": 25.0,
    }
    assert first["cpu_per_delivered_packet_ratio"] == 5.0
    assert first["node_b_cpu_per_delivered_packet_ratio"] == 4.0
    assert (first["added_p50_ms"], first["added_p99_ms"]) == (2.0, 20.0)
    # 0.4 core more for 300 relayed packets/s.
    assert first["extra_cpu_us_per_relayed_packet"] == pytest.approx(1333.33, abs=0.01)
    # Charged per packet delivered: half the lossy step's packets never arrived.
    assert second["cpu_us_per_delivered_packet"]["relay_total"] == 25.0
    assert second["cpu_per_delivered_packet_ratio"] == pytest.approx(6.667, abs=0.001)
    assert second["link_dropped_pps"] == 600.0
    assert "x4: loss 50.000% / 0.000%" in format_cluster([relay, base])
    # Without both arms there is nothing to compare.
    assert cluster_comparison([relay]) == {} and format_cluster([base]) == ""


def test_rates_are_measured_in_order_and_checked() -> None:
    args = parse_args(["fanout", "--cluster", "--rates", "1,2.5,4"])
    assert args.cluster and args.rates == (1.0, 2.5, 4.0)
    assert step_rates(ScenarioConfig(rates=(1.0, 2.5, 4.0))) == [1.0, 2.5, 4.0]
    with pytest.raises(ValueError, match="rates must be"):
        ScenarioConfig(rates=(0.01,))
    with pytest.raises(ValueError, match="exclude each other"):
        ScenarioConfig(rates=(1.0,), find_max=True)
    with pytest.raises(SystemExit):
        parse_args(["fanout", "--rates", "1,x"])


def test_cluster_refuses_what_it_cannot_combine(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--vs", "janus"], ["--target", "http://127.0.0.1:1"], ["--workers", "2"]):
        assert main(["fanout", "--cluster", *extra]) == 2
        assert "--cluster" in capsys.readouterr().err


def test_clustered_refuses_what_it_cannot_combine(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--cluster"], ["--vs", "janus"], ["--target", "http://127.0.0.1:1"]):
        assert main(["fanout", "--clustered", *extra]) == 2
        assert "--clustered" in capsys.readouterr().err
    assert main(["soak", "--clustered"]) == 2
