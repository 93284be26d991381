"""Server configuration: TOML file plus ``SFU_<SECTION>_<KEY>`` environment overrides.

The configuration is loaded into frozen dataclasses (one per TOML section). Validation is
strict and exhaustive: unknown keys, wrong types and out-of-range values are all collected
into a single :class:`ConfigError` so an operator sees every mistake at once.

The built-in defaults are the dataclass defaults below; ``configs/default.toml`` in the
repository documents the same values (a unit test keeps them in sync), so ``sfu serve``
without ``--config`` needs no data file and works from an installed package.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ENV_PREFIX",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_WORKERS",
    "MIN_JWT_SECRET_BYTES",
    "NON_CONFIG_ENV_VARS",
    "AuditConfig",
    "AuthConfig",
    "BandwidthConfig",
    "Config",
    "ConfigError",
    "EchoConfig",
    "HttpConfig",
    "LoggingConfig",
    "MediaConfig",
    "MetricsConfig",
    "RoomsConfig",
    "ServerConfig",
    "config_environment",
    "env_var_name",
    "load_config",
    "parse_config",
    "parse_workers",
]

ENV_PREFIX: Final = "SFU_"

#: ``SFU_*`` environment variables that are not configuration overrides (read elsewhere).
NON_CONFIG_ENV_VARS: Final = frozenset({"SFU_NO_EXTENSIONS", "SFU_EXPECT_COMPILED"})

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")

#: Most forwarding workers ``server.workers`` may ask for (a bound on processes and ports).
MAX_WORKERS: Final = 256
#: ``server.workers`` value that sizes the worker count from the usable CPUs.
AUTO_WORKERS: Final = "auto"


def parse_workers(text: str) -> int | None:
    """``server.workers`` as a count (0 = "auto"), or None when it is neither."""
    value = text.strip().lower()
    if value == AUTO_WORKERS:
        return 0
    if not value.isascii() or not value.isdigit() or len(value) > 3:
        return None
    count = int(value)
    return count if 1 <= count <= MAX_WORKERS else None


#: Shortest accepted ``auth.jwt_secret`` in bytes (RFC 7518: HS256 keys >= the hash size).
MIN_JWT_SECRET_BYTES: Final = 32
#: Largest accepted ``auth.token_leeway_s``: skew beyond this is a clock problem to fix.
MAX_TOKEN_LEEWAY_S: Final = 300


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener (signalling API and health probes)."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: Largest accepted request body; SDP offers are a few KiB, so this stays small.
    max_body_bytes: int = 65536
    #: Reverse proxies (IP literals) whose ``X-Forwarded-For`` names the real client; used
    #: only to rate-limit per source (room-password attempts, pending transports).
    trusted_proxies: tuple[str, ...] = ()
    #: Seconds a new connection has to send a complete request head (slowloris bound).
    header_timeout_s: float = 10.0
    #: Seconds an idle keep-alive connection stays open between requests.
    keepalive_timeout_s: float = 15.0
    #: Most TCP connections open at once on the HTTP listener (WebSockets included); beyond
    #: it new connections are closed at once. Keep it under the process's file limit.
    max_connections: int = 4096
    #: Most TCP connections open at once from one peer address (the TCP peer: a trusted
    #: proxy is exempt, since every client behind it shares its address).
    max_connections_per_source: int = 256
    #: A second listener for ``/healthz``, ``/readyz`` and ``/metrics`` only, with its own
    #: connection budget, so probes and scrapes answer while the main listener is flooded;
    #: firewall it to your monitoring. 0 picks a free port; -1 turns it off.
    ops_port: int = -1
    #: Address of the operations listener; empty means ``http.host``.
    ops_host: str = ""
    #: Other web origins (``scheme://host[:port]``) whose pages may call WHIP/WHEP and the
    #: room protocol's HTTP endpoints (CORS); the server's own origin needs no entry.
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MediaConfig:
    """The single UDP socket that carries all ICE/DTLS/SRTP traffic."""

    udp_host: str = "127.0.0.1"
    udp_port: int = 40000
    #: IP literals advertised as ICE candidates; empty means "announce ``udp_host``".
    announced_addresses: tuple[str, ...] = ()
    #: Most transports (connected or not) this process holds; new sessions are refused beyond.
    max_transports: int = 2000
    #: Most transports still waiting for their first valid ICE check (bounds unauthenticated state).
    max_pending_transports: int = 200
    #: Of those, most created for one client address (behind ``http.trusted_proxies``, the
    #: forwarded one), so one client cannot take the pending budget from everyone else.
    max_pending_per_source: int = 20
    #: Of those, most created for one identity (the join token's subject).
    max_pending_per_identity: int = 4
    #: Seconds a new transport waits for its first valid ICE check before it fails (and
    #: frees its pending place); browsers check within milliseconds of the answer.
    ice_connect_timeout_s: float = 10.0
    #: Offer ICE-TCP (RFC 6544 passive candidates) beside UDP, for clients whose network
    #: drops UDP; announced with a lower priority than UDP.
    tcp_enabled: bool = True
    #: TCP port of ICE-TCP on ``udp_host``; 0 picks a free port (logged at start).
    tcp_port: int = 0
    #: The announced addresses reach this host through a 1:1 NAT (cloud public IPs): the
    #: start-up self-check then does not warn that they are not local.
    nat_mapping: bool = False


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """A TURN server (coturn) beside the SFU, with TURN REST API credentials (shared secret)."""

    #: ``turn:``/``turns:`` URLs handed to clients (UDP, TCP and TLS); empty turns TURN off.
    urls: tuple[str, ...] = ()
    #: coturn's ``static-auth-secret``; kept out of ``repr``. Required when ``urls`` is set.
    secret: str = field(default="", repr=False)
    #: Seconds a handed-out credential stays valid.
    ttl_s: int = 3600


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Log verbosity and output format."""

    level: str = "info"
    format: str = "text"
    #: Only when true may logs include personal data such as peer IP addresses.
    debug_personal_data: bool = False


