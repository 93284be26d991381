"""Room policies, passwords (hashes), locks and bans survive a restart (``rooms.state_dir``).

A "restart" is a second :class:`RoomSecurity` built from the same configuration (what the
server does at start), with a monotonic clock that started again from zero, and a fresh
:class:`RoomService` on top: every rule the first one had is still enforced.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
from kernel_selection import selected_kernels

from sfu.app import connect_data_plane
from sfu.config import AuditConfig, Config, RoomsConfig
from sfu.core.dataplane import DataPlane
from sfu.room.identity import Grant, JoinClaims
from sfu.room.persistence import STATE_FILE, RoomStateStore, StateError
from sfu.room.policy import hash_password, verify_password
from sfu.room.security import RoomSecurity
from sfu.room.service import RoomError, RoomService
from sfu.transport.certificate import Certificate
from sfu.transport.port import MediaPort

WALL = 1_900_000_000.0


def _config(tmp_path: Path) -> Config:
    return Config(
        rooms=RoomsConfig(waiting_room=False, state_dir=str(tmp_path / "state")),
        audit=AuditConfig(path=""),
    )


def _service(security: RoomSecurity) -> RoomService:
    port = MediaPort(Certificate.generate(), lambda data, addr: None)
    dataplane = DataPlane(kernels=selected_kernels())
    connect_data_plane(port, dataplane)
    return RoomService(
        port,
        [("127.0.0.1", 40000)],
        policies=security.policies,
        bans=security.bans,
        audit=security.audit,
        dataplane=dataplane,
        kernels=dataplane.kernels,
    )


def _claims(room: str, identity: str) -> JoinClaims:
    grants = Grant.PUBLISH | Grant.SUBSCRIBE
    return JoinClaims(room=room, identity=identity, name=identity, grants=grants, iat=0, exp=1)


def _refusal(service: RoomService, room: str, identity: str, kind: str, now: float) -> str:
    with pytest.raises(RoomError) as refused:
        service.join(_claims(room, identity), lambda message: None, kind=kind, now=now)
    return refused.value.code


def test_restart_keeps_password_e2ee_lock_and_ban(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config(tmp_path)
    first = RoomSecurity.from_config(config, now=100.0, wall=WALL)
    first.policies.update("secret", {"password": hash_password("hunter2")})
    first.policies.update("private", {"e2ee_required": True})
    first.policies.update("closed", {"locked": True})
    first.bans.ban("open", "mallory", 100.0 + 600.0, 100.0)
    assert first.state is not None
    first.state.close()

    # The process comes back: a monotonic clock from zero, the wall clock a minute later.
    caplog.set_level(logging.INFO, logger="sfu.room.security")
    again = RoomSecurity.from_config(config, now=0.0, wall=WALL + 60.0)
    assert "restored 3 room policies and 1 bans" in caplog.text
    service = _service(again)
    stored = again.policies.get("secret").password
    assert stored is not None and verify_password(stored, "hunter2")
    assert not verify_password(stored, "guess")
    assert _refusal(service, "secret", "eve", "websocket", 1.0) == "password_required"
    assert _refusal(service, "private", "cam", "whip", 1.0) == "e2ee_required"
    assert _refusal(service, "closed", "eve", "websocket", 1.0) == "room_locked"
    assert _refusal(service, "open", "mallory", "websocket", 1.0) == "banned"
    # The ban runs out when it would have: 600 s after it was set, 60 s of which passed.
    assert again.bans.banned("open", "mallory", 539.0)
    assert not again.bans.banned("open", "mallory", 541.0)
    # What is not restricted still works.
    service.join(_claims("open", "alice"), lambda message: None, kind="websocket", now=2.0)

    # A reset (back to the defaults) is written through as well.
    again.policies.reset("closed")
    assert again.state is not None
    again.state.close()
    third = RoomSecurity.from_config(config, now=0.0, wall=WALL + 120.0)
    assert not third.policies.get("closed").locked and third.policies.has_own("secret")


def test_a_corrupt_state_file_is_an_error_naming_it(tmp_path: Path) -> None:
    config = _config(tmp_path)
    folder = tmp_path / "state"
    folder.mkdir()
    (folder / STATE_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StateError, match=str(folder / STATE_FILE)):
        RoomSecurity.from_config(config, now=0.0, wall=WALL)


def test_an_unreadable_state_file_is_an_error_naming_it(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    (folder / STATE_FILE).mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(StateError, match=STATE_FILE):
        RoomStateStore(folder)


def test_a_state_file_of_another_schema_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    db = sqlite3.connect(folder / STATE_FILE)
    db.execute("PRAGMA user_version=99")
    db.execute("CREATE TABLE other (x)")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="schema version 99"):
        RoomStateStore(folder)


def test_a_bad_row_is_an_error_not_an_open_room(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first = RoomSecurity.from_config(config, now=0.0, wall=WALL)
    first.policies.update("secret", {"password": hash_password("pw")})
    assert first.state is not None
    first.state.close()
    db = sqlite3.connect(tmp_path / "state" / STATE_FILE)
    db.execute("UPDATE policies SET password_digest = 'text', scrypt_n = 'x'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="bad policy row"):
        RoomSecurity.from_config(config, now=0.0, wall=WALL)


def test_files_are_private(tmp_path: Path) -> None:
    store = RoomStateStore(tmp_path / "state")
    store.close()
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_without_a_state_dir_the_operator_is_told(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sfu.room.security")
    security = RoomSecurity.from_config(Config(audit=AuditConfig(path="")))
    assert security.state is None
    assert "vanish on restart" in caplog.text


def test_a_policy_that_cannot_be_saved_is_not_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sfu.room.policy import PolicyError

    security = RoomSecurity.from_config(_config(tmp_path), now=0.0, wall=WALL)
    assert security.state is not None
    security.state.close()  # every write fails from now on
    with pytest.raises(PolicyError, match="could not be saved"):
        security.policies.update("closed", {"locked": True})
    assert not security.policies.get("closed").locked
    assert "cannot write the room state file" in caplog.text
    # A ban still holds in memory (the removal goes on); the failure is logged.
    security.bans.ban("open", "mallory", 60.0, 0.0)
    assert security.bans.banned("open", "mallory", 1.0)
    assert "cannot write a ban" in caplog.text
