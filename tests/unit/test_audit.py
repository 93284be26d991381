"""The audit log, socket-free: record fields, daily files, retention, no personal extras."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest

from sfu.room.audit import AuditLog, format_record

DAY = 86400.0
#: 2025-01-31T09:30:00.250Z
T0 = dt.datetime(2025, 1, 31, 9, 30, 0, 250000, tzinfo=dt.UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def read(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def test_record_has_the_required_fields() -> None:
    line = format_record(
        T0,
        room="standup",
        actor="user-42",
        action="remove",
        target="user-7",
        outcome="ok",
        details={"ban_s": 600},
    )
    assert line.endswith("\n") and line.count("\n") == 1
    assert json.loads(line) == {
        "time": "2025-01-31T09:30:00.250Z",
        "room": "standup",
        "actor": "user-42",
        "action": "remove",
        "target": "user-7",
        "outcome": "ok",
        "ban_s": 600,
    }


@pytest.mark.parametrize(
    "details",
    [
        {"sdp": "v=0\r\n"},
        {"ip": "198.51.100.7"},
        {"password": "hunter2"},
        {"token": "eyJ..."},
        {"name": "Ada"},
        {"ban_s": "600"},
        {"ban_s": True},
        {"locked": 1},
        {"changed": [1, 2]},
    ],
)
def test_records_refuse_anything_but_the_allowed_details(details: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="audit detail"):
        format_record(
            T0, room="r", actor="a", action="x", target=None, outcome="ok", details=details
        )


def test_daily_files_flushed_per_record_and_private(tmp_path: Path) -> None:
    clock = Clock(T0)
    directory = tmp_path / "audit"
    audit = AuditLog(directory, retention_days=30, wallclock=clock)
    audit.record(room="r1", actor="host-1", action="lock", outcome="ok", locked=True)
    first = directory / "audit-2025-01-31.jsonl"
    # Flushed at once: another reader sees the record while the file is still open.
    assert read(first) == [
        {
            "time": "2025-01-31T09:30:00.250Z",
            "room": "r1",
            "actor": "host-1",
            "action": "lock",
            "target": None,
            "outcome": "ok",
            "locked": True,
        }
    ]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    audit.record(room="r1", actor="guest", action="remove", target="host-1", outcome="forbidden")
    clock.now += DAY
    audit.record(
        room="r2", actor="admin", action="policy_update", outcome="ok", changed=["password"]
    )
    assert [r["outcome"] for r in read(first)] == ["ok", "forbidden"]
    second = read(directory / "audit-2025-02-01.jsonl")
    assert second[0]["changed"] == ["password"] and "password" not in second[0]
    assert audit.records == 3 and audit.errors == 0
    audit.close()


def test_retention_deletes_old_daily_files_only(tmp_path: Path) -> None:
    directory = tmp_path / "audit"
    directory.mkdir()
    for name in (
        "audit-2024-12-01.jsonl",  # 61 days old: deleted
        "audit-2024-12-31.jsonl",  # 31 days: deleted
        "audit-2025-01-01.jsonl",  # 30 days: kept
        "audit-2025-01-30.jsonl",
        "notes.txt",  # not ours: kept
        "audit-2025-13-01.jsonl",  # not a date: kept
    ):
        (directory / name).write_text("{}\n")
    audit = AuditLog(directory, retention_days=30, wallclock=Clock(T0))
    audit.record(room="r", actor="a", action="end_meeting")
    audit.close()
    assert sorted(p.name for p in directory.iterdir()) == [
        "audit-2025-01-01.jsonl",
        "audit-2025-01-30.jsonl",
        "audit-2025-01-31.jsonl",
        "audit-2025-13-01.jsonl",
        "notes.txt",
    ]


def test_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    audit = AuditLog(blocker / "audit", wallclock=Clock(T0))
    audit.record(room="r", actor="a", action="remove", target="b")  # must not raise
    assert audit.errors == 1 and audit.records == 0


def test_disabled_audit_log_writes_nothing(tmp_path: Path) -> None:
    audit = AuditLog(None, wallclock=Clock(T0))
    audit.record(room="r", actor="a", action="lock", locked=True)
    assert not audit.enabled and audit.records == 0
    with pytest.raises(ValueError):
        audit.record(room="r", actor="a", action="lock", sdp="v=0")  # still validated
