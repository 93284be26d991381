"""The audit log: who moderated whom, and who changed a room's policy, as JSON lines.

One record per moderation or policy action, successful or refused::

    {"time": "2025-01-31T09:30:00.123Z", "room": "standup", "actor": "user-42",
     "action": "remove", "target": "user-7", "outcome": "ok", "ban_s": 600}

Records name token identities (who acted, on whom) and never carry media, chat, SDP, IP
addresses, display names, passwords or tokens: :meth:`AuditLog.record` accepts only a fixed
set of detail fields with plain values. Formatting (:func:`format_record`) is pure; the
writer appends to one file per UTC day (``audit-YYYY-MM-DD.jsonl``), flushes each record and
deletes files older than the retention. It runs on the control plane, never per packet.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

__all__ = ["AUDIT_DETAILS", "AuditLog", "format_record"]

log = logging.getLogger(__name__)

#: Detail fields a record may carry besides the fixed ones, and their types.
AUDIT_DETAILS: Final[dict[str, type | tuple[type, ...]]] = {
    "ban_s": int,
    "track": str,
    "locked": bool,
    "muted": bool,
    "count": int,
    "reason": str,
    "changed": list,
    "via": str,
}
_FILE: Final = re.compile(r"audit-(\d{4}-\d{2}-\d{2})\.jsonl")


def format_record(
    when: float,
    *,
    room: str,
    actor: str | None,
    action: str,
    target: str | None,
    outcome: str,
    details: dict[str, Any] | None = None,
) -> str:
    """One audit record as a JSON line (with its newline); unknown details are refused."""
    stamp = dt.datetime.fromtimestamp(when, dt.UTC)
    record: dict[str, Any] = {
        "time": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
        "room": room,
        "actor": actor,
        "action": action,
        "target": target,
        "outcome": outcome,
    }
    for key, value in (details or {}).items():
        kind = AUDIT_DETAILS.get(key)
        if kind is None or isinstance(value, bool) is not (kind is bool):
            raise ValueError(f"audit detail {key!r} is not allowed")
        if not isinstance(value, kind):
            raise ValueError(f"audit detail {key!r} has the wrong type")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise ValueError(f"audit detail {key!r} must list strings")
        record[key] = value
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


class AuditLog:
    """Appends records to daily files under ``directory`` (``None``: records are dropped).

    Write errors are logged (without the record) and counted, never raised: a full disk
    must not stop a host from removing someone.
    """

    def __init__(
        self,
        directory: str | Path | None,
        *,
        retention_days: int = 30,
        wallclock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory) if directory else None
        self.retention_days = retention_days
        self.wallclock = wallclock
        self.records = 0
        self.errors = 0
        self._day: str | None = None
        self._file: IO[str] | None = None

    @property
    def enabled(self) -> bool:
        """Whether records are kept."""
        return self.directory is not None

    def record(
        self,
        *,
        room: str,
        actor: str | None,
        action: str,
        target: str | None = None,
        outcome: str = "ok",
        **details: Any,
    ) -> None:
        """Append one record (see the module docstring for the fields)."""
        now = self.wallclock()
        line = format_record(
            now,
            room=room,
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            details=details,
        )
        if self.directory is None:
            return
        try:
            handle = self._open(dt.datetime.fromtimestamp(now, dt.UTC).date())
            handle.write(line)
            handle.flush()
            self.records += 1
        except OSError as exc:
            self.errors += 1
            log.error("audit log: cannot write a record (%s)", exc.strerror or type(exc).__name__)
            self.close()

    def _open(self, day: dt.date) -> IO[str]:
        name = day.isoformat()
        if self._file is not None and self._day == name:
            return self._file
        self.close()
        assert self.directory is not None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.directory / f"audit-{name}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._day = name
        self.prune(day)
        return self._file

    def prune(self, today: dt.date) -> list[Path]:
        """Delete daily files older than the retention; returns the deleted paths."""
        if self.directory is None or not self.directory.is_dir():
            return []
        oldest = today - dt.timedelta(days=self.retention_days)
        deleted = []
        for path in self.directory.iterdir():
            match = _FILE.fullmatch(path.name)
            if match is None:
                continue
            try:
                day = dt.date.fromisoformat(match.group(1))
            except ValueError:
                continue
            if day < oldest:
                try:
                    path.unlink()
                    deleted.append(path)
                except OSError:
                    self.errors += 1
        return deleted

    def close(self) -> None:
        """Close the current file (the next record reopens one)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                self.errors += 1
            self._file = None
            self._day = None
