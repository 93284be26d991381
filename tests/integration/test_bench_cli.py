"""``python -m bench``: a short real run against a locally started server, and find-max.

Each run starts ``python -m sfu serve`` itself, connects synthetic publishers and subscribers
over real signaling, ICE and DTLS-SRTP on loopback, and writes the JSON and the plot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
    doc, proc = _bench(tmp_path, "fanout", "--subscribers", "4", "--duration", "2", "--warmup", "1")
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
    assert 0 < result["latency_p50_ms"] <= result["latency_p99_ms"] < 500
    assert result["server_cpu_s_per_million_packets"] > 0
    (step,) = result["steps"]
    assert step["srtp_errors"] == 0 and step["duplicates"] == 0
    assert step["received_pps"] > 0.99 * step["egress_pps"]
    assert "max_egress_pps" not in result
    assert (tmp_path / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "egress pps" in proc.stdout and "sfu" in proc.stdout  # the table
    assert "%" in proc.stderr  # the progress bar


def test_find_max_with_a_tiny_step_budget(tmp_path: Path) -> None:
    doc, proc = _bench(
        tmp_path,
        "fanout",
        "--find-max",
        "--subscribers", "3",
        "--duration", "1.5",
        "--warmup", "0.5",
        "--max-steps", "2",
        "--step-factor", "2",
    )  # fmt: skip
    (result,) = doc["targets"]
    steps = result["steps"]
    assert 1 <= len(steps) <= 2
    assert [s["rate"] for s in steps] == [1.0, 2.0][: len(steps)]
    ok = [s["egress_pps"] for s in steps if s["loss"] <= doc["loss_limit"]]
    assert result["max_egress_pps"] == (max(ok) if ok else 0.0)
    assert result["max_egress_pps"] > 3 * 200
    if len(steps) == 2:  # twice the frame rate: about twice the packets
        assert 1.6 < steps[1]["egress_pps"] / steps[0]["egress_pps"] < 2.4
    assert result["stopped_by"] in ("steps", "loss")
    assert "max sustained egress" in proc.stdout


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