@dataclass(frozen=True, slots=True)
class EchoConfig:
    """The diagnostic echo endpoint (``POST /echo``): media sent to it comes straight back."""

    #: It needs no join token, so it may only be on while HTTP listens on loopback.
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Join tokens (HS256 JWTs, see :mod:`sfu.signaling.auth`)."""

    #: HMAC key for join tokens. Empty means "not configured": allowed only while HTTP is
    #: bound to loopback, where the server then uses a random key made at start. Kept out
    #: of ``repr`` so a logged config never shows it.
    jwt_secret: str = field(default="", repr=False)
    #: Tolerated clock skew between token issuer and server, in seconds.
    token_leeway_s: int = 5
    #: Longest accepted token lifetime (both ``exp - iat`` and ``exp - now``), in seconds.
    max_token_ttl_s: int = 86400
    #: Let the demo page fetch development tokens from the server; loopback only.
    dev_tokens: bool = True


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Process-level settings."""

    #: After SIGINT/SIGTERM, wait at most this many seconds for sessions to end, then exit.
    drain_timeout_s: float = 5.0
    #: Name of this process in logs, to tell workers apart when logs are aggregated.
    worker_name: str = "sfu"
    #: Forwarding worker processes: ``"auto"`` (the CPUs this process may use, after its
    #: affinity mask and cgroup quota) or a count. ``"1"`` is one process doing everything;
    #: more starts a supervisor that owns the HTTP port and a worker per core, each with its
    #: own media ports (``media.udp_port + i``, docs/deployment.md). A TOML integer is
    #: accepted too.
    workers: str = "1"
    #: With several workers: once a room has this many participants on its home worker,
    #: later ones are placed on another worker and the publications they need are relayed
    #: over the pipes between workers (a room larger than one core); a saturated home
    #: worker then spreads newcomers whatever the room's size. 0 never spreads a room.
    room_spread_subscribers: int = 0


