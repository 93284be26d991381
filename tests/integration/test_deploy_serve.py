"""The configs deploy/ ships start a real server that its probes see ready, and SIGTERM
ends it inside the stop timeout the same deployment sets.

Each config (the systemd node's with its secrets file, the container image's, the Helm
chart's rendered for a node) runs as ``sfu serve --config FILE`` with the environment that
deployment gives it. Only what cannot be reached here is overridden, through ``SFU_*``
variables (as an operator would): listeners on 127.0.0.1 and free ports, one worker, the
audit log in the test's folder, a real ``redis-server`` on loopback instead of 10.0.0.5, and
link certificates minted for the node. The Containerfile's HEALTHCHECK command runs as
written (with this Python) against the ops port, and must fail once the server is gone.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_files import (
    CONTAINER_CONFIG,
    CONTAINERFILE,
    JWT,
    SYSTEMD_CONFIG,
    SYSTEMD_ENV,
    UNIT,
    chart_values,
    env_file,
    instructions,
    pod_environment,
    render_chart,
    stages,
    unit_settings,
)
from redis_server import RedisServer, redis_server
from serve_process import TIMEOUT, ServeProcess

from sfu.cluster.pki import mint_ca, mint_node_cert, write_pem
from sfu.config import load_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(port: int, path: str) -> int | None:
    """HTTP status of GET ``path`` on 127.0.0.1:``port``, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


def _healthcheck(ops_port: int) -> int:
    """Exit status of the Containerfile's HEALTHCHECK command, run as written."""
    final = dict(stages(CONTAINERFILE)[1])
    health = final["HEALTHCHECK"]
    command = json.loads(health[health.index("CMD") + 3 :])
    assert command[0] == "python"
    env = {"SFU_HTTP_OPS_PORT": str(ops_port), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, timeout=30, check=False
    )
    return done.returncode


def _loopback(tmp_path: Path, ops_port: int) -> dict[str, str]:
    return {
        "SFU_HTTP_HOST": "127.0.0.1",
        "SFU_HTTP_PORT": "0",
        "SFU_HTTP_OPS_HOST": "127.0.0.1",
        "SFU_HTTP_OPS_PORT": str(ops_port),
        "SFU_MEDIA_UDP_HOST": "127.0.0.1",
        "SFU_MEDIA_UDP_PORT": "0",
        "SFU_MEDIA_TCP_PORT": "0",
        "SFU_MEDIA_ANNOUNCED_ADDRESSES": "127.0.0.1",
        "SFU_AUDIT_PATH": str(tmp_path / "audit"),
    }


def _link(tmp_path: Path, node: str) -> dict[str, str]:
    """A QUIC link on a free loopback port, with certificates for ``node``."""
    ca_cert, ca_key = mint_ca("deploy test")
    cert, key = mint_node_cert(ca_cert, ca_key, node)
    (tmp_path / "ca.pem").write_bytes(ca_cert)
    (tmp_path / "node.pem").write_bytes(cert)
    write_pem(tmp_path / "node.key", key, private=True)
    port = _free_port(socket.SOCK_DGRAM)
    return {
        "SFU_CLUSTER_ADVERTISE_ADDRESS": f"127.0.0.1:{port}",
        "SFU_CLUSTER_LINK_PORT": str(port),
        "SFU_CLUSTER_CA_FILE": str(tmp_path / "ca.pem"),
        "SFU_CLUSTER_CERT_FILE": str(tmp_path / "node.pem"),
        "SFU_CLUSTER_KEY_FILE": str(tmp_path / "node.key"),
    }


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9]+)s?", text)
    assert match, text
    return float(match.group(1))


def _systemd(tmp_path: Path, redis: RedisServer) -> tuple[Path, dict[str, str], float]:
    env = env_file(SYSTEMD_ENV)
    env["SFU_CLUSTER_REDIS_URL"] = redis.url
    env.update(_link(tmp_path, "node-a"))
    # One process, as the shipped config says (a clustered node is one; the server refuses
    # more workers there).
    assert load_config(SYSTEMD_CONFIG, env).server.workers == "1"
    budget = _seconds(unit_settings(UNIT)["Service.TimeoutStopSec"][-1])
    return SYSTEMD_CONFIG, env, budget


def _container(tmp_path: Path, redis: RedisServer) -> tuple[Path, dict[str, str], float]:
    del tmp_path, redis  # a lone node: no Redis, no link
    # The stop timeout the image's header tells operators to use (`docker stop -t N`).
    header = CONTAINERFILE.read_text()
    budget = float(re.findall(r"docker stop -t (\d+)", header)[0])
    assert all(i != "ENV" or "SFU_" not in a for i, a in instructions(CONTAINERFILE))
    return CONTAINER_CONFIG, {"SFU_AUTH_JWT_SECRET": JWT, "SFU_SERVER_WORKERS": "1"}, budget


def _helm(tmp_path: Path, redis: RedisServer) -> tuple[Path, dict[str, str], float]:
    manifests = render_chart(chart_values())
    config = tmp_path / "sfu.toml"
    config.write_text(manifests["ConfigMap"]["data"]["sfu.toml"])
    env = {k: v for k, v in pod_environment(manifests).items() if k.startswith("SFU_")}
    env["SFU_CLUSTER_REDIS_URL"] = redis.url
    env.update(_link(tmp_path, env["SFU_CLUSTER_NODE_ID"]))
    env["SFU_SERVER_WORKERS"] = "1"
    budget = float(
        manifests["DaemonSet"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )
    return config, env, budget


@pytest.mark.parametrize(
    "deployment", [_systemd, _container, _helm], ids=["systemd", "container", "helm"]
)
def test_shipped_config_serves_answers_its_probes_and_stops_in_time(
    deployment: object, redis: RedisServer, tmp_path: Path
) -> None:
    assert callable(deployment)
    config, env, budget = deployment(tmp_path, redis)
    ops_port = _free_port(socket.SOCK_STREAM)
    env.update(_loopback(tmp_path, ops_port))
    proc = ServeProcess(config, extra_env=env)
    try:
        deadline = time.monotonic() + TIMEOUT
        while _status(ops_port, "/readyz") != 200:
            if proc.proc.poll() is not None:
                proc.finish()
                raise AssertionError("the server exited:\n" + proc.log)
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        assert _status(ops_port, "/healthz") == 200
        expected = load_config(config, env)
        if expected.cluster.redis_url:
            # Clustered as the deployment meant: its node id, registered in Redis (with
            # workers, the supervisor repeats worker 0's report once it has one).
            while True:
                url = f"http://127.0.0.1:{ops_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as r:
                    cluster = json.loads(r.read())["cluster"]
                assert cluster["node_id"] == expected.cluster.node_id
                if (cluster.get("directory"), cluster.get("lease")) == ("up", "live"):
                    break
                assert time.monotonic() < deadline + TIMEOUT, f"not registered: {cluster}"
                time.sleep(0.1)
        assert _healthcheck(ops_port) == 0
        started = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(timeout=budget) == 0
        assert time.monotonic() - started < budget
        # The probe fails once nothing answers (it can fail: the check above means something).
        assert _healthcheck(ops_port) != 0
    finally:
        proc.kill()
