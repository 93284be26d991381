"""``python -m bench fanout --cluster``: a tiny real run over two clustered nodes.

The bench starts a real ``redis-server`` and two ``sfu serve`` nodes linked over QUIC (a
cluster CA minted for the run), puts the publisher on node A and the subscribers on node B,
then the same load all on node A. The relay arm's subscribers must receive what node A
relayed over the link; the JSON must hold both arms and their step-by-step comparison; and
nothing the bench started may outlive it, also when it is interrupted (SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: Bound on one tiny run (two nodes and Redis started, two arms of a few seconds each).
TIMEOUT_S = 120
#: Bound on the bench's exit after SIGINT (sessions closed, nodes drained and stopped).
INTERRUPT_EXIT_S = 30.0


def _env(tmp_path: Path) -> dict[str, str]:
    """The bench's environment: its temporary files (nodes' configs, Redis's directory, the
    cluster's keys) under ``tmp_path/tmp``, so what it leaves behind can be checked."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    return dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(scratch))


def _left_behind(tmp_path: Path) -> list[str]:
    """Processes whose command line names ``tmp_path`` (Redis's --dir, a node's --config),
    and files left in the bench's temporary folder."""
    alive = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp_path) in cmdline:
            alive.append(f"{proc.name}: {cmdline}")
    return alive + [str(p) for p in (tmp_path / "tmp").iterdir()]


def _settled(tmp_path: Path) -> list[str]:
    """What is left behind, once processes being reaped had a moment to go."""
    deadline = time.monotonic() + 5.0
    while (left := _left_behind(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def test_subscribers_on_node_b_receive_what_node_a_relays(tmp_path: Path) -> None:
    out = tmp_path / "cluster.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "fanout", "--cluster", "--subscribers", "3",
            "--rates", "1", "--duration", "1.5", "--warmup", "1", "--no-feedback",
            "--no-pin", "--quiet", "--json", str(out),
        ],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    arms = {t["target"]: t for t in doc["targets"]}
    assert sorted(arms) == ["1-node", "2-nodes"]
    relay, base = arms["2-nodes"]["steps"][0], arms["1-node"]["steps"][0]
    # The subscribers on node B received media, and it came over the link from node A.
    assert relay["received_pps"] > 0 and relay["egress_pps"] > 0
    assert relay["link"]["node-a"]["published_pps"] > 0
    assert relay["link"]["node-b"]["received_pps"] > 0
    assert relay["server_cpu_by_node"]["node-b"]["cpu_s"] > 0
    # The baseline had everything on node A: nothing crossed the link.
    assert base["received_pps"] > 0
    assert base["link"]["node-a"]["published_pps"] == 0
    # One comparison step per rate, with the figures the report is about.
    (step,) = doc["cluster"]["steps"]
    assert step["rate"] == 1.0 and step["relayed_pps"] > 0
    assert step["cpu_per_delivered_packet_ratio"] is not None
    assert step["added_p99_ms"] is not None
    assert "2-nodes / 1-node" in proc.stdout
    assert _settled(tmp_path) == []


def test_a_spread_room_on_a_clustered_node_reaches_both_workers(tmp_path: Path) -> None:
    """``--clustered --workers 2 --spread 2``: the local server is a clustered node whose
    workers are cluster members; the room's later subscribers are on the second worker, fed
    over the workers' node link, and receive everything; Redis and the keys are gone after."""
    out = tmp_path / "clustered.json"
    proc = subprocess.run(
        [
            sys.executable, "-m", "bench", "fanout", "--clustered", "--workers", "2",
            "--spread", "2", "--subscribers", "4", "--rate", "1", "--duration", "1.5",
            "--warmup", "1", "--no-feedback", "--no-pin", "--quiet", "--json", str(out),
        ],
        cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    (step,) = doc["targets"][0]["steps"]
    ports = step["by_server_port"]
    assert len(ports) == 2, ports  # subscribers on both workers' media ports
    assert all(port["loss"] == 0.0 for port in ports.values()), ports
    assert step["loss"] == 0.0 and step["egress_pps"] > 0
    assert _settled(tmp_path) == []


def test_an_interrupted_cluster_run_leaves_no_process_or_file(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [
            sys.executable, "-m", "bench", "fanout", "--cluster", "--subscribers", "2",
            "--rates", "1", "--duration", "60", "--warmup", "1", "--no-feedback", "--no-pin",
        ],
        cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert bench.stderr is not None
        deadline = time.monotonic() + TIMEOUT_S
        # The progress bar (one line per 10 % on a pipe) names the arm once it measures.
        for line in bench.stderr:
            if "2-nodes fanout" in line or time.monotonic() > deadline:
                break
        assert bench.poll() is None, "the bench ended before it was interrupted"
        bench.send_signal(signal.SIGINT)
        rc = bench.wait(timeout=INTERRUPT_EXIT_S)
        assert rc == 130
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert _settled(tmp_path) == []
