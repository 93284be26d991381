"""Short-lived TURN credentials for coturn's REST API mode (``use-auth-secret``).

The SFU and coturn share a secret; for each participant the SFU makes a username
``"<expiry>:<id>"`` and the password ``base64(HMAC-SHA1(secret, username))``
(draft-uberti-behave-turn-rest-00 §2.2), which coturn checks with no call back to us. The
id is random per handout, so coturn's logs never learn who joined. The credentials reach the
client in the join response, in WHIP/WHEP ``Link`` headers (RFC 9725 §4.6) and on the demo
page; they expire after ``turn.ttl_s``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass

from sfu.config import TurnConfig

__all__ = ["IceServer", "TurnCredentials", "turn_relay_hosts"]


@dataclass(frozen=True, slots=True)
class IceServer:
    """One ``RTCIceServer`` for a client: URLs, username and credential."""

    urls: tuple[str, ...]
    username: str
    credential: str

    def to_json(self) -> dict[str, object]:
        """The ``RTCIceServer`` dictionary (W3C WebRTC §4.2.1)."""
        return {"urls": list(self.urls), "username": self.username, "credential": self.credential}

    def link_headers(self) -> list[str]:
        """One ``Link`` header value per URL (RFC 9725 §4.6, RFC 8288 quoting)."""
        return [
            f'<{url}>; rel="ice-server"; username="{_quote(self.username)}"; '
            f'credential="{_quote(self.credential)}"; credential-type="password"'
            for url in self.urls
        ]


def _quote(text: str) -> str:
    """An RFC 8288 quoted-string body (usernames and base64 passwords need no escapes,
    but a backslash or quote must never end the string early)."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


class TurnCredentials:
    """Makes TURN REST API credentials from the ``[turn]`` configuration."""

    def __init__(self, config: TurnConfig) -> None:
        self._urls = config.urls
        self._secret = config.secret.encode()
        self._ttl = config.ttl_s

    @property
    def enabled(self) -> bool:
        """Whether TURN is configured (``turn.urls`` not empty)."""
        return bool(self._urls)

    def issue(self, *, wall_now: float, user: str | None = None) -> IceServer | None:
        """Credentials valid ``ttl_s`` from ``wall_now`` (Unix seconds), or None when TURN
        is off. ``user`` is for tests; by default a random id that names nobody."""
        if not self._urls:
            return None
        name = user if user is not None else secrets.token_hex(8)
        username = f"{int(wall_now) + self._ttl}:{name}"
        digest = hmac.new(self._secret, username.encode(), hashlib.sha1).digest()
        return IceServer(self._urls, username, base64.b64encode(digest).decode("ascii"))


def turn_relay_hosts(urls: tuple[str, ...]) -> frozenset[str]:
    """The IP literals among the hosts of ``turn:``/``turns:`` URLs (RFC 7065): a peer
    address among them is a relayed candidate (coturn relays from its own address unless
    ``relay-ip`` says otherwise). Host names are skipped: resolving them would leak a query."""
    hosts: set[str] = set()
    for url in urls:
        rest = url.split(":", 1)[1] if ":" in url else url
        rest = rest.split("?", 1)[0]
        if rest.startswith("["):
            host = rest[1:].split("]", 1)[0]
        else:
            host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
        try:
            hosts.add(str(ipaddress.ip_address(host)))
        except ValueError:
            continue
    return frozenset(hosts)
