"""The files in deploy/ read as the tools that use them read them: shared by
tests/unit/test_deploy.py and tests/integration/test_deploy_serve.py.

The Helm chart is rendered with tests/unit/helm_render.py (Helm itself is not installable
on the project's machines), for a pod on node NODE whose address is HOST_IP.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from helm_render import render

from sfu.config import Config, parse_config
from sfu.workers.supervisor import _CLOSE_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "sfu.service"
SYSTEMD_CONFIG = DEPLOY / "systemd" / "sfu.toml"
SYSTEMD_ENV = DEPLOY / "systemd" / "sfu.env"
SYSCTL = DEPLOY / "sysctl" / "90-sfu.conf"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
CONTAINER_CONFIG = DEPLOY / "container" / "sfu.toml"
CHART = DEPLOY / "helm" / "sfu"

#: The install prefix the unit and the image use (a virtual environment).
PREFIX = "/opt/sfu"
#: After the drain, the server closes its sockets within _CLOSE_TIMEOUT_S and the supervisor
#: allows one second more (sfu/workers/supervisor.py): the stop timeouts must exceed this.
STOP_OVERHEAD_S = _CLOSE_TIMEOUT_S + 1.0
#: Stand-ins for the secrets an operator provides at run time (long enough to validate).
JWT = "j" * 48
REDIS_URL = "redis://:password@10.0.0.5:6379/0"
#: The node the chart's pod is scheduled on, and that node's address, in the render tests.
NODE = "node-b"
HOST_IP = "10.0.0.12"


def env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path.name}: not NAME=value: {line!r}"
            env[name] = value
    return env


def unit_settings(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given (repeated keys accumulate, as in systemd)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def stages(path: Path) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in instructions(path):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def chart_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert isinstance(values, dict)
    return values


def render_chart(values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every template rendered with ``values``: kind -> manifest (one of each kind)."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    context = {
        "Values": values,
        "Release": {"Name": "edge", "Namespace": "sfu"},
        "Chart": {"Name": chart["name"], "Version": chart["version"]},
    }
    manifests: dict[str, dict[str, Any]] = {}
    for template in sorted((CHART / "templates").glob("*.yaml")):
        for document in yaml.safe_load_all(render(template.read_text(), context)):
            if document:
                assert document["kind"] not in manifests
                manifests[document["kind"]] = document
    return manifests


def pod_container(manifests: Mapping[str, Any]) -> dict[str, Any]:
    pod = manifests["DaemonSet"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert isinstance(container, dict)
    return container


def expand(value: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion of an env value (earlier variables only)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), value)


def pod_environment(manifests: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment on node NODE (address HOST_IP), secrets filled in."""
    fieldchart_values = {"spec.nodeName": NODE, "status.hostIP": HOST_IP}
    secrets = {"jwt-secret": JWT, "redis-url": REDIS_URL, "turn": "t" * 32}
    env: dict[str, str] = {}
    for item in pod_container(manifests)["env"]:
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = fieldchart_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = secrets[item["valueFrom"]["secretKeyRef"]["key"]]
    return env


def pod_config(manifests: Mapping[str, Any]) -> Config:
    toml = manifests["ConfigMap"]["data"]["sfu.toml"]
    env = {k: v for k, v in pod_environment(manifests).items() if k.startswith("SFU_")}
    return parse_config(tomllib.loads(toml), env)