@dataclass(frozen=True, slots=True)
class BandwidthConfig:
    """Send-side bandwidth adaptation of each subscriber's transport."""

    #: Pace each subscriber's egress at a multiple of its bandwidth estimate (bursts such as
    #: keyframes leave spread over a few frame intervals). False sends media and
    #: retransmissions as they come, unpaced: an operator's way back if pacing misbehaves.
    pacing: bool = True


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus metrics at ``GET /metrics`` on the HTTP listener."""

    #: Serve ``/metrics``. Its label values never identify rooms, people or addresses.
    enabled: bool = True


#: Most a room-policy ``max_participants`` or ``rooms.max_participants`` may be.
MAX_ROOM_PARTICIPANTS: Final = 1000
#: Largest ``rooms.chat_max_message_bytes``: what the server's SCTP side accepts per message
#: (``a=max-message-size``, 64 KiB) less the chat envelope around the text.
MAX_CHAT_MESSAGE_BYTES: Final = 60000


@dataclass(frozen=True, slots=True)
class RoomsConfig:
    """Room policy defaults (a room's own policy, set by an admin, overrides them) and bounds."""

    #: Participants without the ``host`` or ``admin`` grant wait until a host admits them.
    waiting_room: bool = True
    #: A participant still waiting after this many seconds is disconnected.
    waiting_timeout_s: float = 600.0
    #: Most participants (admitted plus waiting) per room; a room's policy may only lower it.
    max_participants: int = 100
    #: Clients must encrypt media end to end (they are told at join; WHIP is refused).
    e2ee_required: bool = False
    #: Wrong room passwords accepted per minute from one source address, over all rooms.
    password_attempts_per_source: int = 5
    #: Wrong room passwords accepted per minute for one room, from all sources together.
    password_attempts_per_room: int = 20
    #: Most rooms with a policy of their own (set through the admin API).
    max_policies: int = 10000
    #: Most (room, identity) bans held at once.
    max_bans: int = 10000
    #: Directory of ``rooms.sqlite3``, where room policies (passwords as scrypt hashes,
    #: locks, e2ee_required) and bans persist across restarts; relative paths are from the
    #: working directory. Empty keeps them in memory only (they vanish on restart; the
    #: server says so at start).
    state_dir: str = ""
    #: Seconds a participant whose signaling connection dropped keeps its place, so that a
    #: rejoin with the same identity resumes the session instead of leaving and joining.
    resume_grace_s: float = 15.0
    #: Room chat (docs/protocol.md#chat): the longest message in UTF-8 bytes (E2EE ciphertext
    #: included), and the messages per second one participant may send sustained and in a burst.
    chat_max_message_bytes: int = 4096
    chat_rate_per_s: float = 5.0
    chat_burst: int = 10


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit log of moderation and policy actions (JSON lines, one file per day)."""

    #: Directory of the daily files ``audit-YYYY-MM-DD.jsonl``, created (mode 0700) on the
    #: first record; relative paths are from the working directory. Empty turns it off.
    path: str = "audit"
    #: Daily files older than this many days are deleted.
    retention_days: int = 30


#: Longest ``cluster.node_id`` / ``cluster.region`` (they are Redis key parts and metric
#: labels, so they stay short and plain).
MAX_CLUSTER_NAME: Final = 64
#: The ending of a worker's member id (``<node_id>.w<index>``): the id each forwarding
#: worker of a clustered node registers under. A node id may not end so, so that a node's
#: certificate (which names the node) can stand for exactly its own workers.
WORKER_MEMBER_RE: Final = re.compile(r"\.w[0-9]+\Z")
#: URL schemes ``cluster.redis_url`` accepts (redis-py: plain TCP, TLS, a Unix socket).
REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """A cluster of nodes sharing a Redis directory and bus (docs/architecture.md, Cluster).

    With ``redis_url`` empty the node is alone: an in-process directory, nothing to start.
    """

    #: Redis that holds the node leases, room homes, policies and bans, and carries the bus.
    redis_url: str = ""
    #: This node's name in the cluster: letters, digits, ``-``, ``_``, ``.``; empty takes the
    #: host name.
    node_id: str = ""
    #: Where the node is, for placement by region; the same characters as ``node_id``.
    region: str = "default"
    #: ``host:port`` other nodes reach this node's QUIC link at; empty: no link is offered.
    advertise_address: str = ""
    #: UDP port of the QUIC node link on ``media.udp_host``; 0 picks a free one.
    link_port: int = 0
    #: PEM files of the cluster CA and of this node's certificate and key (``sfu cluster-ca``
    #: and ``sfu node-cert`` mint them): the link accepts only peers the CA signed.
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    #: Base URL clients reach this node's HTTP at (``https://sfu-2.example.com``), no path:
    #: where other nodes send the joins they place here, and where this node's participants
    #: go when it drains. Empty: the node takes no participant placed elsewhere.
    public_url: str = ""
    #: Load (0..1: the larger of CPU share of the forwarding core and seats taken of
    #: ``capacity_participants``) at which this node is full and places newcomers elsewhere.
    max_load: float = 0.8
    #: Participants (WebSocket, WHIP and WHEP sessions) this node is sized for.
    capacity_participants: int = 1000
    #: What a WHIP/WHEP POST placed on another node gets: ``"proxy"`` (this node forwards
    #: it there and relays the answer, whose ``Location`` is on that node) or
    #: ``"redirect"`` (a ``307`` there; HTTP clients drop ``Authorization`` when a redirect
    #: changes origin, so only clients that re-send their token get through).
    whip_placement: str = "proxy"


@dataclass(frozen=True, slots=True)
class Config:
    """The complete, validated server configuration."""

    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    bandwidth: BandwidthConfig = field(default_factory=BandwidthConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def announced_addresses(self) -> tuple[str, ...]:
        """Addresses to put into ICE candidates: the configured list, else the bind host."""
        return self.media.announced_addresses or (self.media.udp_host,)

    def http_is_loopback(self) -> bool:
        """Whether HTTP listens on loopback only (development defaults are allowed then)."""
        return _is_loopback(self.http.host)


class ConfigError(Exception):
    """Invalid configuration; ``errors`` lists every problem as ``(key_path, message)``."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors: list[tuple[str, str]] = list(errors)
        super().__init__("\n".join(f"{key}: {msg}" for key, msg in self.errors))


_SECTIONS: Final[dict[str, type[Any]]] = {
    f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)
}


