"""TURN REST API credentials (draft-uberti-behave-turn-rest-00 §2.2) and their config."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from sfu.config import ConfigError, TurnConfig, parse_config
from sfu.signaling.turn import TurnCredentials, turn_relay_hosts

SECRET = "north-wind-secret-0123456789"
URLS = ("turn:203.0.113.9:3478?transport=udp", "turns:turn.example:5349?transport=tcp")


def test_credentials_are_hmac_sha1_of_expiry_and_user() -> None:
    creds = TurnCredentials(TurnConfig(urls=URLS, secret=SECRET, ttl_s=600))
    server = creds.issue(wall_now=1_700_000_000.7, user="u1")
    assert server is not None
    assert server.username == "1700000600:u1"
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), b"1700000600:u1", hashlib.sha1).digest()
    ).decode()
    assert server.credential == expected
    assert server.to_json() == {
        "urls": list(URLS),
        "username": server.username,
        "credential": expected,
    }
    links = server.link_headers()
    assert len(links) == 2
    assert links[0].startswith(f'<{URLS[0]}>; rel="ice-server"; username="1700000600:u1"')
    assert 'credential-type="password"' in links[1]


def test_default_user_is_random_and_names_nobody() -> None:
    creds = TurnCredentials(TurnConfig(urls=URLS, secret=SECRET))
    a, b = creds.issue(wall_now=0.0), creds.issue(wall_now=0.0)
    assert a is not None and b is not None and a.username != b.username


def test_off_without_urls() -> None:
    creds = TurnCredentials(TurnConfig())
    assert not creds.enabled and creds.issue(wall_now=0.0) is None


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"turn": {"urls": ["http://x"], "secret": SECRET}}, "turn.urls[0]"),
        ({"turn": {"urls": list(URLS), "secret": "short"}}, "turn.secret"),
        ({"turn": {"ttl_s": 5}}, "turn.ttl_s"),
        ({"http": {"cors_origins": ["https://a.example/path"]}}, "http.cors_origins[0]"),
        ({"rooms": {"resume_grace_s": -1.0}}, "rooms.resume_grace_s"),
        ({"media": {"tcp_port": 70000}}, "media.tcp_port"),
    ],
)
def test_bad_values_name_their_key(data: dict[str, dict[str, object]], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert [k for k, _ in info.value.errors] == [key]
    assert SECRET not in str(info.value)


def test_turn_secret_stays_out_of_repr() -> None:
    config = parse_config({"turn": {"urls": list(URLS), "secret": SECRET}})
    assert SECRET not in repr(config)
    assert config.turn.urls == URLS


def test_relay_hosts_are_the_ip_literals_of_the_urls() -> None:
    urls = (
        "turn:203.0.113.9:3478?transport=udp",
        "turns:[2001:db8::9]:5349?transport=tcp",
        "turn:turn.example:3478",
        "turn:198.51.100.7",
    )
    assert turn_relay_hosts(urls) == frozenset({"203.0.113.9", "2001:db8::9", "198.51.100.7"})
