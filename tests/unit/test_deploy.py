"""The deployment artifacts in deploy/ agree with the server they deploy.

The systemd unit passes ``systemd-analyze verify``; every shipped config validates with the
server's own loader (with the secrets the operator adds from the environment, and fails
without them); every ``SFU_*`` name is a real key; drain timeouts fit inside the stop
timeouts; the sysctl drop-in covers the buffers the sockets ask for; the Containerfile
installs what the Makefile installs; the Helm chart renders (tests/unit/helm_render.py,
Helm itself is not installable here) into manifests with the host network, the probes and
the node id from the node's name.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from deploy_files import (
    CHART,
    CONTAINER_CONFIG,
    CONTAINERFILE,
    DEPLOY,
    HOST_IP,
    JWT,
    NODE,
    PREFIX,
    REDIS_URL,
    ROOT,
    STOP_OVERHEAD_S,
    SYSCTL,
    SYSTEMD_CONFIG,
    SYSTEMD_ENV,
    UNIT,
    chart_values,
    env_file,
    instructions,
    pod_config,
    pod_container,
    pod_environment,
    render_chart,
    stages,
    unit_settings,
)
from helm_render import TemplateError, render

from sfu.config import (
    ENV_PREFIX,
    NON_CONFIG_ENV_VARS,
    Config,
    ConfigError,
    config_environment,
    load_config,
    parse_config,
)
from sfu.io.address_check import address_warnings
from sfu.io.pipe import PIPE_SOCKET_BUFFER_BYTES
from sfu.io.udp import SOCKET_BUFFER_BYTES


def _config_env_names() -> set[str]:
    return set(config_environment(Config()))


def _one(settings: Mapping[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values, f"{key} is not set"
    return values[-1]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)\s*(ms|s|min)?", text)
    assert match, text
    scale = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}[match.group(2)]
    return float(match.group(1)) * scale


def _systemd_config() -> Config:
    return load_config(SYSTEMD_CONFIG, env_file(SYSTEMD_ENV))


# --- systemd ---------------------------------------------------------------------------------


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on ``unit_text`` with the install prefix pointed at this
    test's own ``sfu`` (verify checks that ExecStart's program exists and is executable)."""
    sfu = Path(sys.executable).parent / "sfu"
    assert sfu.is_file(), "the sfu console script is not installed beside this Python"
    unit = tmp_path / "sfu.service"
    unit.write_text(unit_text.replace(f"{PREFIX}/bin/sfu", str(sfu)))
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing (Makefile DEB_TEST installs systemd)"
    return subprocess.run(
        [tool, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(UNIT.read_text(), tmp_path)
    # verify exits 0 on unknown keys and bad values too, and only says so: demand silence.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "" and result.stdout.strip() == "", result.stderr


def test_verify_reports_a_mistake(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported."""
    broken = UNIT.read_text().replace("LimitNOFILE=65536", "LimitNOFILE=lots\nRestartSecs=5")
    result = _verify(broken, tmp_path)
    assert "RestartSecs" in result.stderr
    assert "lots" in result.stderr


def test_unit_runs_the_shipped_config_with_its_secrets_from_the_environment() -> None:
    settings = unit_settings(UNIT)
    start = shlex.split(_one(settings, "Service.ExecStart"))
    assert start == [f"{PREFIX}/bin/sfu", "serve", "--config", "/etc/sfu/sfu.toml"]
    check = shlex.split(_one(settings, "Service.ExecStartPre"))
    assert check == [f"{PREFIX}/bin/sfu", "check-config", "/etc/sfu/sfu.toml"]
    assert _one(settings, "Service.EnvironmentFile") == "/etc/sfu/sfu.env"
    # The example files are what those paths hold; the secrets file makes the config valid...
    config = _systemd_config()
    assert config.cluster.redis_url and config.auth.jwt_secret
    # ...and the TOML alone holds neither secret (HTTP is on loopback behind the proxy, so
    # it still validates: a lone node with a per-process random token key).
    alone = load_config(SYSTEMD_CONFIG, {})
    assert alone.auth.jwt_secret == "" and alone.cluster.redis_url == ""


def test_unit_credentials_are_the_paths_the_config_names() -> None:
    settings = unit_settings(UNIT)
    credentials = dict(item.split(":", 1) for item in settings["Service.LoadCredential"])
    config = _systemd_config().cluster
    named = {config.ca_file, config.cert_file, config.key_file}
    assert named == {f"/run/credentials/sfu.service/{name}" for name in credentials}
    assert all(source.startswith("/etc/sfu/") for source in credentials.values())


def test_unit_stops_after_the_drain_and_restarts_with_a_backoff() -> None:
    settings = unit_settings(UNIT)
    drain = _systemd_config().server.drain_timeout_s
    assert _one(settings, "Service.KillSignal") == "SIGTERM"
    # SIGTERM to the supervisor only: it passes it on to the workers and waits for them.
    assert _one(settings, "Service.KillMode") == "mixed"
    assert _seconds(_one(settings, "Service.TimeoutStopSec")) > drain + STOP_OVERHEAD_S
    assert _one(settings, "Service.Restart") == "on-failure"
    assert _seconds(_one(settings, "Service.RestartSec")) >= 1.0
    assert int(_one(settings, "Unit.StartLimitBurst")) >= 1
    assert _seconds(_one(settings, "Unit.StartLimitIntervalSec")) > 0


def test_unit_user_limits_and_hardening() -> None:
    settings = unit_settings(UNIT)
    config = _systemd_config()
    assert _one(settings, "Service.User") not in ("", "root", "0")
    sysusers = (DEPLOY / "systemd" / "sfu.sysusers").read_text()
    assert re.search(rf"^u\s+{_one(settings, 'Service.User')}\s", sysusers, re.MULTILINE)
    files = int(_one(settings, "Service.LimitNOFILE"))
    assert files > config.http.max_connections + config.media.max_transports
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert _one(settings, f"Service.{key}") == "yes", key
    assert _one(settings, "Service.ProtectSystem") == "strict"
    writable = _one(settings, "Service.ReadWritePaths").split()
    for path in (config.audit.path, config.rooms.state_dir):
        if path:
            assert any(Path(path).is_relative_to(root) for root in writable), path
    # No port below 1024, so no capability: the comment says when to add one.
    ports = [config.http.port, config.http.ops_port, config.media.udp_port]
    ports += [config.media.tcp_port, config.cluster.link_port]
    assert min(p for p in ports if p > 0) >= 1024
    assert _one(settings, "Service.AmbientCapabilities") == ""
    assert _one(settings, "Service.CapabilityBoundingSet") == ""


def test_sysusers_entry_creates_the_units_user(tmp_path: Path) -> None:
    """systemd-sysusers reads the entry (a dry run on an empty root: nothing is written)."""
    tool = shutil.which("systemd-sysusers")
    assert tool, "systemd-sysusers is missing (Makefile DEB_TEST installs systemd)"
    user = _one(unit_settings(UNIT), "Service.User")
    entry = DEPLOY / "systemd" / "sfu.sysusers"
    (tmp_path / "etc").mkdir()
    done = subprocess.run(
        [tool, "--dry-run", f"--root={tmp_path}", str(entry)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"Creating user '{user}'" in done.stdout + done.stderr
    assert not (tmp_path / "etc" / "passwd").exists()
    # Its home is the unit's state directory.
    (line,) = (ln for ln in entry.read_text().splitlines() if ln.startswith("u "))
    home = shlex.split(line)[4]
    assert home == f"/var/lib/{_one(unit_settings(UNIT), 'Service.StateDirectory')}"


# --- sysctl ----------------------------------------------------------------------------------


def _sysctl() -> dict[str, int]:
    values: dict[str, int] = {}
    for line in SYSCTL.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")):
            key, _, value = line.partition("=")
            values[key.strip()] = int(value.strip())
    return values


def test_sysctl_covers_the_buffers_the_sockets_ask_for() -> None:
    values = _sysctl()
    wanted = max(SOCKET_BUFFER_BYTES, PIPE_SOCKET_BUFFER_BYTES)
    assert values["net.core.rmem_max"] >= wanted
    assert values["net.core.wmem_max"] >= wanted
    # With it applied, the start-up self-check has nothing to say about buffers...
    quiet = address_warnings(
        [],
        udp_host="0.0.0.0",
        nat_mapping=False,
        wanted_buffer=SOCKET_BUFFER_BYTES,
        rmem_max=values["net.core.rmem_max"],
    )
    assert quiet == []
    # ...while Debian's default (212992) draws the warning the drop-in answers.
    warned = address_warnings(
        [],
        udp_host="0.0.0.0",
        nat_mapping=False,
        wanted_buffer=SOCKET_BUFFER_BYTES,
        rmem_max=212992,
    )
    assert any("net.core.rmem_max" in warning for warning in warned)


# --- every SFU_* name --------------------------------------------------------------------------


def test_every_sfu_variable_in_deploy_is_a_configuration_key() -> None:
    known = _config_env_names() | NON_CONFIG_ENV_VARS
    seen: set[str] = set()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        for name in re.findall(r"\b(SFU_[A-Z0-9_]*[A-Z0-9])\b", path.read_text()):
            assert name in known, f"{path.relative_to(ROOT)}: {name} is no configuration key"
            seen.add(name)
    # The secrets, the per-node keys and the ops port the healthcheck follows are all there.
    assert {
        "SFU_AUTH_JWT_SECRET",
        "SFU_CLUSTER_REDIS_URL",
        "SFU_CLUSTER_NODE_ID",
        "SFU_MEDIA_ANNOUNCED_ADDRESSES",
        "SFU_HTTP_OPS_PORT",
    } <= seen
    assert ENV_PREFIX == "SFU_"


# --- container image ---------------------------------------------------------------------------


def _makefile_variable(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{name}\s*:=\s*(.*)$", text, re.MULTILINE)
    assert match, name
    return match.group(1).split()


def _makefile_pip_commands() -> list[list[str]]:
    """The Makefile's pip invocations that build the run-time venv, in order."""
    text = (ROOT / "Makefile").read_text()
    recipes = re.findall(r"^\t(\$\(PY\) -m pip install .*)$", text, re.MULTILINE)
    bootstrap = [shlex.split(r) for r in recipes if "--upgrade" in r]
    run = [shlex.split(r) for r in recipes if r.endswith(" -e .")]
    assert len(bootstrap) == 1 and len(run) == 1, recipes
    return [bootstrap[0], run[0]]


def _shell_commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    commands: list[list[str]] = []
    for instruction, argument in stage:
        if instruction == "RUN":
            for command in re.split(r"\s*&&\s*", argument):
                commands.append(shlex.split(command.split("|")[0]))
    return commands


def test_image_builds_with_the_makefiles_packages_and_install_commands() -> None:
    all_stages = stages(CONTAINERFILE)
    assert len(all_stages) == 2
    arg = dict(a.split("=", 1) for i, a in instructions(CONTAINERFILE) if i == "ARG")
    base = arg["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    build, run = all_stages
    assert build[0][1] == "${PYTHON_IMAGE} AS build" and run[0][1] == "${PYTHON_IMAGE}"
    commands = _shell_commands(build)
    apt = [c for c in commands if c[:2] == ["apt-get", "install"]]
    assert len(apt) == 1
    assert sorted(w for w in apt[0][2:] if not w.startswith("-")) == sorted(
        _makefile_variable("DEB_RUN")
    )
    # Its pip steps are the Makefile's, on the venv's python, the editable install made plain.
    pip = [c for c in commands if c[1:4] == ["-m", "pip", "install"]]
    assert [c[0] for c in pip] == [f"{PREFIX}/bin/python"] * 2
    image_pip = [["$(PY)", *[w for w in c[1:] if w != "--no-cache-dir"]] for c in pip]
    bootstrap, run_install = _makefile_pip_commands()
    assert image_pip == [bootstrap, [w for w in run_install if w != "-e"]]
    assert ["python", "-m", "venv", PREFIX] in commands
    # The build refuses an image whose kernels did not compile.
    assert any("fast path: cython" in a for i, a in build if i == "RUN")


def test_image_copies_what_the_build_reads() -> None:
    build = stages(CONTAINERFILE)[0]
    sources: set[str] = set()
    for instruction, argument in build:
        if instruction == "COPY":
            sources.update(argument.split()[:-1])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {"pyproject.toml", "setup.py", project["readme"], "sfu"} <= sources
    assert all((ROOT / s).exists() for s in sources)
    ignore = (CONTAINERFILE.parent / "Containerfile.dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert sources <= kept
    assert "deploy/container/sfu.toml" in kept


def test_image_runs_unprivileged_drains_and_checks_health() -> None:
    run = stages(CONTAINERFILE)[1]
    final = {instruction: argument for instruction, argument in run}
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == [f"{PREFIX}/bin/sfu"]
    assert json.loads(final["CMD"]) == ["serve", "--config", "/etc/sfu/sfu.toml"]
    assert "deploy/container/sfu.toml /etc/sfu/sfu.toml" in {a for i, a in run if i == "COPY"}
    health = final["HEALTHCHECK"]
    probe = json.loads(health[health.index("CMD") + 3 :])
    config = load_config(CONTAINER_CONFIG, {"SFU_AUTH_JWT_SECRET": JWT})
    assert "/healthz" in probe[-1]
    assert f"'{config.http.ops_port}'" in probe[-1]
    # Nothing secret is set in the image.
    for instruction, argument in instructions(CONTAINERFILE):
        if instruction in ("ENV", "ARG"):
            assert not re.search(r"SECRET|PASSWORD|REDIS_URL|TOKEN", argument), argument


def test_image_config_needs_the_run_time_secret_and_exposes_its_ports() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONTAINER_CONFIG, {})
    assert {key for key, _ in err.value.errors} == {"auth.jwt_secret"}
    runtime = {"SFU_AUTH_JWT_SECRET": JWT, "SFU_MEDIA_ANNOUNCED_ADDRESSES": "203.0.113.11"}
    config = load_config(CONTAINER_CONFIG, runtime)
    exposed = set(_shell_words(a for i, a in instructions(CONTAINERFILE) if i == "EXPOSE"))
    assert {
        f"{config.http.port}/tcp",
        f"{config.http.ops_port}/tcp",
        f"{config.media.udp_port}/udp",
        f"{config.media.tcp_port}/tcp",
        f"{config.cluster.link_port}/udp",
    } == exposed
    assert config.server.drain_timeout_s + STOP_OVERHEAD_S < 30  # the `docker stop -t 30` shown


def _shell_words(arguments: Any) -> list[str]:
    return [word for argument in arguments for word in argument.split()]


# --- Helm chart ----------------------------------------------------------------------------------


def test_chartchart_values_and_templates_parse_and_reference_only_existingchart_values() -> None:
    values = chart_values()
    for template in (CHART / "templates").glob("*.yaml"):
        for path in re.findall(r"\.Values((?:\.\w+)+)", template.read_text()):
            node: Any = values
            for part in path.strip(".").split("."):
                assert isinstance(node, dict) and part in node, f"{template.name}: .Values{path}"
                node = node[part]
    manifests = render_chart(values)
    assert set(manifests) == {"ConfigMap", "DaemonSet", "Service"}
    for manifest in manifests.values():
        assert manifest["apiVersion"] and manifest["metadata"]["name"] == "edge-sfu"


def test_renderer_refuses_a_missing_value() -> None:
    """Helm would print <no value>: the chart's checks fail instead."""
    with pytest.raises(TemplateError, match=r"missing value \.Values\.nope"):
        render("port: {{ .Values.nope }}", {"Values": {}})


def test_chart_runs_one_pod_per_node_on_the_host_network() -> None:
    manifests = render_chart(chart_values())
    spec = manifests["DaemonSet"]["spec"]
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    term = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_chart_drains_within_the_grace_period_and_probes_the_ops_port() -> None:
    manifests = render_chart(chart_values())
    pod = manifests["DaemonSet"]["spec"]["template"]["spec"]
    config = pod_config(manifests)
    assert pod["terminationGracePeriodSeconds"] > config.server.drain_timeout_s + STOP_OVERHEAD_S
    container = pod_container(manifests)
    assert container["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": config.http.ops_port,
    }
    assert container["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": config.http.ops_port,
    }
    # The chart's port values are the ports the config binds.
    ports = {(p["name"], p["protocol"]): p["containerPort"] for p in container["ports"]}
    assert ports == {
        ("http", "TCP"): config.http.port,
        ("ops", "TCP"): config.http.ops_port,
        ("media-udp", "UDP"): config.media.udp_port,
        ("media-tcp", "TCP"): config.media.tcp_port,
        ("link", "UDP"): config.cluster.link_port,
    }
    # exec: the server, not the shell, receives SIGTERM.
    assert container["command"][-1].strip().splitlines()[-1].startswith("exec /opt/sfu/bin/sfu")


def test_chart_config_validates_with_the_node_identity_and_secrets() -> None:
    manifests = render_chart(chart_values())
    env = pod_environment(manifests)
    config = pod_config(manifests)
    assert config.cluster.node_id == NODE
    assert config.server.worker_name == NODE
    assert config.cluster.advertise_address == f"{HOST_IP}:{config.cluster.link_port}"
    assert config.cluster.public_url == f"https://{NODE}.sfu.example.com"
    assert config.media.announced_addresses == (HOST_IP,)
    assert config.cluster.cert_file == f"/etc/sfu/certs/{NODE}.pem"
    assert config.cluster.key_file == f"/etc/sfu/certs/{NODE}.key"
    assert config.auth.jwt_secret == JWT and config.cluster.redis_url == REDIS_URL
    secret_refs = {
        item["name"]
        for item in pod_container(manifests)["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    assert secret_refs == {"SFU_AUTH_JWT_SECRET", "SFU_CLUSTER_REDIS_URL"}
    mounts = {m["mountPath"] for m in pod_container(manifests)["volumeMounts"]}
    assert str(Path(config.cluster.cert_file).parent) in mounts
    assert any(Path(config.audit.path).is_relative_to(m) for m in mounts)
    assert "SFU_TURN_SECRET" not in env
    # Without the secrets the config is refused, naming the key.
    with pytest.raises(ConfigError) as err:
        parse_config(tomllib.loads(manifests["ConfigMap"]["data"]["sfu.toml"]), {})
    assert "auth.jwt_secret" in {key for key, _ in err.value.errors}


def test_chart_announces_listed_addresses_per_node_and_guards_its_options() -> None:
    values = chart_values()
    values["media"]["announcedAddresses"] = {NODE: "203.0.113.12,2001:db8::12"}
    values["serviceMonitor"]["enabled"] = True
    values["serviceMonitor"]["labels"] = {"release": "prometheus"}
    values["secrets"]["turnSecretKey"] = "turn"
    manifests = render_chart(values)
    data = manifests["ConfigMap"]["data"]
    # The start command reads announce-<node> from the ConfigMap mounted at /etc/sfu/announce.
    script = pod_container(manifests)["command"][-1]
    assert '"/etc/sfu/announce/announce-$SFU_CLUSTER_NODE_ID"' in script
    announced = data[f"announce-{NODE}"]
    env = {k: v for k, v in pod_environment(manifests).items() if k.startswith("SFU_")}
    env["SFU_MEDIA_ANNOUNCED_ADDRESSES"] = announced
    config = parse_config(tomllib.loads(data["sfu.toml"]), env)
    assert config.media.announced_addresses == ("203.0.113.12", "2001:db8::12")
    assert env["SFU_TURN_SECRET"] == "t" * 32
    monitor = manifests["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "ops"
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    service = manifests["Service"]
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    assert service["spec"]["ports"][0]["port"] == config.http.ops_port


# --- docs ----------------------------------------------------------------------------------------


def test_deployment_guide_names_every_artifact() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text()
    for path in sorted(p for p in DEPLOY.rglob("*") if p.is_file()):
        name = str(path.relative_to(ROOT))
        if path.parent.name != "templates":
            assert name in guide, f"docs/deployment.md does not mention {name}"
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()


def test_chart_start_command_announces_the_listed_address_or_the_nodes_own(
    tmp_path: Path,
) -> None:
    """The pod's shell wrapper, run by /bin/sh with the server swapped for a stub that
    prints what it would have been started with."""
    values = chart_values()
    values["media"]["announcedAddresses"] = {NODE: "203.0.113.12"}
    manifests = render_chart(values)
    script = pod_container(manifests)["command"][-1]
    stub = tmp_path / "sfu"
    stub.write_text('#!/bin/sh\necho "$SFU_MEDIA_ANNOUNCED_ADDRESSES $*"\n')
    stub.chmod(0o755)
    folder = tmp_path / "announce"
    folder.mkdir()
    for key, value in manifests["ConfigMap"]["data"].items():
        (folder / key).write_text(value)
    script = script.replace(f"{PREFIX}/bin/sfu", str(stub))
    script = script.replace("/etc/sfu/announce", str(folder))
    env = pod_environment(manifests)

    def start(node: str) -> str:
        pod_env = {**env, "SFU_CLUSTER_NODE_ID": node, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            ["/bin/sh", "-c", script], env=pod_env, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    # The listed node announces its listed address, another node its own (status.hostIP).
    assert start(NODE) == "203.0.113.12 serve --config /etc/sfu/sfu.toml"
    assert start("node-z") == f"{HOST_IP} serve --config /etc/sfu/sfu.toml"