def _section_fields(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


_FIELDS: Final[dict[str, dict[str, Any]]] = {
    name: _section_fields(cls) for name, cls in _SECTIONS.items()
}

_STR_TUPLE: Final = tuple[str, ...]


def env_var_name(section: str, key: str) -> str:
    """The environment variable that overrides ``section.key``."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


_ENV_VARS: Final[dict[str, tuple[str, str]]] = {
    env_var_name(section, key): (section, key) for section, keys in _FIELDS.items() for key in keys
}


def _toml_type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__  # datetime, date, time


def _expected_name(tp: Any) -> str:
    if tp is bool:
        return "boolean"
    if tp is int:
        return "integer"
    if tp is float:
        return "float"
    if tp is str:
        return "string"
    if tp == _STR_TUPLE:
        return "array of strings"
    raise TypeError(f"unsupported config field type {tp!r}")  # pragma: no cover


def _check_toml_value(key: str, tp: Any, value: object, errors: list[tuple[str, str]]) -> Any:
    """Type-check one TOML value against the field type; returns the converted value or None."""
    if tp == _STR_TUPLE:
        if not isinstance(value, list):
            errors.append((key, f"expected array of strings, got {_toml_type_name(value)}"))
            return None
        ok = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                errors.append((f"{key}[{i}]", f"expected string, got {_toml_type_name(item)}"))
                ok = False
        return tuple(value) if ok else None
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    errors.append((key, f"expected {_expected_name(tp)}, got {_toml_type_name(value)}"))
    return None


_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def _convert_env(var: str, tp: Any, raw: str, errors: list[tuple[str, str]]) -> Any:
    """Convert an environment string according to the field type; returns None on error."""
    text = raw.strip()
    if tp is str:
        return raw
    if tp == _STR_TUPLE:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        errors.append((var, f"expected boolean (true/false/1/0/yes/no/on/off), got {raw!r}"))
        return None
    try:
        return int(text, 10) if tp is int else float(text)
    except ValueError:
        errors.append((var, f"expected {_expected_name(tp)}, got {raw!r}"))
        return None


def _is_ip_literal(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate(values: dict[str, dict[str, Any]], label: dict[str, str]) -> list[tuple[str, str]]:
    """Range and semantic checks on type-correct values; ``label`` maps key paths to sources."""
    errors: list[tuple[str, str]] = []

    def err(path: str, message: str) -> None:
        errors.append((label.get(path, path), message))

    def port(section: str, key: str) -> None:
        value = values[section].get(key)
        if value is not None and not 0 <= value <= 65535:
            err(f"{section}.{key}", f"must be between 0 and 65535, got {value}")

    port("http", "port")
    port("media", "udp_port")
    port("media", "tcp_port")
    errors.extend(_validate_reach(values, label))

    host = values["http"].get("host")
    if host is not None and not host.strip():
        err("http.host", "must not be empty")
    body = values["http"].get("max_body_bytes")
    if body is not None and body <= 0:
        err("http.max_body_bytes", f"must be positive, got {body}")

    udp_host = values["media"].get("udp_host")
    if udp_host is not None and not _is_ip_literal(udp_host):
        err("media.udp_host", f"must be an IP address literal, got {udp_host!r}")
    announced = values["media"].get("announced_addresses")
    for i, addr in enumerate(announced or ()):
        path = f"media.announced_addresses[{i}]"
        where = label.get("media.announced_addresses")
        item = f"{where}[{i}]" if where else path
        if not _is_ip_literal(addr):
            errors.append((item, f"must be an IP address literal, got {addr!r}"))
        elif ipaddress.ip_address(addr).is_unspecified:
            errors.append((item, f"cannot announce the unspecified address {addr!r}"))

    for key in (
        "max_transports",
        "max_pending_transports",
        "max_pending_per_source",
        "max_pending_per_identity",
    ):
        limit = values["media"].get(key)
        if limit is not None and limit <= 0:
            err(f"media.{key}", f"must be positive, got {limit}")
    ice_timeout = values["media"].get("ice_connect_timeout_s")
    if ice_timeout is not None and not (math.isfinite(ice_timeout) and 0 < ice_timeout <= 300):
        err("media.ice_connect_timeout_s", f"must be 0 < seconds <= 300, got {ice_timeout}")
    for key in ("header_timeout_s", "keepalive_timeout_s"):
        seconds = values["http"].get(key)
        if seconds is not None and not (math.isfinite(seconds) and 0 < seconds <= 3600):
            err(f"http.{key}", f"must be 0 < seconds <= 3600, got {seconds}")
    for key in ("max_connections", "max_connections_per_source"):
        limit = values["http"].get(key)
        if limit is not None and limit <= 0:
            err(f"http.{key}", f"must be positive, got {limit}")
    ops_port = values["http"].get("ops_port")
    if ops_port is not None and not -1 <= ops_port <= 65535:
        err("http.ops_port", f"must be -1 (off), 0 (any) or a port number, got {ops_port}")
    ops_host = values["http"].get("ops_host")
    if ops_host and not _is_ip_literal(ops_host):
        err("http.ops_host", f"must be empty or an IP address literal, got {ops_host!r}")

    # The echo endpoint takes no token: refuse a config that would expose it beyond loopback.
    echo_on = values["echo"].get("enabled", EchoConfig().enabled)
    http_host = values["http"].get("host", HttpConfig().host)
    if echo_on and not _is_loopback(http_host):
        err(
            "echo.enabled",
            f"the unauthenticated echo endpoint may only be enabled when http.host is a "
            f"loopback address, got http.host = {http_host!r}",
        )

    clustered = bool(values["cluster"].get("redis_url"))
    errors.extend(_validate_auth(values["auth"], http_host, label, clustered=clustered))
    errors.extend(_validate_rooms(values, label))

    level = values["logging"].get("level")
    if level is not None and level not in LOG_LEVELS:
        err("logging.level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    fmt = values["logging"].get("format")
    if fmt is not None and fmt not in LOG_FORMATS:
        err("logging.format", f"must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")

    drain = values["server"].get("drain_timeout_s")
    if drain is not None and not (math.isfinite(drain) and drain > 0):
        err("server.drain_timeout_s", f"must be a positive number of seconds, got {drain}")
    name = values["server"].get("worker_name")
    if name is not None and not (0 < len(name) <= 64 and name.isprintable()):
        err("server.worker_name", "must be 1 to 64 printable characters")
    workers = values["server"].get("workers")
    if workers is not None and parse_workers(workers) is None:
        err(
            "server.workers",
            f'must be "auto" or a count from 1 to {MAX_WORKERS}, got {workers!r}',
        )
    cluster = values["cluster"]
    if cluster.get("redis_url") and workers is not None and parse_workers(workers) not in (None, 1):
        # Each worker of a clustered node is a cluster member with a link of its own: worker
        # i listens on link_port + i and announces the advertised port + i. Its siblings and
        # the other nodes tell which worker a link is from by that address, so the two ports
        # are one; and without a link, a room spread over the workers would get no media.
        advertise = cluster.get("advertise_address") or ""
        link_port = cluster.get("link_port") or 0
        if not advertise:
            err(
                "cluster.advertise_address",
                f"is required when a clustered node runs several workers (server.workers = "
                f"{workers!r}): its workers relay to each other over their links",
            )
        elif not link_port:
            err(
                "cluster.link_port",
                "must be set (not 0) when a clustered node with a link runs several workers "
                f"(server.workers = {workers!r}): worker i listens on link_port + i",
            )
        elif advertise.rpartition(":")[2] != str(link_port):
            err(
                "cluster.advertise_address",
                f"must announce cluster.link_port ({link_port}) when a clustered node runs "
                f"several workers (worker i is told apart by its address), got {advertise!r}",
            )
    spread = values["server"].get("room_spread_subscribers")
    if spread is not None and not 0 <= spread <= MAX_ROOM_PARTICIPANTS:
        err(
            "server.room_spread_subscribers",
            f"must be 0 (never) or a participant count up to {MAX_ROOM_PARTICIPANTS}, got {spread}",
        )
    return errors


def _validate_rooms(
    values: dict[str, dict[str, Any]], label: dict[str, str]
) -> list[tuple[str, str]]:
    """Checks of ``[rooms]``, ``[audit]`` and ``http.trusted_proxies``."""
    errors: list[tuple[str, str]] = []

    def err(path: str, message: str) -> None:
        errors.append((label.get(path, path), message))

    for i, addr in enumerate(values["http"].get("trusted_proxies") or ()):
        if not _is_ip_literal(addr):
            where = label.get("http.trusted_proxies", "http.trusted_proxies")
            errors.append((f"{where}[{i}]", f"must be an IP address literal, got {addr!r}"))
    rooms = values["rooms"]
    timeout = rooms.get("waiting_timeout_s")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        err("rooms.waiting_timeout_s", f"must be a positive number of seconds, got {timeout}")
    most = rooms.get("max_participants")
    if most is not None and not 1 <= most <= MAX_ROOM_PARTICIPANTS:
        err("rooms.max_participants", f"must be between 1 and {MAX_ROOM_PARTICIPANTS}, got {most}")
    for key in (
        "password_attempts_per_source",
        "password_attempts_per_room",
        "max_policies",
        "max_bans",
        "chat_burst",
    ):
        value = rooms.get(key)
        if value is not None and value <= 0:
            err(f"rooms.{key}", f"must be positive, got {value}")
    size = rooms.get("chat_max_message_bytes")
    if size is not None and not 1 <= size <= MAX_CHAT_MESSAGE_BYTES:
        err(
            "rooms.chat_max_message_bytes",
            f"must be between 1 and {MAX_CHAT_MESSAGE_BYTES}, got {size}",
        )
    rate = rooms.get("chat_rate_per_s")
    if rate is not None and not (math.isfinite(rate) and rate > 0):
        err("rooms.chat_rate_per_s", f"must be a positive number, got {rate}")
    days = values["audit"].get("retention_days")
    if days is not None and not 1 <= days <= 3650:
        err("audit.retention_days", f"must be between 1 and 3650, got {days}")
    path = values["audit"].get("path")
    if path is not None and ("\x00" in path or (path and not path.strip())):
        err("audit.path", "must be a directory path, or empty to turn the audit log off")
    return errors


#: Values of ``cluster.whip_placement`` (:mod:`sfu.signaling.whip_forward`).
WHIP_PLACEMENTS: Final = ("proxy", "redirect")
#: Largest ``cluster.capacity_participants`` (a sanity bound: a typo of extra zeros).
MAX_CAPACITY_PARTICIPANTS: Final = 1_000_000


def is_public_url(text: str) -> bool:
    """Whether ``text`` is an ``http(s)://host[:port]`` base URL (an origin, RFC 6454; one
    trailing ``/`` allowed) whose port, if any, is valid."""
    origin = text.removesuffix("/")
    if not _is_origin(origin):
        return False
    rest = origin.partition("://")[2]
    if rest.endswith("]") or ":" not in rest:
        return not rest.startswith(":")
    host, _, port = rest.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def is_cluster_name(text: str) -> bool:
    """Whether ``text`` may be a node id or region: 1-64 of ``[A-Za-z0-9._-]``."""
    return 0 < len(text) <= MAX_CLUSTER_NAME and all(
        c.isascii() and (c.isalnum() or c in "._-") for c in text
    )


def _validate_cluster(
    values: dict[str, dict[str, Any]], label: dict[str, str]
) -> list[tuple[str, str]]:
    """Checks of ``[cluster]``: the Redis URL's scheme, names, the link's address and files."""
    errors: list[tuple[str, str]] = []
    cluster = values["cluster"]

    def err(path: str, message: str) -> None:
        errors.append((label.get(path, path), message))

    url = cluster.get("redis_url")
    if url and not url.startswith(REDIS_SCHEMES):
        err("cluster.redis_url", f"must start with one of {', '.join(REDIS_SCHEMES)}")
    for key in ("node_id", "region"):
        value = cluster.get(key)
        if (
            value is not None
            and not (key == "node_id" and value == "")
            and not (is_cluster_name(value))
        ):
            err(
                f"cluster.{key}",
                f"must be 1 to {MAX_CLUSTER_NAME} letters, digits, '.', '_' or '-', got {value!r}",
            )
    node_id = cluster.get("node_id")
    if node_id and is_cluster_name(node_id) and WORKER_MEMBER_RE.search(node_id):
        err(
            "cluster.node_id",
            f"must not end in '.w' and digits (the cluster names a node's workers so), "
            f"got {node_id!r}",
        )
    advertise = cluster.get("advertise_address")
    if advertise:
        host, _, port_text = advertise.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            err("cluster.advertise_address", f"must be host:port, got {advertise!r}")
    link_port = cluster.get("link_port")
    if link_port is not None and not 0 <= link_port <= 65535:
        err("cluster.link_port", f"must be between 0 and 65535, got {link_port}")
    public_url = cluster.get("public_url")
    if public_url and not is_public_url(public_url):
        err(
            "cluster.public_url",
            f"must be an http:// or https:// URL with a host and no path, got {public_url!r}",
        )
    max_load = cluster.get("max_load")
    if max_load is not None and not (math.isfinite(max_load) and 0 < max_load <= 1):
        err("cluster.max_load", f"must be above 0 and at most 1, got {max_load}")
    capacity = cluster.get("capacity_participants")
    if capacity is not None and not 1 <= capacity <= MAX_CAPACITY_PARTICIPANTS:
        err(
            "cluster.capacity_participants",
            f"must be between 1 and {MAX_CAPACITY_PARTICIPANTS}, got {capacity}",
        )
    placement = cluster.get("whip_placement")
    if placement is not None and placement not in WHIP_PLACEMENTS:
        err(
            "cluster.whip_placement",
            f"must be one of {', '.join(WHIP_PLACEMENTS)}, got {placement!r}",
        )
    files = [cluster.get(k) or "" for k in ("ca_file", "cert_file", "key_file")]
    if advertise and not all(files):
        for key, value in zip(("ca_file", "cert_file", "key_file"), files, strict=True):
            if not value:
                err(f"cluster.{key}", "is required when cluster.advertise_address is set")
    return errors


#: URL schemes of ``turn.urls`` (RFC 7065).
_TURN_SCHEMES: Final = ("turn:", "turns:")
#: Shortest accepted ``turn.secret`` (coturn's static-auth-secret): an HMAC key.
MIN_TURN_SECRET_BYTES: Final = 16


def _validate_reach(
    values: dict[str, dict[str, Any]], label: dict[str, str]
) -> list[tuple[str, str]]:
    """Checks of ``[turn]``, ``http.cors_origins`` and ``rooms.resume_grace_s``."""
    errors: list[tuple[str, str]] = []

    def err(path: str, message: str) -> None:
        errors.append((label.get(path, path), message))

    turn = values["turn"]
    urls = turn.get("urls") or ()
    for i, url in enumerate(urls):
        if not url.startswith(_TURN_SCHEMES) or any(c.isspace() for c in url):
            where = label.get("turn.urls", "turn.urls")
            errors.append((f"{where}[{i}]", f"must be a turn: or turns: URL, got {url!r}"))
    secret = turn.get("secret", "")
    if urls and len(secret.encode()) < MIN_TURN_SECRET_BYTES:
        err("turn.secret", f"must be at least {MIN_TURN_SECRET_BYTES} bytes when turn.urls is set")
    ttl = turn.get("ttl_s")
    if ttl is not None and not 60 <= ttl <= 86400:
        err("turn.ttl_s", f"must be between 60 and 86400 seconds, got {ttl}")
    for i, origin in enumerate(values["http"].get("cors_origins") or ()):
        if not _is_origin(origin):
            where = label.get("http.cors_origins", "http.cors_origins")
            errors.append(
                (f"{where}[{i}]", f"must be an origin like https://app.example, got {origin!r}")
            )
    grace = values["rooms"].get("resume_grace_s")
    if grace is not None and not (math.isfinite(grace) and 0 <= grace <= 300):
        err("rooms.resume_grace_s", f"must be between 0 and 300 seconds, got {grace}")
    return errors


def _is_origin(text: str) -> bool:
    """``scheme://host[:port]`` with nothing after it (RFC 6454 serialisation)."""
    scheme, sep, rest = text.partition("://")
    return (
        scheme in ("http", "https")
        and bool(sep)
        and bool(rest)
        and not any(c in rest for c in "/?#@ ")
        and text == text.strip()
    )


