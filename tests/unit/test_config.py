"""Tests for TOML + environment configuration loading and validation."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from sfu.config import (
    NON_CONFIG_ENV_VARS,
    AuthConfig,
    Config,
    ConfigError,
    HttpConfig,
    MediaConfig,
    env_var_name,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TOML = REPO / "configs" / "default.toml"
PRODUCTION_TOML = REPO / "configs" / "production.example.toml"

SECRET = "s" * 32
#: The [auth] settings a config bound to a public address needs in order to validate.
PUBLIC_AUTH: dict[str, Any] = {"jwt_secret": SECRET, "dev_tokens": False}


def errors_of(data: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Parse expecting failure; return the errors as a key -> message mapping."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, environ or {})
    return dict(info.value.errors)


def test_builtin_defaults_match_the_shipped_default_toml() -> None:
    assert load_config(DEFAULT_TOML, {}) == load_config(None, {}) == Config()


def test_default_toml_spells_out_every_key() -> None:
    data = tomllib.loads(DEFAULT_TOML.read_text("utf-8"))
    expected = {
        f.name: {g.name for g in dataclasses.fields(getattr(Config(), f.name))}
        for f in dataclasses.fields(Config)
    }
    assert {section: set(table) for section, table in data.items()} == expected


def test_documented_defaults() -> None:
    cfg = load_config(None, {})
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8080)
    assert (cfg.media.udp_host, cfg.media.udp_port) == ("127.0.0.1", 40000)
    assert cfg.media.announced_addresses == ()
    assert cfg.announced_addresses() == ("127.0.0.1",)
    assert cfg.logging.debug_personal_data is False
    assert cfg.server.drain_timeout_s > 0


def test_production_example_validates() -> None:
    # The example leaves the secret to the environment (a secret store), as documented.
    cfg = load_config(PRODUCTION_TOML, {"SFU_AUTH_JWT_SECRET": SECRET})
    assert cfg.auth.jwt_secret == SECRET
    assert cfg.auth.dev_tokens is False
    assert cfg.http.host == "0.0.0.0"
    assert cfg.media.udp_host == "0.0.0.0"
    assert cfg.media.udp_port == 40000
    assert cfg.media.announced_addresses == ("203.0.113.10",)
    assert cfg.announced_addresses() == ("203.0.113.10",)
    assert cfg.logging.format == "json"
    assert cfg.logging.debug_personal_data is False


def test_production_example_without_secret_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(PRODUCTION_TOML, {})
    [(key, message)] = info.value.errors
    assert key == "auth.jwt_secret"
    assert "SFU_AUTH_JWT_SECRET" in message


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[http]\nport = 9000\n[media]\nannounced_addresses = ["2001:db8::1"]\n')
    cfg = load_config(path, {})
    assert cfg.http == HttpConfig(port=9000)
    assert cfg.media == MediaConfig(announced_addresses=("2001:db8::1",))


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.http.port = 1  # type: ignore[misc]


def test_unknown_key_and_section_are_named() -> None:
    errs = errors_of({"media": {"udp_prot": 1}, "htp": {"port": 1}})
    assert errs == {"media.udp_prot": "unknown key", "htp": "unknown section"}


def test_wrong_types_name_key_and_expected_type() -> None:
    errs = errors_of(
        {
            "http": {"port": "8080", "host": 1},
            "media": {"announced_addresses": "203.0.113.1"},
            "logging": {"debug_personal_data": "yes"},
            "server": {"drain_timeout_s": True},
        }
    )
    assert errs == {
        "http.port": "expected integer, got string",
        "http.host": "expected string, got integer",
        "media.announced_addresses": "expected array of strings, got string",
        "logging.debug_personal_data": "expected boolean, got string",
        "server.drain_timeout_s": "expected float, got boolean",
    }


def test_bool_is_not_an_integer_and_int_is_accepted_as_float() -> None:
    assert errors_of({"http": {"port": True}}) == {"http.port": "expected integer, got boolean"}
    assert parse_config({"server": {"drain_timeout_s": 3}}, {}).server.drain_timeout_s == 3.0


def test_section_must_be_a_table() -> None:
    assert errors_of({"http": 5}) == {"http": "expected table, got integer"}


def test_array_element_errors_are_indexed() -> None:
    errs = errors_of({"media": {"announced_addresses": ["203.0.113.1", 7]}})
    assert errs == {"media.announced_addresses[1]": "expected string, got integer"}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"http": {"port": 65536}}, "http.port"),
        ({"http": {"port": -1}}, "http.port"),
        ({"media": {"udp_port": 70000}}, "media.udp_port"),
        ({"http": {"max_body_bytes": 0}}, "http.max_body_bytes"),
        ({"http": {"host": " "}, "echo": {"enabled": False}, "auth": PUBLIC_AUTH}, "http.host"),
        ({"media": {"max_transports": 0}}, "media.max_transports"),
        ({"media": {"max_pending_transports": -1}}, "media.max_pending_transports"),
        ({"http": {"host": "0.0.0.0"}, "auth": PUBLIC_AUTH}, "echo.enabled"),
        (
            {"http": {"host": "192.0.2.1"}, "echo": {"enabled": True}, "auth": PUBLIC_AUTH},
            "echo.enabled",
        ),
        ({"auth": {"jwt_secret": "short"}}, "auth.jwt_secret"),
        ({"auth": {"token_leeway_s": -1}}, "auth.token_leeway_s"),
        ({"auth": {"token_leeway_s": 301}}, "auth.token_leeway_s"),
        ({"auth": {"max_token_ttl_s": 0}}, "auth.max_token_ttl_s"),
        ({"media": {"udp_host": "localhost"}}, "media.udp_host"),
        ({"media": {"announced_addresses": ["example.com"]}}, "media.announced_addresses[0]"),
        ({"media": {"announced_addresses": ["0.0.0.0"]}}, "media.announced_addresses[0]"),
        ({"media": {"announced_addresses": ["::"]}}, "media.announced_addresses[0]"),
        ({"logging": {"level": "verbose"}}, "logging.level"),
        ({"logging": {"format": "xml"}}, "logging.format"),
        ({"server": {"drain_timeout_s": 0}}, "server.drain_timeout_s"),
        ({"server": {"drain_timeout_s": -1.5}}, "server.drain_timeout_s"),
        ({"server": {"drain_timeout_s": float("inf")}}, "server.drain_timeout_s"),
        ({"server": {"drain_timeout_s": float("nan")}}, "server.drain_timeout_s"),
        ({"server": {"worker_name": ""}}, "server.worker_name"),
    ],
)
def test_range_and_value_checks(data: dict[str, Any], key: str) -> None:
    assert list(errors_of(data)) == [key]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_echo_is_allowed_on_loopback_only(host: str) -> None:
    assert parse_config({"http": {"host": host}, "echo": {"enabled": True}}, {}).echo.enabled
    assert not parse_config(
        {"http": {"host": "0.0.0.0"}, "echo": {"enabled": False}, "auth": PUBLIC_AUTH}, {}
    ).echo.enabled


def test_auth_defaults_work_out_of_the_box_on_loopback() -> None:
    auth = load_config(None, {}).auth
    assert auth == AuthConfig(jwt_secret="", token_leeway_s=5, max_token_ttl_s=86400)
    assert auth.dev_tokens is True  # only the loopback-bound default config has it on
    assert Config().http_is_loopback()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_public_bind_requires_a_long_secret_and_no_dev_tokens(host: str) -> None:
    errs = errors_of({"http": {"host": host}, "echo": {"enabled": False}})
    assert set(errs) == {"auth.jwt_secret", "auth.dev_tokens"}
    assert "SFU_AUTH_JWT_SECRET" in errs["auth.jwt_secret"]
    assert "loopback" in errs["auth.dev_tokens"]
    short = {"jwt_secret": "x" * 31, "dev_tokens": False}
    errs = errors_of({"http": {"host": host}, "echo": {"enabled": False}, "auth": short})
    assert list(errs) == ["auth.jwt_secret"]
    assert "31 bytes" in errs["auth.jwt_secret"]
    cfg = parse_config({"http": {"host": host}, "echo": {"enabled": False}, "auth": PUBLIC_AUTH})
    assert (cfg.auth.jwt_secret, cfg.http_is_loopback()) == (SECRET, False)


def test_secret_length_counts_utf8_bytes_and_is_never_echoed() -> None:
    # 16 two-byte characters are 32 bytes: long enough.
    assert parse_config({"auth": {"jwt_secret": "é" * 16}}).auth.jwt_secret == "é" * 16
    errs = errors_of({"auth": {"jwt_secret": "tooshort-secret"}})
    assert "tooshort-secret" not in errs["auth.jwt_secret"]
    assert SECRET not in repr(parse_config({"auth": {"jwt_secret": SECRET}}))


def test_secret_from_the_environment_is_labelled_by_its_variable() -> None:
    env = {"SFU_AUTH_JWT_SECRET": "short", "SFU_AUTH_DEV_TOKENS": "false"}
    assert list(errors_of({"http": {"host": "0.0.0.0"}, "echo": {"enabled": False}}, env)) == [
        "SFU_AUTH_JWT_SECRET"
    ]
    env["SFU_AUTH_JWT_SECRET"] = SECRET
    cfg = parse_config({"http": {"host": "0.0.0.0"}, "echo": {"enabled": False}}, env)
    assert cfg.auth.jwt_secret == SECRET
    # An environment override can also clear a file's secret; on a public bind that fails.
    data = {"http": {"host": "0.0.0.0"}, "echo": {"enabled": False}, "auth": PUBLIC_AUTH}
    assert list(errors_of(data, {"SFU_AUTH_JWT_SECRET": ""})) == ["SFU_AUTH_JWT_SECRET"]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_dev_tokens_and_empty_secret_are_fine_on_loopback(host: str) -> None:
    cfg = parse_config({"http": {"host": host}, "auth": {"dev_tokens": True}})
    assert (cfg.auth.dev_tokens, cfg.auth.jwt_secret) == (True, "")


def test_auth_types_are_checked() -> None:
    errs = errors_of({"auth": {"jwt_secret": 5, "dev_tokens": "yes", "token_leeway_s": 1.5}})
    assert errs == {
        "auth.jwt_secret": "expected string, got integer",
        "auth.dev_tokens": "expected boolean, got string",
        "auth.token_leeway_s": "expected integer, got float",
    }


def test_port_bounds_are_inclusive() -> None:
    cfg = parse_config({"http": {"port": 0}, "media": {"udp_port": 65535}}, {})
    assert (cfg.http.port, cfg.media.udp_port) == (0, 65535)


def test_all_errors_are_collected(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "[http]\nport = 99999\nprot = 1\n"
        '[media]\nudp_port = "x"\n'
        '[logging]\nlevel = "loud"\n'
        "[extra]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, {"SFU_HTTP_HOST_X": "1"})
    keys = [key for key, _ in info.value.errors]
    assert sorted(keys) == sorted(
        ["http.port", "http.prot", "media.udp_port", "logging.level", "extra", "SFU_HTTP_HOST_X"]
    )
    # The exception text lists every problem, one per line.
    assert str(info.value).count("\n") == len(keys) - 1
    assert "media.udp_port: expected integer, got string" in str(info.value)


def test_env_overrides_are_converted_by_field_type() -> None:
    env = {
        "SFU_HTTP_PORT": "9000",
        "SFU_HTTP_HOST": "::1",
        "SFU_MEDIA_ANNOUNCED_ADDRESSES": "203.0.113.5, 2001:db8::1",
        "SFU_LOGGING_DEBUG_PERSONAL_DATA": "TRUE",
        "SFU_LOGGING_FORMAT": "json",
        "SFU_SERVER_DRAIN_TIMEOUT_S": "2.5",
    }
    cfg = parse_config({"http": {"port": 1234}}, env)
    assert cfg.http.port == 9000  # environment wins over the file
    assert cfg.http.host == "::1"
    assert cfg.media.announced_addresses == ("203.0.113.5", "2001:db8::1")
    assert cfg.logging.debug_personal_data is True
    assert cfg.logging.format == "json"
    assert cfg.server.drain_timeout_s == 2.5


def test_env_empty_list_clears_announced_addresses() -> None:
    data = {"media": {"announced_addresses": ["203.0.113.5"]}}
    cfg = parse_config(data, {"SFU_MEDIA_ANNOUNCED_ADDRESSES": ""})
    assert cfg.media.announced_addresses == ()


@pytest.mark.parametrize("value", ["0", "false", "No", "off"])
def test_env_false_values(value: str) -> None:
    cfg = parse_config({}, {"SFU_LOGGING_DEBUG_PERSONAL_DATA": value})
    assert cfg.logging.debug_personal_data is False


def test_bad_env_values_name_the_variable() -> None:
    errs = errors_of(
        {},
        {
            "SFU_HTTP_PORT": "eighty",
            "SFU_LOGGING_DEBUG_PERSONAL_DATA": "maybe",
            "SFU_SERVER_DRAIN_TIMEOUT_S": "soon",
            "SFU_MEDIA_UDP_PORT": "70000",
            "SFU_MEDIA_ANNOUNCED_ADDRESSES": "203.0.113.5,not-an-ip",
        },
    )
    assert set(errs) == {
        "SFU_HTTP_PORT",
        "SFU_LOGGING_DEBUG_PERSONAL_DATA",
        "SFU_SERVER_DRAIN_TIMEOUT_S",
        "SFU_MEDIA_UDP_PORT",
        "SFU_MEDIA_ANNOUNCED_ADDRESSES[1]",
    }
    assert errs["SFU_HTTP_PORT"] == "expected integer, got 'eighty'"
    assert "65535" in errs["SFU_MEDIA_UDP_PORT"]


def test_unknown_sfu_variables_are_errors_but_allow_list_and_others_are_ignored() -> None:
    env = {
        "SFU_HTTP_PROT": "1",
        "SFU_HTP_PORT": "1",
        "SFU_NO_EXTENSIONS": "1",
        "SFU_EXPECT_COMPILED": "1",
        "HOME": "/root",
        "XSFU_HTTP_PORT": "x",
    }
    assert set(errors_of({}, env)) == {"SFU_HTTP_PROT", "SFU_HTP_PORT"}
    assert {"SFU_NO_EXTENSIONS", "SFU_EXPECT_COMPILED"} <= NON_CONFIG_ENV_VARS


def test_env_var_name() -> None:
    assert env_var_name("media", "announced_addresses") == "SFU_MEDIA_ANNOUNCED_ADDRESSES"


def test_missing_file_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing, {})
    assert info.value.errors == [(str(missing), "file not found")]


def test_toml_syntax_error_reports_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[http]\nport = 80\nhost = \n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    [(key, message)] = info.value.errors
    assert key == str(path)
    assert message.startswith("invalid TOML")
    assert "line 3" in message


def test_every_key_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text("utf-8")
    for section in dataclasses.fields(Config):
        for key in dataclasses.fields(getattr(Config(), section.name)):
            assert f"| `{section.name}.{key.name}` |" in doc, f"{section.name}.{key.name}"
    assert "SFU_AUTH_JWT_SECRET" in doc
    assert "sfu token" in doc


def test_pacing_is_a_boolean_named_by_key_or_variable() -> None:
    assert parse_config({}).bandwidth.pacing is True
    assert parse_config({"bandwidth": {"pacing": False}}).bandwidth.pacing is False
    assert parse_config({}, {"SFU_BANDWIDTH_PACING": "off"}).bandwidth.pacing is False
    assert errors_of({"bandwidth": {"pacing": "off"}}) == {
        "bandwidth.pacing": "expected boolean, got string"
    }
    errs = errors_of({}, {"SFU_BANDWIDTH_PACING": "sometimes"})
    assert list(errs) == ["SFU_BANDWIDTH_PACING"] and "boolean" in errs["SFU_BANDWIDTH_PACING"]
