"""``python -m bench``: a short real run against a locally started server, and find-max;
the load engines (compiled and reference) over a loopback socket pair.

Each run starts ``python -m sfu serve`` itself, connects synthetic publishers and subscribers
over real signaling, ICE and DTLS-SRTP on loopback, and writes the JSON and the plot.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kernel_selection import load_compiled

from bench import _loadgen_py
from bench._loadgen_py import KIND_AUDIO, KIND_VIDEO, StreamSpec, percentile_ns
from sfu._fastpath import _srtp_py

VIDEO = StreamSpec(
    ssrc=0x11223344, payload_type=96, kind=KIND_VIDEO, packets_per_frame=3, keyframe_packets=5,
    mid_id=4, mid=b"1", rid_id=10, rid=b"f", layer=2,
)  # fmt: skip
AUDIO = StreamSpec(
    ssrc=0x55667788, payload_type=111, kind=KIND_AUDIO, packet_size=120,
    frame_interval_ns=20_000_000, keyframe_interval=0, timestamp_step=960, mid_id=4, mid=b"0",
)  # fmt: skip

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 55


def _bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    out = tmp_path / "result.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--json", str(out), "--no-pin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc


def test_fanout_run_reports_real_media(tmp_path: Path) -> None:
    # The default warm-up with transport-wide CC feedback (6 s): the estimate ramps up first.
    doc, proc = _bench(tmp_path, "fanout", "--subscribers", "4", "--duration", "2")
    (result,) = doc["targets"]
    for key in (
        "egress_pps",
        "loss",
        "latency_p50_ms",
        "latency_p99_ms",
        "server_cpu_s_per_million_packets",
    ):
        assert key in result, key
    assert result["target"] == "sfu" and result["scenario"] == "fanout"
    assert result["subscriptions"] == 4 and result["publishers"] == 1
    assert result["srtp_profile"] == "SRTP_AEAD_AES_128_GCM"
    # 4 viewers of Opus (50 pps) plus the top simulcast layer (~240 pps at 2 Mbit/s, 30 fps).
    assert 4 * 200 < result["egress_pps"] < 4 * 450, result
    assert result["loss"] < 0.01
    # Real one-way latencies: a paced subscriber's media may wait up to the pacer's
    # MAX_QUEUE_TIME (0.5 s) while its estimate still ramps, so the sanity bound is 1 s.
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"] < 1000
    assert result["server_cpu_s_per_million_packets"] > 0
    (step,) = result["steps"]
    assert step["srtp_errors"] == 0 and step["duplicates"] == 0
    # Every subscriber reports what it received, about once a second (RFC 3550 RRs).
    assert step["receiver_reports"] >= 4 * (step["window_s"] - 1.5), step
    # ... and transport-wide CC feedback every 0.2 s or so (draft-holmer-rmcat-...-01 §3.1).
    assert step["transport_feedback"] >= 4 * 3 * step["window_s"], step
    assert result["feedback"] is True
    assert step["received_pps"] > 0.99 * step["egress_pps"]
    assert "max_egress_pps" not in result
    assert 200 < result["egress_pps_per_subscription"] < 450  # the top layer, not layer 0
    assert 0.9 < result["delivery"] <= 1.0
    assert (tmp_path / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "egress pps" in proc.stdout and "sfu" in proc.stdout  # the table
    assert "%" in proc.stderr  # the progress bar


def test_soak_and_churn_runs(tmp_path: Path) -> None:
    """Short runs of the long scenarios: samples, a summary and plots come out."""
    # Without feedback: 4 s is shorter than the estimate's ramp, and a paced subscriber with
    # a low first estimate loses what its pacer expires (the feedback path has its own test).
    doc, _ = _bench(
        tmp_path, "soak", "--subscribers", "3", "--duration", "4", "--sample", "1", "--no-feedback"
    )
    assert doc["scenario"] == "soak" and len(doc["samples"]) >= 3
    first = doc["samples"][0]
    assert first["rss_bytes"] > 0 and first["fds"] > 0 and first["receiver_reports"] >= 2
    assert doc["summary"]["loss_windows"] == 0
    assert (tmp_path / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc, _ = _bench(tmp_path, "churn", "--cycles", "6", "--concurrency", "2", "--settle", "0")
    assert doc["scenario"] == "churn" and doc["cycles"] == 6 and doc["failures"] == 0
    assert doc["transports_end"] == 0 and doc["rss_end_bytes"] > 0


def test_find_max_with_a_tiny_step_budget(tmp_path: Path) -> None:
    doc, proc = _bench(
        tmp_path,
        "fanout",
        "--find-max",
        "--subscribers", "3",
        "--duration", "1.5",
        "--warmup", "0.5",
        "--no-feedback",  # the top layer from the first packet: twice the rate, twice the packets
        "--max-steps", "2",
        "--step-factor", "2",
    )  # fmt: skip
    (result,) = doc["targets"]
    steps = result["steps"]
    assert 1 <= len(steps) <= 2
    assert [s["rate"] for s in steps] == [1.0, 2.0][: len(steps)]
    bound = result["p99_bound_ms"]
    assert bound == 50.0 and all(s["p99_bound_ms"] == bound for s in steps)
    ok = [
        s["egress_pps"]
        for s in steps
        if s["loss"] <= doc["loss_limit"]
        and s["delivery"] >= doc["delivery_limit"]
        and s["latency_p99_ms"] is not None
        and s["latency_p99_ms"] <= bound
    ]
    assert result["max_egress_pps"] == (max(ok) if ok else 0.0)
    if len(steps) == 2:  # twice the frame rate: about twice the packets
        assert 1.6 < steps[1]["egress_pps"] / steps[0]["egress_pps"] < 2.4
    assert result["stopped_by"] in ("steps", "loss", "backlog", "p99")
    assert "max sustained egress" in proc.stdout and "p99 <= 50 ms" in proc.stdout


def test_many_rooms_at_once(tmp_path: Path) -> None:
    """``--rooms 2``: the meeting's plan in two rooms, every subscriber receiving."""
    doc, proc = _bench(
        tmp_path, "meeting", "--participants", "2", "--rooms", "2", "--duration", "1.5",
        "--warmup", "0.5", "--no-feedback",
    )  # fmt: skip
    (result,) = doc["targets"]
    assert result["rooms"] == 2
    assert result["publishers"] == 4 and result["subscriptions"] == 4
    # Each subscription: Opus (50 pps) and the top layer (~240 pps).
    assert 4 * 200 < result["egress_pps"] < 4 * 450, result
    assert result["loss"] < 0.01
    assert "2 rooms x 2 participants" in proc.stdout


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "meeting", "--participants", "1"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 2
    assert "participants" in proc.stderr


