"""Tests for the ``sfu`` command line (in-process, via ``sfu.cli.main``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfu import __version__
from sfu.cli import main, parse_duration
from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import verify_token

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep stray SFU_* variables of the test runner out of config validation."""
    for var in list(os.environ):
        if var.startswith("SFU_"):
            monkeypatch.delenv(var)


def test_check_config_ok_on_shipped_configs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The production example expects its secret from the environment (documented there).
    monkeypatch.setenv("SFU_AUTH_JWT_SECRET", "s" * 32)
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


TOKEN_SECRET = "cli-test-secret-0123456789abcdefghij"


def verify_printed(out: str, room: str = "r1", max_ttl: float = 86400) -> JoinClaims:
    """The single printed line must be a token the server's verify_token accepts."""
    [token] = out.splitlines()
    return verify_token(TOKEN_SECRET, token, now=time.time(), room=room, leeway=5, max_ttl=max_ttl)


def test_token_prints_a_token_that_verifies(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFU_AUTH_JWT_SECRET", TOKEN_SECRET)
    before = int(time.time())
    argv = ["token", "--room", "r1", "--identity", "alice", "--name", "Alice"]
    assert main([*argv, "--grant", "publish,subscribe,host", "--ttl", "10m"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    claims = verify_printed(out)
    assert claims.identity == "alice"
    assert claims.name == "Alice"
    assert claims.grants == Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST
    assert claims.exp - claims.iat == 600
    assert before <= claims.iat <= int(time.time())


def test_token_uses_the_config_file_and_default_ttl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[auth]\njwt_secret = "{TOKEN_SECRET}"\n')
    argv = ["token", "--room", "r2", "--identity", "bob", "--grant", "subscribe"]
    assert main([*argv, "--config", str(path)]) == 0
    claims = verify_printed(capsys.readouterr().out, room="r2")
    assert claims.grants == Grant.SUBSCRIBE
    assert claims.exp - claims.iat == 3600
    assert claims.name is None


def test_token_without_secret_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--room", "r", "--identity", "i", "--grant", "publish"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "sfu: auth.jwt_secret is not set (SFU_AUTH_JWT_SECRET)\n"


def test_token_refuses_ttl_above_max(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFU_AUTH_JWT_SECRET", TOKEN_SECRET)
    monkeypatch.setenv("SFU_AUTH_MAX_TOKEN_TTL_S", "3600")
    base = ["token", "--room", "r1", "--identity", "i", "--grant", "publish"]
    assert main([*base, "--ttl", "61m"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "auth.max_token_ttl_s (3600s)" in err
    assert main([*base, "--ttl", "1h"]) == 0
    verify_printed(capsys.readouterr().out, max_ttl=3600)


def test_token_invalid_config_and_invalid_claims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFU_AUTH_JWT_SECRET", "short")
    assert main(["token", "--room", "r", "--identity", "i", "--grant", "publish"]) == 1
    assert "SFU_AUTH_JWT_SECRET: must be at least 32 bytes" in capsys.readouterr().err
    monkeypatch.setenv("SFU_AUTH_JWT_SECRET", TOKEN_SECRET)
    assert main(["token", "--room", "x" * 129, "--identity", "i", "--grant", "publish"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("sfu: room must be")


@pytest.mark.parametrize(
    "args",
    [
        ["--grant", "publish,fly"],
        ["--grant", "publish", "--ttl", "1w"],
        ["--grant", "publish", "--ttl", "0s"],
        ["--grant", "publish", "--ttl", "-5m"],
        [],  # --grant is required
    ],
)
def test_token_usage_errors_return_2(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SFU_AUTH_JWT_SECRET", TOKEN_SECRET)
    assert main(["token", "--room", "r", "--identity", "i", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "usage: sfu token" in err


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("10m", 600), ("1h", 3600), ("1d", 86400), (" 2h ", 7200)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1.5h", "1 h", "1H", "0m", "1w", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


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
