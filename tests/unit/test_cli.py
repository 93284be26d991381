"""Tests for the ``sfu`` command line (in-process, via ``sfu.cli.main``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfu import __version__
from sfu.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep stray SFU_* variables of the test runner out of config validation."""
    for var in list(os.environ):
        if var.startswith("SFU_"):
            monkeypatch.delenv(var)


def test_check_config_ok_on_shipped_configs(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("default.toml", "production.example.toml"):
        assert main(["check-config", str(REPO / "configs" / name)]) == 0
        out, err = capsys.readouterr()
        assert out == "ok\n"
        assert err == ""


def test_check_config_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[http]\nport = "x"\n[media]\nudp_prot = 1\n')
    assert main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "http.port: expected integer, got string",
        "media.udp_prot: unknown key",
    ]


def test_check_config_applies_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "good.toml"
    path.write_text("[http]\nport = 0\n")
    monkeypatch.setenv("SFU_HTTP_PORT", "nope")
    assert main(["check-config", str(path)]) == 1
    assert capsys.readouterr().err == "SFU_HTTP_PORT: expected integer, got 'nope'\n"


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["check-config", str(missing)]) == 1
    assert capsys.readouterr().err == f"{missing}: file not found\n"


def test_check_config_syntax_error_has_line_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[http]\n\nport = = 1\n")
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}: invalid TOML")
    assert "line 3" in err


def test_serve_with_invalid_config_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\ndrain_timeout_s = -1\n")
    assert main(["serve", "--config", str(path)]) == 1
    assert "server.drain_timeout_s: must be a positive number" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"sfu {__version__}"
    assert lines[1] == f"python {sys.version.split()[0]}"
    assert lines[2].startswith("fast path: ")
    assert lines[2].removeprefix("fast path: ") in {"cython", "python", "unknown"}


def test_no_command_and_bad_usage_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "usage: sfu" in capsys.readouterr().err


def test_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "check-config" in capsys.readouterr().out


def test_python_dash_m_entry_point() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "sfu", "check-config", str(REPO / "configs" / "default.toml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, "ok\n")