def _contexts(srtp_module: ModuleType) -> tuple[Any, Any]:
    key, salt = bytes(range(16)), bytes(range(12))
    gcm = "SRTP_AEAD_AES_128_GCM"
    out = srtp_module.SrtpContext(gcm, key, salt, outbound=True)
    inb = srtp_module.SrtpContext(gcm, key, salt, outbound=False)
    return out, inb


@pytest.fixture(params=["python", "cython"])
def engine_modules(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    """The load generator and the SRTP module it is given: references, then compiled."""
    if request.param == "python":
        return _loadgen_py, _srtp_py
    return load_compiled("bench._loadgen"), load_compiled("sfu._fastpath._srtp")


def test_engine_loopback(engine_modules: tuple[ModuleType, ModuleType]) -> None:
    """A sender and a receiver over a loopback socket pair: everything arrives, once."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        a.setblocking(False)
        b.setblocking(False)
        module, srtp_module = engine_modules
        out, inb = _contexts(srtp_module)
        engine = module.Engine(8)
        sender = engine.add_sender(a, out, [VIDEO, AUDIO], time.monotonic_ns())
        receiver = engine.add_receiver(b, inb)
        a.send(b"\x00\x01\x00\x00" + bytes(16))  # a STUN-looking datagram: control, not media
        engine.run(0.5)
        engine.request_keyframe(sender)
        engine.run(0.1)
        sent = engine.sender_counters(sender)
        snap = engine.receiver_snapshot(receiver)
        assert sent["packets"] > 20 and sent["send_errors"] == 0
        assert snap["srtp_errors"] == 0
        received = sum(s[1] for s in snap["streams"])
        assert received == sent["packets"]
        assert {s[0] for s in snap["streams"]} == {VIDEO.ssrc, AUDIO.ssrc}
        assert all(s[5] - s[4] + 1 == s[1] and s[2] == 0 for s in snap["streams"])
        assert sum(snap["hist"]) == received
        p99 = percentile_ns(snap["hist"], 0.99)
        assert p99 is not None and p99 < 1e9
        control = engine.control()
        assert control == [(receiver, b"\x00\x01\x00\x00" + bytes(16))]
        assert engine.control() == []
        with pytest.raises(ValueError):
            engine.receiver_snapshot(sender)
    finally:
        a.close()
        b.close()


def test_engine_loopback_transport_wide_sequence(
    engine_modules: tuple[ModuleType, ModuleType],
) -> None:
    """A sender numbering all its streams' packets with one transport-wide sequence; the
    receiver records each one's number, SSRC and arrival time for transport-wide feedback."""
    from dataclasses import replace

    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        a.connect(b.getsockname())
        b.connect(a.getsockname())
        a.setblocking(False)
        b.setblocking(False)
        module, srtp_module = engine_modules
        out, inb = _contexts(srtp_module)
        engine = module.Engine(8)
        specs = [replace(VIDEO, twcc_id=3), replace(AUDIO, twcc_id=3)]
        sender = engine.add_sender(a, out, specs, time.monotonic_ns())
        receiver = engine.add_receiver(b, inb, 3)
        with pytest.raises(ValueError):
            engine.add_receiver(socket.socket(socket.AF_INET, socket.SOCK_DGRAM), inb, 15)
        before = time.monotonic_ns()
        engine.run(0.3)
        after = time.monotonic_ns()
        sent = engine.sender_counters(sender)["packets"]
        arrivals = engine.take_arrivals(receiver)
        assert engine.take_arrivals(receiver) == [] and engine.arrivals_dropped(receiver) == 0
        assert sent > 10 and len(arrivals) == sent
        # One sequence over both streams: 0, 1, 2, ... in the order they were sent.
        assert sorted(seq for seq, _, _ in arrivals) == list(range(sent))
        assert {ssrc for _, ssrc, _ in arrivals} == {VIDEO.ssrc, AUDIO.ssrc}
        assert all(before <= at <= after for _, _, at in arrivals)
        with pytest.raises(ValueError):
            engine.take_arrivals(sender)
    finally:
        a.close()
        b.close()
