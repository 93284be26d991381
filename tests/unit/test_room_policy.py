"""Room policy, socket-free: password hashing, attempt limits, the policy table, bans."""

from __future__ import annotations

import dataclasses
import hmac
from pathlib import Path

import pytest

import sfu.room.policy as policy_module
from sfu.config import RoomsConfig
from sfu.room.policy import (
    AttemptLimiter,
    Bans,
    PasswordAttempts,
    PolicyError,
    PolicyStore,
    RoomDefaults,
    RoomPolicy,
    hash_password,
    parse_policy_update,
    verify_password,
)

# -- passwords -------------------------------------------------------------------------------


def test_password_is_stored_as_a_salted_scrypt_hash() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.salt != second.salt and first.digest != second.digest  # salted
    assert len(first.salt) == 16 and len(first.digest) == 32
    assert (first.n, first.r, first.p) == (2**14, 8, 1)
    assert b"correct horse" not in first.salt + first.digest
    assert "correct" not in repr(first) and first.digest.hex() not in repr(first)
    assert verify_password(first, "correct horse") and verify_password(second, "correct horse")
    for wrong in ("correct hors", "Correct horse", "", "correct horse "):
        assert not verify_password(first, wrong)
    assert verify_password(hash_password("pässwörd \ud800"), "pässwörd \ud800")


def test_password_check_compares_digests_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = hash_password("secret")
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(policy_module.hmac, "compare_digest", spy)
    assert verify_password(stored, "secret") and not verify_password(stored, "guess")
    assert len(calls) == 2 and all(b == stored.digest for _a, b in calls)


def test_public_policy_never_shows_the_hash() -> None:
    policy = RoomPolicy(password=hash_password("pw"))
    public = policy.public()
    assert public == {
        "waiting_room": True,
        "locked": False,
        "max_participants": 100,
        "e2ee_required": False,
        "password_set": True,
    }


# -- attempt limits --------------------------------------------------------------------------


def test_sixth_wrong_attempt_within_a_minute_is_rate_limited() -> None:
    attempts = PasswordAttempts(per_source=5, per_room=20)
    for i in range(5):
        assert attempts.begin("198.51.100.7", "room", 100.0 + i)  # five wrong ones
    assert not attempts.begin("198.51.100.7", "room", 105.0)  # the sixth: refused
    assert not attempts.begin("198.51.100.7", "other-room", 106.0)  # per source, all rooms
    assert attempts.begin("203.0.113.9", "room", 106.0)  # another source is not affected
    # A minute after the first wrong attempt, one attempt is allowed again.
    assert not attempts.begin("198.51.100.7", "room", 159.9)
    assert attempts.begin("198.51.100.7", "room", 160.1)


def test_right_password_does_not_use_up_the_allowance() -> None:
    attempts = PasswordAttempts(per_source=5, per_room=20)
    for i in range(4):
        assert attempts.begin("198.51.100.7", "room", 10.0 + i)
    # The fifth attempt is the right password: it succeeds and is forgotten.
    assert attempts.begin("198.51.100.7", "room", 14.0)
    attempts.succeeded("198.51.100.7", "room", 14.0)
    assert attempts.begin("198.51.100.7", "room", 15.0)  # room for one more wrong guess
    assert not attempts.begin("198.51.100.7", "room", 16.0)


def test_per_room_limit_stops_distributed_guessing() -> None:
    attempts = PasswordAttempts(per_source=5, per_room=20)
    for i in range(20):
        assert attempts.begin(f"192.0.2.{i}", "target", 1.0)
    assert not attempts.begin("192.0.2.200", "target", 2.0)
    assert attempts.begin("192.0.2.200", "another", 2.0)


def test_attempt_tables_are_bounded_and_keep_no_addresses() -> None:
    attempts = PasswordAttempts(per_source=5, per_room=5, max_keys=50)
    for i in range(500):
        attempts.begin(f"10.0.{i // 256}.{i % 256}", f"room-{i}", 1.0)
    assert len(attempts.sources) <= 50 and len(attempts.rooms) <= 50
    keys = list(attempts.sources._events)
    assert all("10.0." not in key for key in keys)
    # Expired entries vanish as soon as something else is counted.
    attempts.begin("10.9.9.9", "fresh", 1000.0)
    assert len(attempts.sources) == 1 and len(attempts.rooms) == 1


def test_attempt_limiter_window_slides() -> None:
    limiter = AttemptLimiter(2, window=10.0)
    limiter.add("k", 0.0)
    limiter.add("k", 5.0)
    assert not limiter.allowed("k", 9.9)
    assert limiter.allowed("k", 10.0)  # the first has left the window
    limiter.forget("k", 5.0)
    limiter.forget("k", 123.0)  # nothing recorded then: no effect
    assert limiter.allowed("k", 10.0)


# -- the policy table ------------------------------------------------------------------------


