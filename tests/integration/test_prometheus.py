"""A real Prometheus scrapes a running server under media load; every dashboard query and
alert rule evaluates through its HTTP API, and the shipped configs pass ``promtool``.

Prometheus (Debian package ``prometheus``, installed by ``make test``) runs on loopback with a
generated config: a 1 s scrape of the in-process server and the repository's alert rules.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clients import TIMEOUT, running_server
from media_load import media_load

from bench.dashboard import render

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "configs" / "grafana" / "sfu-overview.json"
PROMETHEUS_YML = REPO / "configs" / "prometheus" / "prometheus.yml"
ALERTS_YML = REPO / "configs" / "prometheus" / "alerts.yml"
#: Panels of the dashboard's "Cluster" row that only a clustered node feeds (node links and
#: the relay between nodes): empty against the single node here;
#: test_cluster_media_aiortc.py checks that a linked node exports every metric they query.
CLUSTER_ONLY_PANELS = frozenset(
    {"Node links", "Relayed media between nodes", "Node link round trip"}
)
_METRIC_RE = re.compile(r"\b(sfu_[a-z0-9_]+)[{\[]")
#: What Grafana would put in for the dashboard's variables on a short time range.
VARIABLES = {"$__rate_interval": "10s", "$__range": "1m", "$instance": ".*"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, f"{name} is not installed (make test installs Debian's prometheus)"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with variables filled in) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr))
    return out


def panel_metrics(titles: frozenset[str]) -> set[str]:
    """The metric names the panels called ``titles`` query."""
    names = {
        name
        for title, expr in panel_queries()
        if title in titles
        for name in _METRIC_RE.findall(expr)
    }
    assert names, titles
    return names


def alert_exprs() -> list[tuple[str, str]]:
    import yaml

    rules = yaml.safe_load(ALERTS_YML.read_text("utf-8"))
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def test_shipped_configs_pass_promtool() -> None:
    promtool = tool("promtool")
    for args in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(ALERTS_YML)]):
        result = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus for a scrape target given later; yields a starter function."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> str:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {ALERTS_YML}\n"
            "scrape_configs:\n  - job_name: sfu\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n"
        )
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    tool("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()


async def api(http: aiohttp.ClientSession, url: str, **params: str) -> Any:
    async with http.get(url, params=params) as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", (url, params, body)
        return body["data"]


async def wait_until(check: Any, timeout: float = 4 * TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await check():
                return
        except (aiohttp.ClientError, AssertionError):
            pass
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.5)


def test_real_prometheus_evaluates_every_panel_and_alert(prometheus: Any, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_server() as (server, base):
            prom = prometheus(int(base.rsplit(":", 1)[1]))
            timeout = aiohttp.ClientTimeout(total=TIMEOUT)
            async with aiohttp.ClientSession(timeout=timeout) as http:

                async def ready() -> bool:
                    async with http.get(f"{prom}/-/ready") as resp:
                        return resp.status == 200

                await wait_until(ready)
                async with media_load(base, server.token_secret, "prom-room", viewers=2):
                    query = f"{prom}/api/v1/query"

                    async def scraped_media() -> bool:
                        data = await api(http, query, query="sum(sfu_rtp_packets_forwarded_total)")
                        samples = await api(http, query, query="count_over_time(sfu_ready[1m])")
                        return (
                            bool(data["result"])
                            and float(data["result"][0]["value"][1]) > 0
                            and bool(samples["result"])
                            and float(samples["result"][0]["value"][1]) >= 6
                        )

                    await wait_until(scraped_media)
                    await asyncio.sleep(3)  # a few scrapes with media flowing all along

                    empty = []
                    for title, expr in panel_queries():
                        data = await api(http, query, query=expr)
                        if not data["result"] and title not in CLUSTER_ONLY_PANELS:
                            empty.append((title, expr))
                    assert not empty, f"panel queries without data: {empty}"
                    labels_url = f"{prom}/api/v1/label/instance/values"
                    instances = await api(http, labels_url, **{"match[]": "sfu_build_info"})
                    assert instances, "the dashboard's instance variable would be empty"

                    for _alert, expr in alert_exprs():
                        await api(http, query, query=expr)  # evaluates without error

                    async def rules_evaluated() -> bool:
                        data = await api(http, f"{prom}/api/v1/rules")
                        rules = [r for g in data["groups"] for r in g["rules"]]
                        assert {r["name"] for r in rules} == {n for n, _ in alert_exprs()}
                        bad = [
                            (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"
                        ]
                        assert not bad, bad
                        return all(r["health"] == "ok" for r in rules)

                    await wait_until(rules_evaluated)
                    # The server is healthy: nothing fires.
                    alerts = await api(http, f"{prom}/api/v1/alerts")
                    firing = [a["labels"]["alertname"] for a in alerts["alerts"]]
                    assert "SfuDown" not in firing and "SfuNotReady" not in firing

                    # bench.dashboard draws every panel from the same Prometheus.
                    out = tmp_path / "dashboard.png"
                    drawn = await asyncio.to_thread(render, prom, 60, out)
                    panels = json.loads(DASHBOARD.read_text())["panels"]
                    shown = [p for p in panels if p["type"] != "row"]
                    assert drawn == sum(1 for p in shown if p["title"] not in CLUSTER_ONLY_PANELS)
                    assert out.read_bytes().startswith(b"\x89PNG")

    asyncio.run(asyncio.wait_for(scenario(), 8 * TIMEOUT))
