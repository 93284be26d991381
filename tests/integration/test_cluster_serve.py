"""``sfu serve`` with ``[cluster] redis_url``: the node registers in a real redis-server,
renews its lease, shows its cluster state in ``/readyz`` and ``sfu_cluster_*`` metrics,
keeps its room policies in Redis, and deregisters on SIGTERM; two such nodes link over QUIC."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import RedisServer, redis_server
from serve_process import HTTP_RE, TIMEOUT, ServeProcess, http_get

from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem

pytestmark = pytest.mark.integration

#: The cluster's join-token secret (required on every clustered node).
SECRET = "cluster-serve-test-secret-of-enough-length-01234"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=TIMEOUT) as resp:
        return str(resp.read().decode())


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the metrics")


def test_serve_registers_renews_and_deregisters(server: RedisServer, tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        "[server]\ndrain_timeout_s = 1.0\n"
        '[audit]\npath = ""\n'
        f'[auth]\njwt_secret = "{SECRET}"\n'
        f'[cluster]\nredis_url = "{server.url}"\nnode_id = "node-a"\nregion = "eu"\n'
    )
    check = redis.Redis.from_url(server.url, decode_responses=True)
    # A policy another node stored is in force here from the start.
    check.set(
        "sfu:policy:locked-room",
        json.dumps(
            {
                "waiting_room": False,
                "locked": True,
                "max_participants": 5,
                "e2ee_required": False,
                "password": None,
            }
        ),
    )
    proc = ServeProcess(config)
    try:
        port = int(proc.wait_for(HTTP_RE).group(1))
        proc.wait_for(re.compile(r"restored 1 room policies and 0 bans from redis"))
        status, body = http_get(port, "/readyz")
        assert status == 200
        assert body["cluster"] == {
            "node_id": "node-a",
            "region": "eu",
            "directory": "up",
            "lease": "live",
            "nodes_alive": 1,
            "draining": False,
        }
        entry = json.loads(check.get("sfu:node:node-a") or "{}")
        assert entry["region"] == "eu"
        # The lease is renewed: its expiry keeps moving back up towards 3 s.
        deadline = time.monotonic() + 5.0
        renewed = 0.0
        while time.monotonic() < deadline:
            text = _metrics(port)
            renewed = _metric(text, "sfu_cluster_lease_renewals_total")
            if renewed >= 3:
                break
            time.sleep(0.2)
        assert renewed >= 3
        assert 0 < int(check.pttl("sfu:node:node-a")) <= 3000
        assert _metric(text, "sfu_cluster_directory_up") == 1.0
        assert _metric(text, "sfu_cluster_nodes") == 1.0
        assert "node-a" not in text  # no node ids (nor rooms, nor people) in metrics
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.finish() == 0
        # Deregistered at once, not left to lapse.
        assert check.exists("sfu:node:node-a") == 0
    finally:
        proc.kill()
        check.close()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_nodes_link_and_see_each_other(server: RedisServer, tmp_path: Path) -> None:
    """Two `sfu serve` nodes with certificates of one CA: each sees the other alive in the
    directory, one QUIC link comes up between them (the smaller id dials), and a node's
    SIGTERM removes it from the other's view at once."""
    ca_cert, ca_key = mint_ca()
    (tmp_path / "ca.pem").write_bytes(ca_cert)
    procs: dict[str, ServeProcess] = {}
    ports: dict[str, int] = {}
    try:
        for node in ("node-a", "node-b"):
            cert, key = mint_node_cert(ca_cert, ca_key, node)
            (tmp_path / f"{node}.pem").write_bytes(cert)
            write_pem(tmp_path / f"{node}.key", key, private=True)
            link_port = _free_udp_port()
            config = tmp_path / f"{node}.toml"
            config.write_text(
                '[http]\nhost = "127.0.0.1"\nport = 0\n'
                '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
                "[server]\ndrain_timeout_s = 1.0\n"
                '[audit]\npath = ""\n'
                f'[auth]\njwt_secret = "{SECRET}"\n'
                f'[cluster]\nredis_url = "{server.url}"\nnode_id = "{node}"\n'
                f'advertise_address = "127.0.0.1:{link_port}"\nlink_port = {link_port}\n'
                f'ca_file = "{tmp_path / "ca.pem"}"\ncert_file = "{tmp_path / node}.pem"\n'
                f'key_file = "{tmp_path / node}.key"\n'
            )
            procs[node] = ServeProcess(config)
            ports[node] = int(procs[node].wait_for(HTTP_RE).group(1))
        deadline = time.monotonic() + 8.0
        while True:
            views = {node: http_get(port, "/readyz")[1]["cluster"] for node, port in ports.items()}
            if views["node-a"]["links_up"] == ["node-b"] and views["node-b"]["links_up"] == [
                "node-a"
            ]:
                break
            assert time.monotonic() < deadline, views
            time.sleep(0.2)
        assert all(view["nodes_alive"] == 2 for view in views.values())
        text = _metrics(ports["node-b"])
        assert _metric(text, "sfu_cluster_links_up") == 1.0
        assert _metric(text, "sfu_cluster_links_established_total") == 1.0
        # Each side's sealed media lane keys over the link's control stream right after.
        deadline = time.monotonic() + 3.0
        while _metric(text, "sfu_cluster_links_sealed") != 1.0:
            assert time.monotonic() < deadline, "the media lane never keyed"
            time.sleep(0.1)
            text = _metrics(ports["node-b"])
        procs["node-a"].proc.send_signal(signal.SIGTERM)
        assert procs["node-a"].finish() == 0
        deadline = time.monotonic() + 3.0  # deregistered: seen at the next renewal (1 s)
        while http_get(ports["node-b"], "/readyz")[1]["cluster"]["nodes_alive"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for proc in procs.values():
            proc.kill()


def test_missing_link_certificate_stops_the_start_naming_the_keys(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        '[audit]\npath = ""\n'
        '[cluster]\nadvertise_address = "127.0.0.1:4433"\n'
        f'ca_file = "{tmp_path}/none.pem"\ncert_file = "{tmp_path}/none.pem"\n'
        f'key_file = "{tmp_path}/none.key"\n'
    )
    proc = ServeProcess(config)
    try:
        assert proc.finish() == 1
        assert "cluster.ca_file, cluster.cert_file or cluster.key_file cannot be used" in proc.log
    finally:
        proc.kill()


def test_serve_stays_ready_through_a_redis_restart(server: RedisServer, tmp_path: Path) -> None:
    """Redis killed under a running node: the node stays ready (its media does not depend on
    Redis) and says the directory is down; Redis back: registered again within 5 s."""
    config = tmp_path / "node.toml"
    config.write_text(
        '[http]\nhost = "127.0.0.1"\nport = 0\n'
        '[media]\nudp_host = "127.0.0.1"\nudp_port = 0\n'
        "[server]\ndrain_timeout_s = 1.0\n"
        '[audit]\npath = ""\n'
        f'[auth]\njwt_secret = "{SECRET}"\n'
        f'[cluster]\nredis_url = "{server.url}"\nnode_id = "node-r"\n'
    )
    proc = ServeProcess(config)
    try:
        port = int(proc.wait_for(HTTP_RE).group(1))
        assert http_get(port, "/readyz")[1]["cluster"]["directory"] == "up"
        server.kill()
        deadline = time.monotonic() + 4.0
        while (reply := http_get(port, "/readyz"))[1]["cluster"]["directory"] != "down":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert reply[0] == 200
        server.start()
        started = time.monotonic()
        check = redis.Redis.from_url(server.url)
        try:
            while not (
                check.exists("sfu:node:node-r")
                and http_get(port, "/readyz")[1]["cluster"]["directory"] == "up"
            ):
                assert time.monotonic() - started < 5.0
                time.sleep(0.1)
        finally:
            check.close()
        assert _metric(_metrics(port), "sfu_cluster_directory_reconnects_total") >= 1
    finally:
        proc.kill()
