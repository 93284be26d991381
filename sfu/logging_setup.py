"""Process-wide logging: text or JSON lines on stderr, with personal data kept out by default.

Peer addresses and similar personal data may appear in logs only when
``logging.debug_personal_data`` is true. Our own code passes such values through
:func:`redact`; records from third-party libraries (aiohttp, asyncio) get IP-looking
arguments scrubbed by a filter.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import time
from typing import Any, Final, TextIO

from sfu.config import LoggingConfig

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
    "personal_data_allowed",
    "redact",
]

REDACTED: Final = "<redacted>"

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

_state = {"personal_data": False}


def personal_data_allowed() -> bool:
    """Whether logs may currently include personal data (``debug_personal_data``)."""
    return _state["personal_data"]


def redact(value: object) -> str:
    """``str(value)`` when personal data may be logged, else a fixed placeholder."""
    return str(value) if _state["personal_data"] else REDACTED


def _utc_timestamp(created: float) -> str:
    secs = int(created)
    ms = int((created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


class TextFormatter(logging.Formatter):
    """``<utc time> <LEVEL> <logger> [<worker>] <message>`` on one line (plus any traceback)."""

    def __init__(self, worker_name: str) -> None:
        super().__init__()
        self._worker = worker_name

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc_timestamp(record.created)} {record.levelname} {record.name} "
            f"[{self._worker}] {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a ``fields`` dict passed via ``extra`` is merged in."""

    def __init__(self, worker_name: str) -> None:
        super().__init__()
        self._worker = worker_name

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "worker": self._worker,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                obj.setdefault(str(key), value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str, ensure_ascii=False)


def _looks_like_address(value: object) -> bool:
    if isinstance(value, tuple) and value:
        value = value[0]
    if not isinstance(value, str):
        return False
    try:
        ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return False
    return True


class _ThirdPartyScrubber(logging.Filter):
    """Replaces IP-address arguments in records from non-``sfu`` loggers with a placeholder."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _state["personal_data"] or record.name == "sfu" or record.name.startswith("sfu."):
            return True
        args = record.args
        if isinstance(args, tuple) and any(_looks_like_address(a) for a in args):
            record.args = tuple(REDACTED if _looks_like_address(a) else a for a in args)
        return True


_HANDLER_MARK: Final = "_sfu_handler"


def configure_logging(
    cfg: LoggingConfig, *, worker_name: str = "sfu", stream: TextIO | None = None
) -> None:
    """Install one stderr handler on the root logger per ``cfg``; safe to call again."""
    _state["personal_data"] = cfg.debug_personal_data
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    formatter: logging.Formatter = (
        JsonFormatter(worker_name) if cfg.format == "json" else TextFormatter(worker_name)
    )
    handler.setFormatter(formatter)
    handler.addFilter(_ThirdPartyScrubber())
    root.addHandler(handler)
    root.setLevel(_LEVELS[cfg.level])
    # Access logs carry client addresses: only keep them when personal data is allowed.
    logging.getLogger("aiohttp.access").disabled = not cfg.debug_personal_data
