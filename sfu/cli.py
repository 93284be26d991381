"""Command-line interface: ``sfu serve``, ``sfu check-config``, ``sfu token``, ``sfu version``,
and ``sfu cluster-ca`` / ``sfu node-cert`` that mint the cluster's link certificates."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Sequence

from sfu import __version__
from sfu.config import ConfigError, env_var_name, load_config
from sfu.room.identity import Grant, JoinClaims, parse_grants
from sfu.signaling.auth import issue_token

__all__ = ["build_parser", "main", "parse_duration"]

_DURATION = re.compile(r"([0-9]{1,9})([smhd])", re.ASCII)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Parse ``30s``, ``10m``, ``1h`` or ``1d`` into seconds (must be positive).

    Raises :class:`argparse.ArgumentTypeError` so argparse reports it as a usage error.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use a number with s, m, h or d (30s, 10m, 1h, 1d)"
        )
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be positive")
    return seconds


def _grants_arg(text: str) -> Grant:
    """argparse type for ``--grant``: a comma-separated list of grant names."""
    try:
        return parse_grants(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="sfu",
        description="A selective forwarding unit (SFU) for WebRTC.",
        epilog="Any config key can be overridden by an SFU_<SECTION>_<KEY> environment variable.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the server until SIGINT/SIGTERM")
    serve.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file (default: built-in defaults, see configs/default.toml)",
    )

    # Internal (started by the supervisor): no help= keeps it out of the listing.
    worker = sub.add_parser("worker")
    worker.add_argument("--index", type=int, required=True)

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file (with environment overrides) and exit",
    )
    check.add_argument("path", metavar="PATH", help="TOML configuration file")

    token = sub.add_parser(
        "token",
        help="print a join token signed with the configured auth.jwt_secret",
        description="Print one join token (HS256 JWT) signed with auth.jwt_secret from the "
        "configuration (set it with SFU_AUTH_JWT_SECRET). Treat the output as a password.",
    )
    token.add_argument("--room", required=True, help="the room the token admits to")
    token.add_argument("--identity", required=True, help="stable participant identity (sub)")
    token.add_argument("--name", help="display name shown to other participants")
    token.add_argument(
        "--grant",
        required=True,
        type=_grants_arg,
        metavar="LIST",
        help="comma-separated grants: publish, subscribe, admin, host",
    )
    token.add_argument(
        "--ttl",
        type=parse_duration,
        default=parse_duration("1h"),
        metavar="DURATION",
        help="lifetime: 30s, 10m, 1h or 1d (default 1h; at most auth.max_token_ttl_s)",
    )
    token.add_argument(
        "--config",
        metavar="PATH",
        help="TOML configuration file (default: built-in defaults, see configs/default.toml)",
    )

    sub.add_parser("version", help="print version, Python version and fast-path implementation")
    ca = sub.add_parser(
        "cluster-ca", help="mint a cluster CA for the QUIC node links (certificate and key PEM)"
    )
    ca.add_argument("--cert", required=True, help="where to write the CA certificate")
    ca.add_argument("--key", required=True, help="where to write the CA key (mode 0600)")
    ca.add_argument("--name", default="sfu cluster CA", help="the CA's common name")
    node = sub.add_parser("node-cert", help="mint a node's link certificate signed by the CA")
    node.add_argument("node_id", help="the node's cluster.node_id (named in the certificate)")
    node.add_argument("--ca-cert", required=True, help="the cluster CA certificate")
    node.add_argument("--ca-key", required=True, help="the cluster CA key")
    node.add_argument("--cert", required=True, help="where to write the node certificate")
    node.add_argument("--key", required=True, help="where to write the node key (mode 0600)")
    return parser


def _print_errors(err: ConfigError) -> None:
    for key, message in err.errors:
        print(f"{key}: {message}", file=sys.stderr)


def _cmd_check_config(path: str) -> int:
    try:
        load_config(path, os.environ)
    except ConfigError as err:
        _print_errors(err)
        return 1
    print("ok")
    return 0


def _cmd_serve(path: str | None) -> int:
    try:
        config = load_config(path, os.environ)
    except ConfigError as err:
        print("sfu: invalid configuration:", file=sys.stderr)
        _print_errors(err)
        return 1
    from sfu.app import serve

    return serve(config)


def _cmd_worker(index: int) -> int:
    """One forwarding worker, started by the supervisor of ``sfu serve`` (not by hand); its
    whole configuration comes from the environment the supervisor gave it."""
    try:
        config = load_config(None, os.environ)
    except ConfigError as err:
        print("sfu: invalid configuration:", file=sys.stderr)
        _print_errors(err)
        return 1
    from sfu.app import serve_worker

    return serve_worker(config, index)


def _cmd_token(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, os.environ)
    except ConfigError as err:
        print("sfu: invalid configuration:", file=sys.stderr)
        _print_errors(err)
        return 1
    if not config.auth.jwt_secret:
        # The random per-process key of a loopback server is unknowable from here.
        var = env_var_name("auth", "jwt_secret")
        print(f"sfu: auth.jwt_secret is not set ({var})", file=sys.stderr)
        return 1
    ttl: int = args.ttl
    if ttl > config.auth.max_token_ttl_s:
        print(
            f"sfu: --ttl {ttl}s is longer than auth.max_token_ttl_s "
            f"({config.auth.max_token_ttl_s}s); the server would refuse the token",
            file=sys.stderr,
        )
        return 1
    grants: Grant = args.grant
    now = int(time.time())
    claims = JoinClaims(
        room=args.room,
        identity=args.identity,
        name=args.name,
        grants=grants,
        iat=now,
        exp=now + ttl,
    )
    try:
        token = issue_token(config.auth.jwt_secret, claims)
    except ValueError as exc:
        print(f"sfu: {exc}", file=sys.stderr)
        return 1
    print(token)
    return 0


def _cmd_cluster_ca(args: argparse.Namespace) -> int:
    from sfu.cluster.pki import mint_ca, write_pem

    cert, key = mint_ca(args.name)
    try:
        write_pem(args.key, key, private=True)
        write_pem(args.cert, cert, private=False)
    except OSError as exc:
        print(f"sfu: {exc}", file=sys.stderr)
        return 1
    print(f"cluster CA written to {args.cert} (key {args.key}: keep it off the nodes)")
    return 0


def _cmd_node_cert(args: argparse.Namespace) -> int:
    from sfu.cluster.pki import mint_node_cert, write_pem
    from sfu.config import MAX_CLUSTER_NAME, is_cluster_name

    if not is_cluster_name(args.node_id):
        print(
            f"sfu: node_id must be 1 to {MAX_CLUSTER_NAME} letters, digits, '.', '_' or '-'",
            file=sys.stderr,
        )
        return 2
    try:
        with open(args.ca_cert, "rb") as f:
            ca_cert = f.read()
        with open(args.ca_key, "rb") as f:
            ca_key = f.read()
        cert, key = mint_node_cert(ca_cert, ca_key, args.node_id)
        write_pem(args.key, key, private=True)
        write_pem(args.cert, cert, private=False)
    except (OSError, ValueError) as exc:
        print(f"sfu: {exc}", file=sys.stderr)
        return 1
    print(f"certificate of node {args.node_id} written to {args.cert} (key {args.key})")
    return 0


def _cmd_version() -> int:
    from sfu.app import fast_path_implementation

    print(f"sfu {__version__}")
    print(f"python {sys.version.split()[0]}")
    print(f"fast path: {fast_path_implementation()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    if args.command == "serve":
        return _cmd_serve(args.config)
    if args.command == "worker":
        return _cmd_worker(args.index)
    if args.command == "check-config":
        return _cmd_check_config(args.path)
    if args.command == "token":
        return _cmd_token(args)
    if args.command == "version":
        return _cmd_version()
    if args.command == "cluster-ca":
        return _cmd_cluster_ca(args)
    if args.command == "node-cert":
        return _cmd_node_cert(args)
    parser.print_help(sys.stderr)
    return 2
