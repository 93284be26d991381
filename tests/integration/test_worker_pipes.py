"""Two worker processes behind a supervisor open their pipes to each other: each reports
its pipe port, the supervisor tells the other, and each sees its peer up in ``/metrics``
(with the bounded ``worker`` and ``peer`` labels). Loopback only; bounded waits."""

from __future__ import annotations

import time
import urllib.request

from meeting import supervisor_thread
from prometheus_client.parser import text_string_to_metric_families

#: Bound on the wait for both pipes to be up (the first HELLO crosses at once; the peer is
#: up on the first datagram heard).
WAIT_S = 15.0


def _peer_up(base: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "sfu_pipe_peer_up":
            for sample in family.samples:
                out[sample.labels["worker"], sample.labels["peer"]] = sample.value
    return out


def test_workers_open_pipes_to_each_other() -> None:
    with supervisor_thread(workers=2) as server:
        workers = server.supervisor.workers
        assert all(w.pipe_port for w in workers)
        assert len({w.pipe_port for w in workers}) == 2
        deadline = time.monotonic() + WAIT_S
        up: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            up = _peer_up(server.base)
            if up == {("0", "1"): 1.0, ("1", "0"): 1.0}:
                break
            time.sleep(0.2)
        assert up == {("0", "1"): 1.0, ("1", "0"): 1.0}
