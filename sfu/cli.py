"""Command-line interface: ``sfu serve``, ``sfu check-config`` and ``sfu version``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sfu import __version__
from sfu.config import ConfigError, load_config

__all__ = ["build_parser", "main"]


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

    check = sub.add_parser(
        "check-config",
        help="validate a configuration file (with environment overrides) and exit",
    )
    check.add_argument("path", metavar="PATH", help="TOML configuration file")

    sub.add_parser("version", help="print version, Python version and fast-path implementation")
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
    if args.command == "check-config":
        return _cmd_check_config(args.path)
    if args.command == "version":
        return _cmd_version()
    parser.print_help(sys.stderr)
    return 2
