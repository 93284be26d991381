"""Paced egress leaves from the data plane: no Python per packet.

Subscribers that send transport-wide CC feedback (here the bench's synthetic subscribers, as
browsers do) get a send-side estimate, and their media is queued in a per-transport pacer. What
the pacer lets go used to leave through Python, one ``sendto`` per packet; the forwarder now
releases it itself, with each batch's own egress or on the data plane's pacer timer, in
``sendmmsg`` batches. A real server in this process, the bench's load from a child process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from clients import running_server

from sfu.core.dataplane import DataPlane
from sfu.core.peer import Peer
from sfu.transport.transport import WebRtcTransport

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUBSCRIBERS = 4
BENCH_TIMEOUT_S = 60


def test_paced_media_is_sent_by_the_forwarder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent_by_python = [0]
    backlogged = [0]
    send_protected = WebRtcTransport.send_protected
    release_paced = DataPlane.release_paced

    def counting_send(self: WebRtcTransport, datagram: bytes) -> bool:
        sent_by_python[0] += 1
        return send_protected(self, datagram)

    def watching_release(self: DataPlane, now: float) -> float | None:
        due = release_paced(self, now)
        if due is not None:
            backlogged[0] += 1
            assert self.forwarder.paced_backlog(), "a deadline without a backlog"
        return due

    monkeypatch.setattr(WebRtcTransport, "send_protected", counting_send)
    monkeypatch.setattr(DataPlane, "release_paced", watching_release)
    peers: list[Peer] = []
    retire = Peer.retire

    def keep(self: Peer) -> None:
        peers.append(self)
        retire(self)

    monkeypatch.setattr(Peer, "retire", keep)

    async def scenario() -> dict[str, Any]:
        async with running_server() as (server, base):
            forwarder = server.dataplane.forwarder
            sent0 = forwarder.sent_packets
            out = tmp_path / "result.json"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench", "fanout", "--target", base,
                "--jwt-secret", server.token_secret, "--subscribers", str(SUBSCRIBERS),
                "--duration", "2", "--json", str(out), "--no-pin", "--quiet",
                cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), BENCH_TIMEOUT_S)
            assert proc.returncode == 0, err.decode()[-3000:]
            doc = json.loads(out.read_text())
            await asyncio.sleep(0.5)  # the viewers' DELETEs: their peers retire
            doc["forwarder_sent"] = forwarder.sent_packets - sent0
            doc["python_rtp_sent"] = server.port.counters.sent.get("rtp", 0)
            return doc

    doc = asyncio.run(scenario())
    (result,) = doc["targets"]
    assert result["feedback"] is True and result["loss"] < 0.01, result
    # The estimate reached the top layer (the bench's warm-up), so the media was paced.
    assert 200 < result["egress_pps_per_subscription"] < 450, result
    subscribers = [p for p in peers if p.subscriptions or p.counters.paced_packets]
    assert len(subscribers) >= SUBSCRIBERS
    paced = sum(p.counters.paced_packets for p in subscribers)
    received = result["egress_pps"] * result["steps"][0]["window_s"]
    assert paced > received, "every subscriber's media went through its pacer"
    # ... and left from the forwarder: none of it through Python's per-packet send.
    assert doc["forwarder_sent"] >= paced
    assert sent_by_python[0] == 0
    # What Python sent is what never was paced: a first probe or retransmission before the
    # subscriber had an estimate (and so a pacer).
    assert doc["python_rtp_sent"] < 0.01 * paced, (doc["python_rtp_sent"], paced)
    # Frames larger than the burst allowance waited in a backlog that the data plane timed.
    assert backlogged[0] > 0