def _validate_auth(
    auth: dict[str, Any], http_host: str, label: dict[str, str], *, clustered: bool = False
) -> list[tuple[str, str]]:
    """Checks of the ``[auth]`` section; a secret's value never appears in a message.
    ``clustered``: every node must check every other node's tokens (a join moved between
    nodes keeps its token), so the secret is required even on loopback."""
    errors: list[tuple[str, str]] = []

    def err(path: str, message: str) -> None:
        errors.append((label.get(path, path), message))

    leeway = auth.get("token_leeway_s")
    if leeway is not None and not 0 <= leeway <= MAX_TOKEN_LEEWAY_S:
        err("auth.token_leeway_s", f"must be between 0 and {MAX_TOKEN_LEEWAY_S}, got {leeway}")
    ttl = auth.get("max_token_ttl_s")
    if ttl is not None and ttl <= 0:
        err("auth.max_token_ttl_s", f"must be a positive number of seconds, got {ttl}")

    loopback = _is_loopback(http_host)
    secret = auth.get("jwt_secret", AuthConfig().jwt_secret)
    size = len(secret.encode("utf-8"))
    if secret and size < MIN_JWT_SECRET_BYTES:
        err(
            "auth.jwt_secret",
            f"must be at least {MIN_JWT_SECRET_BYTES} bytes, got {size} bytes "
            f"(generate one with: openssl rand -base64 48)",
        )
    elif not secret and clustered:
        err(
            "auth.jwt_secret",
            f"must be set, the same on every node, when cluster.redis_url is set (at least "
            f"{MIN_JWT_SECRET_BYTES} bytes, e.g. via {env_var_name('auth', 'jwt_secret')}): "
            f"without it each node signs with its own random key and refuses the others' tokens",
        )
    elif not secret and not loopback:
        err(
            "auth.jwt_secret",
            f"must be set (at least {MIN_JWT_SECRET_BYTES} bytes, e.g. via "
            f"{env_var_name('auth', 'jwt_secret')} from a secret store) unless http.host is "
            f"a loopback address, got http.host = {http_host!r}",
        )

    # Development tokens are handed to anyone who asks: never beyond this machine.
    if auth.get("dev_tokens", AuthConfig().dev_tokens) and not loopback:
        err(
            "auth.dev_tokens",
            f"development tokens may only be enabled when http.host is a loopback "
            f"address, got http.host = {http_host!r}",
        )
    return errors


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Config:
    """Validate parsed TOML ``data`` plus ``environ`` overrides; raise :class:`ConfigError`."""
    errors: list[tuple[str, str]] = []
    values: dict[str, dict[str, Any]] = {section: {} for section in _FIELDS}
    label: dict[str, str] = {}

    for section, table in data.items():
        fields = _FIELDS.get(section)
        if fields is None:
            errors.append((section, "unknown section"))
            continue
        if not isinstance(table, dict):
            errors.append((section, f"expected table, got {_toml_type_name(table)}"))
            continue
        for key, value in table.items():
            path = f"{section}.{key}"
            tp = fields.get(key)
            if tp is None:
                errors.append((path, "unknown key"))
                continue
            if path == "server.workers" and type(value) is int:
                value = str(value)  # workers = 2 reads as naturally as workers = "auto"
            converted = _check_toml_value(path, tp, value, errors)
            if converted is not None:
                values[section][key] = converted

    env = environ or {}
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or var in NON_CONFIG_ENV_VARS:
            continue
        target = _ENV_VARS.get(var)
        if target is None:
            errors.append((var, "unknown configuration variable (no matching section.key)"))
            continue
        section, key = target
        converted = _convert_env(var, _FIELDS[section][key], env[var], errors)
        if converted is not None:
            values[section][key] = converted
            label[f"{section}.{key}"] = var

    errors.extend(_validate(values, label))
    errors.extend(_validate_cluster(values, label))
    if errors:
        raise ConfigError(errors)
    sections = {name: cls(**values[name]) for name, cls in _SECTIONS.items()}
    return Config(**sections)


def config_environment(config: Config) -> dict[str, str]:
    """Every key of ``config`` as its ``SFU_<SECTION>_<KEY>`` override, so that a child
    process loading only its environment gets exactly this configuration back."""
    env: dict[str, str] = {}
    for section in _SECTIONS:
        table = getattr(config, section)
        for key in _FIELDS[section]:
            value = getattr(table, key)
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = repr(value) if isinstance(value, float) else str(value)
            env[env_var_name(section, key)] = text
    return env


def load_config(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (``None``: built-in defaults) and apply ``environ`` overrides.

    File-level problems (missing file, TOML syntax error with its line and column) are
    reported as a :class:`ConfigError` keyed by the file path.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([(str(p), "file not found")]) from None
        except IsADirectoryError:
            raise ConfigError([(str(p), "is a directory, not a file")]) from None
        except PermissionError:
            raise ConfigError([(str(p), "permission denied")]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([(str(p), f"not valid UTF-8: {exc.reason}")]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([(str(p), f"invalid TOML: {exc}")]) from None
    return parse_config(data, environ)