def test_policy_defaults_come_from_config_and_rooms_override_them() -> None:
    config = RoomsConfig(waiting_room=False, max_participants=40, e2ee_required=True)
    store = PolicyStore(RoomDefaults.from_config(config))
    assert store.get("any") == RoomPolicy(
        waiting_room=False, locked=False, max_participants=40, e2ee_required=True
    )
    old, new = store.update("board", {"locked": True, "max_participants": 5})
    assert old == store.get("any") and new.locked and new.max_participants == 5
    assert store.get("board") is new and store.has_own("board") and len(store) == 1
    # Back to the defaults by hand or by reset: nothing stored.
    store.update("board", {"locked": False, "max_participants": 40})
    assert not store.has_own("board") and len(store) == 0
    store.update("board", {"locked": True})
    assert store.reset("board")[1] == store.defaults.policy and len(store) == 0


def test_policy_table_is_bounded() -> None:
    store = PolicyStore(RoomDefaults(max_policies=3))
    for name in ("a", "b", "c"):
        store.update(name, {"locked": True})
    with pytest.raises(PolicyError, match="too many"):
        store.update("d", {"locked": True})
    assert not store.has_own("d")
    store.update("a", {"e2ee_required": True})  # an existing entry may still change
    store.reset("b")
    store.update("d", {"locked": True})
    assert len(store) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({}, "at least one"),
        ({"lockd": True}, "unknown field 'lockd'"),
        ({"locked": "yes"}, "'locked'"),
        ({"waiting_room": 1}, "'waiting_room'"),
        ({"max_participants": 0}, "from 1 to 50"),
        ({"max_participants": 51}, "from 1 to 50"),
        ({"max_participants": True}, "'max_participants'"),
        ({"password": ""}, "'password'"),
        ({"password": "x" * 129}, "'password'"),
        ({"password": 1234}, "'password'"),
        ({"password": "a\x00b"}, "'password'"),
    ],
)
def test_policy_updates_are_validated(body: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy_update(body, max_participants=50)


def test_valid_policy_update() -> None:
    body = {"password": "s3cret", "locked": True, "max_participants": 50, "waiting_room": False}
    assert parse_policy_update(body, max_participants=50) == body
    assert parse_policy_update({"password": None}, 50) == {"password": None}


# -- bans ------------------------------------------------------------------------------------


def test_bans_are_per_room_expire_and_are_bounded() -> None:
    bans = Bans(max_entries=3)
    bans.ban("room", "mallory", until=100.0, now=0.0)
    assert bans.banned("room", "mallory", 99.0)
    assert not bans.banned("other-room", "mallory", 99.0)  # never wider than one room
    assert not bans.banned("room", "alice", 99.0)
    bans.ban("room", "mallory", until=50.0, now=1.0)  # a shorter ban does not shorten it
    assert bans.banned("room", "mallory", 99.0)
    assert not bans.banned("room", "mallory", 100.0) and len(bans) == 0
    for i in range(10):
        bans.ban("room", f"user-{i}", until=1000.0 + i, now=200.0)
    assert len(bans) == 3
    # The bans closest to expiry made way for the newer ones.
    assert [bans.banned("room", f"user-{i}", 500.0) for i in (7, 8, 9)] == [True] * 3
    bans.prune(2000.0)
    assert len(bans) == 0


def test_policy_objects_are_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RoomPolicy().locked = True  # type: ignore[misc]


# -- configuration ---------------------------------------------------------------------------


def test_rooms_and_audit_config_are_validated_by_key() -> None:
    from sfu.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "rooms": {
                    "max_participants": 0,
                    "waiting_timeout_s": -1,
                    "password_attempts_per_source": 0,
                    "max_bans": -5,
                },
                "audit": {"retention_days": 0},
                "http": {"trusted_proxies": ["10.0.0.2", "proxy.local"]},
            },
            {"SFU_ROOMS_WAITING_ROOM": "maybe"},
        )
    errors = dict(info.value.errors)
    assert set(errors) == {
        "rooms.max_participants",
        "rooms.waiting_timeout_s",
        "rooms.password_attempts_per_source",
        "rooms.max_bans",
        "audit.retention_days",
        "http.trusted_proxies[1]",
        "SFU_ROOMS_WAITING_ROOM",
    }
    config = parse_config({}, {"SFU_ROOMS_WAITING_ROOM": "off", "SFU_AUDIT_PATH": ""})
    assert config.rooms.waiting_room is False and config.audit.path == ""


def test_security_state_follows_the_config(tmp_path: Path) -> None:
    from sfu.config import AuditConfig, Config
    from sfu.room.security import RoomSecurity

    config = Config(
        rooms=RoomsConfig(max_participants=500, waiting_room=False, max_bans=7),
        audit=AuditConfig(path=str(tmp_path / "audit"), retention_days=9),
    )
    security = RoomSecurity.from_config(config)
    assert security.limits.max_participants == 500
    assert security.policies.get("any").max_participants == 500
    assert security.policies.get("any").waiting_room is False
    assert security.bans.max_entries == 7
    assert security.audit.enabled and security.audit.retention_days == 9
    assert not RoomSecurity.from_config(Config(audit=AuditConfig(path=""))).audit.enabled
