"""Metrics, socket-free: the plain histogram, and the collector over a real room service."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from room_fixtures import harness, recvonly_offer, simulcast_offer, vp8_packet

from sfu.histogram import LATENCY_BUCKETS_S, PlainHistogram
from sfu.metrics.collector import MetricSources, SfuCollector
from sfu.metrics.labels import ALLOWED, HANDSHAKE_FAILURES, drop_reason
from sfu.metrics.loop_lag import LoopLagMonitor
from sfu.packet.rtcp_feedback import Pli
from sfu.room.service import RoomService
from sfu.transport.dtls import DtlsFailure
from sfu.transport.transport import _DTLS_FAILURES, HandshakeFailure

ROOM = "metrics-unit-room"
SSRC_Q = 1111


# -- PlainHistogram --------------------------------------------------------------------------


def test_histogram_buckets_are_upper_bounds_inclusive() -> None:
    hist = PlainHistogram([1.0, 2.0])
    for value in (0.5, 1.0, 1.5, 2.0, 7.0):
        hist.observe(value)
    assert hist.cumulative() == [("1.0", 2), ("2.0", 4), ("+Inf", 5)]
    assert hist.count == 5 and hist.sum == pytest.approx(12.0)


@pytest.mark.parametrize("bounds", [[], [2.0, 1.0], [1.0, 1.0]])
def test_histogram_refuses_bad_bounds(bounds: list[float]) -> None:
    with pytest.raises(ValueError):
        PlainHistogram(bounds)


def test_histograms_merge_only_with_the_same_buckets() -> None:
    a, b = PlainHistogram([1.0]), PlainHistogram([1.0])
    a.observe(0.5)
    b.observe(3.0)
    a.merge(b)
    assert a.cumulative() == [("1.0", 1), ("+Inf", 2)]
    with pytest.raises(ValueError):
        a.merge(PlainHistogram([2.0]))


@given(st.lists(st.floats(min_value=0, max_value=1.0, allow_nan=False)))
def test_histogram_cumulative_counts_are_consistent(values: list[float]) -> None:
    hist = PlainHistogram(LATENCY_BUCKETS_S)
    for value in values:
        hist.observe(value)
    pairs = hist.cumulative()
    counts = [n for _, n in pairs]
    assert counts == sorted(counts) and counts[-1] == len(values)
    for le, n in pairs[:-1]:
        assert n == sum(1 for v in values if v <= float(le))
    assert math.isclose(hist.sum, sum(values), abs_tol=1e-9)


# -- labels ----------------------------------------------------------------------------------


def test_unknown_drop_reasons_become_other() -> None:
    assert drop_reason("srtp_auth") == "srtp_auth"
    assert drop_reason("anything a peer could make up") == "other"


def test_handshake_failures_map_onto_fixed_labels() -> None:
    assert tuple(f.value for f in HandshakeFailure) == HANDSHAKE_FAILURES
    for stage, reason in HANDSHAKE_FAILURES:
        assert reason in ALLOWED["reason"] and stage in ALLOWED["stage"]
    # Every DTLS failure code has its own transport failure, in the dtls stage.
    dtls = {_DTLS_FAILURES[code] for code in DtlsFailure}
    assert len(dtls) == len(DtlsFailure) and {f.value[0] for f in dtls} == {"dtls"}


def test_loop_lag_records_only_the_overshoot() -> None:
    monitor = LoopLagMonitor(interval=0.25)
    monitor.record(0.25, 0.30)
    monitor.record(0.25, 0.20)  # early wake-ups count as no lag
    assert monitor.last == 0.0
    assert monitor.histogram.count == 2
    assert monitor.histogram.sum == pytest.approx(0.05)


# -- the collector over a room service -------------------------------------------------------


def registry_for(service: RoomService) -> CollectorRegistry:
    assert service.dataplane is not None
    registry = CollectorRegistry(auto_describe=False)
    lag = LoopLagMonitor()
    registry.register(
        SfuCollector(
            MetricSources(
                port=service.port,
                forwarder=service.dataplane.forwarder,
                rooms=lambda: service,
                loop_lag=lag,
                implementation="python",
                version="test",
                ready=lambda: True,
                draining=lambda: False,
                signaling_connections=lambda: 0,
            )
        )
    )
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, (name, labels)
    return found


def test_collector_counts_forwarding_and_keeps_totals_after_people_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = harness(monkeypatch)
    registry = registry_for(h.service)
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    h.capture("alice", alice)
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in h.messages("bob", "track_published")}
    h.service.offer(bob, recvonly_offer(), 0.0, subscriptions={"1": tracks["video"]})
    h.capture("bob", bob)
    assert alice.peer is not None and bob.peer is not None
    sub = next(iter(bob.peer.subscriptions.values()))
    assert sub.selector is not None
    sub.selector.set_target(0, None)

    t = alice.peer.transport
    for seq in range(10):
        packet = vp8_packet(SSRC_Q, seq, 1000 + seq * 3000, keyframe=seq == 0, rid="q")
        alice.peer.on_rtp(t, packet, 1.0 + seq * 0.03)
    bob.peer.on_rtcp(bob.peer.transport, Pli(1, sub.out_ssrc).serialize(), 2.0)
    forwarded = len(h.sent_rtp["bob"])
    assert forwarded == 10

    assert value(registry, "sfu_rtp_packets_received_total", media="video") == 10
    assert value(registry, "sfu_rtp_packets_forwarded_total", media="video") == forwarded
    out_bytes = sum(len(p) for p in h.sent_rtp["bob"])
    assert value(registry, "sfu_rtp_bytes_forwarded_total", media="video") == out_bytes
    assert value(registry, "sfu_keyframe_requests_received_total", type="pli") == 1
    assert value(registry, "sfu_layer_switches_total") == 1  # the start of the subscription
    assert value(registry, "sfu_participants", state="joined", kind="websocket") == 2
    assert value(registry, "sfu_publications", media="video") == 1
    assert value(registry, "sfu_subscriptions", media="video") == 1
    assert value(registry, "sfu_rtp_packets_expected_total", direction="ingress") == 10
    assert value(registry, "sfu_rtp_packets_lost_total", direction="ingress") == 0

    # Everyone leaves: gauges fall to zero, counters keep what happened.
    h.service.leave(bob, now=1.0)
    h.service.leave(alice, now=1.0)
    assert value(registry, "sfu_participants", state="joined", kind="websocket") == 0
    assert value(registry, "sfu_rooms") == 0
    assert value(registry, "sfu_rtp_packets_forwarded_total", media="video") == forwarded
    assert value(registry, "sfu_rtp_packets_received_total", media="video") == 10
    assert value(registry, "sfu_keyframe_requests_received_total", type="pli") == 1
    assert value(registry, "sfu_layer_switches_total") == 1
    assert value(registry, "sfu_rtp_packets_expected_total", direction="ingress") == 10
    # Each peer was folded in exactly once.
    assert h.service.stats.retired.rtp_in == 10


def test_every_label_value_comes_from_a_fixed_set(monkeypatch: pytest.MonkeyPatch) -> None:
    h = harness(monkeypatch)
    registry = registry_for(h.service)
    h.join(ROOM, "alice")
    h.service.port.counters.drop("made_up_by_a_peer 10.1.2.3")
    h.service.port.datagram_received(b"\xff" * 30, ("10.9.8.7", 5000), 1.0)
    assert value(registry, "sfu_packets_dropped_total", reason="other") == 1
    assert value(registry, "sfu_packets_dropped_total", reason="unknown_unknown_source") == 1
    for family in registry.collect():
        for sample in family.samples:
            for label, text in sample.labels.items():
                if label == "le" or sample.name == "sfu_build_info":
                    continue
                assert text in ALLOWED[label], (sample.name, label, text)


def test_allocation_state_pauses_and_target_changes_are_exposed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sfu.packet.rtcp_feedback import Remb

    h = harness(monkeypatch)
    registry = registry_for(h.service)
    alice = h.join(ROOM, "alice")
    bob = h.join(ROOM, "bob")
    h.service.offer(alice, simulcast_offer(), 0.0, names={"1": "camera"})
    h.capture("alice", alice)
    tracks = {m["track"]["kind"]: m["track"]["id"] for m in h.messages("bob", "track_published")}
    h.service.offer(bob, recvonly_offer(), 0.0, subscriptions={"1": tracks["video"]})
    h.capture("bob", bob)
    assert alice.peer is not None and bob.peer is not None
    sub = next(iter(bob.peer.subscriptions.values()))
    t = alice.peer.transport
    for seq in range(30):  # one second of the low layer, ~48 kbit/s
        packet = vp8_packet(SSRC_Q, seq, seq * 3000, keyframe=seq == 0, rid="q", payload=bytes(200))
        alice.peer.on_rtp(t, packet, 1.0 + seq / 30)
    bob_t = bob.peer.transport
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 2_000_000, [sub.out_ssrc]).serialize(), 1.9)
    h.service.poll(2.0, 1.7e9)
    assert value(registry, "sfu_subscriber_allocation", state="stable") == 1
    assert value(registry, "sfu_subscriptions_paused") == 0
    for seq in range(30, 60):
        packet = vp8_packet(SSRC_Q, seq, seq * 3000, keyframe=False, rid="q", payload=bytes(200))
        alice.peer.on_rtp(t, packet, 1.0 + seq / 30)
    bob.peer.on_rtcp(bob_t, Remb.from_bitrate(1, 20_000, [sub.out_ssrc]).serialize(), 2.9)
    h.service.poll(3.0, 1.7e9)
    assert value(registry, "sfu_subscriber_allocation", state="deficient") == 1
    assert value(registry, "sfu_subscriptions_paused") == 1
    assert value(registry, "sfu_bandwidth_pauses_total", event="paused") == 1
    assert value(registry, "sfu_layer_target_changes_total", reason="congestion") == 1
    assert value(registry, "sfu_layer_target_changes_total", reason="hint") == 0
    h.service.leave(bob, now=3.5)
    assert value(registry, "sfu_subscriptions_paused") == 0
    assert value(registry, "sfu_bandwidth_pauses_total", event="paused") == 1  # kept
