"""Room policy: passwords, waiting room, lock, size and E2EE flag; bans; attempt limits.

Sans-I/O and clock-free: callers pass ``now``. A room's policy is the configured defaults
(:class:`RoomDefaults`) overlaid with what an admin set for that room (:class:`PolicyStore`,
bounded). Room passwords are kept only as salted scrypt hashes and compared in constant
time; wrong attempts are counted per source and per room in bounded, expiring tables
(:class:`PasswordAttempts`). Bans bar one identity from one room for a while (:class:`Bans`);
nothing here is global.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sfu.config import MAX_ROOM_PARTICIPANTS, RoomsConfig

__all__ = [
    "MAX_BAN_S",
    "MAX_PASSWORD_CHARS",
    "AttemptLimiter",
    "Bans",
    "PasswordAttempts",
    "PasswordHash",
    "PolicyError",
    "PolicyStore",
    "RoomDefaults",
    "RoomPolicy",
    "hash_password",
    "parse_policy_update",
    "policy_from_wire",
    "policy_to_wire",
    "verify_password",
]

#: Longest accepted room password (characters).
MAX_PASSWORD_CHARS: Final = 128
#: Longest ban a host may impose (a week).
MAX_BAN_S: Final = 7 * 86400
#: scrypt cost: 2**14 x 8 x 128 bytes = 16 MiB and tens of milliseconds per hash, so that a
#: stolen hash is slow to guess while a join stays quick (it runs off the event loop).
_SCRYPT_N: Final = 2**14
_SCRYPT_R: Final = 8
_SCRYPT_P: Final = 1
_SCRYPT_MAXMEM: Final = 64 * 1024 * 1024
_SALT_BYTES: Final = 16
_DIGEST_BYTES: Final = 32
#: The window of the password attempt limits.
ATTEMPT_WINDOW_S: Final = 60.0
#: Most sources / rooms an attempt limiter tracks at once; the stalest are dropped beyond.
MAX_TRACKED: Final = 10000


class PolicyError(ValueError):
    """A policy update that cannot be accepted; the message names the field."""


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A salted scrypt hash of a room password (the password itself is never kept)."""

    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)
    n: int = _SCRYPT_N
    r: int = _SCRYPT_R
    p: int = _SCRYPT_P


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=_SCRYPT_MAXMEM,
        dklen=_DIGEST_BYTES,
    )


def hash_password(password: str) -> PasswordHash:
    """Hash ``password`` with a fresh random salt (CPU-heavy: call it off the event loop)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return PasswordHash(salt, _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P))


def verify_password(stored: PasswordHash, candidate: str) -> bool:
    """Whether ``candidate`` is the password; constant-time comparison of the digests."""
    digest = _scrypt(candidate, stored.salt, stored.n, stored.r, stored.p)
    return hmac.compare_digest(digest, stored.digest)


@dataclass(frozen=True, slots=True)
class RoomPolicy:
    """What governs joining one room; see docs/security.md."""

    waiting_room: bool = True
    locked: bool = False
    max_participants: int = 100
    e2ee_required: bool = False
    password: PasswordHash | None = None

    def public(self) -> dict[str, Any]:
        """The policy as clients and admins see it (whether a password is set, never it)."""
        return {
            "waiting_room": self.waiting_room,
            "locked": self.locked,
            "max_participants": self.max_participants,
            "e2ee_required": self.e2ee_required,
            "password_set": self.password is not None,
        }


def policy_to_wire(policy: RoomPolicy) -> dict[str, Any]:
    """A room's policy as JSON values, for a state store or another shard (a password only
    as its scrypt salt and digest, hex; never the password)."""
    pw = policy.password
    return {
        "waiting_room": policy.waiting_room,
        "locked": policy.locked,
        "max_participants": policy.max_participants,
        "e2ee_required": policy.e2ee_required,
        "password": None
        if pw is None
        else {"salt": pw.salt.hex(), "digest": pw.digest.hex(), "n": pw.n, "r": pw.r, "p": pw.p},
    }


def _wire_int(value: Any, low: int, high: int, name: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}")
    return value


def _wire_bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise ValueError(f"{name} must be true or false")
    return value


def policy_from_wire(data: Any) -> RoomPolicy:
    """The policy of :func:`policy_to_wire`; ValueError when it is not one. The scrypt cost
    is bounded (a forged entry must not make every join's password check ruinous)."""
    if not isinstance(data, dict):
        raise ValueError("a policy is a JSON object")
    pw = data.get("password")
    password = None
    if pw is not None:
        if not isinstance(pw, dict):
            raise ValueError("password must be an object")
        salt, digest = pw.get("salt"), pw.get("digest")
        if not isinstance(salt, str) or not isinstance(digest, str):
            raise ValueError("password salt and digest must be hex strings")
        if len(salt) > 128 or len(digest) > 128:
            raise ValueError("password salt or digest too long")
        password = PasswordHash(
            bytes.fromhex(salt),
            bytes.fromhex(digest),
            _wire_int(pw.get("n"), 2, 4 * _SCRYPT_N, "password n"),
            _wire_int(pw.get("r"), 1, 4 * _SCRYPT_R, "password r"),
            _wire_int(pw.get("p"), 1, 4 * _SCRYPT_P, "password p"),
        )
    return RoomPolicy(
        waiting_room=_wire_bool(data.get("waiting_room"), "waiting_room"),
        locked=_wire_bool(data.get("locked"), "locked"),
        max_participants=_wire_int(
            data.get("max_participants"), 1, MAX_ROOM_PARTICIPANTS, "max_participants"
        ),
        e2ee_required=_wire_bool(data.get("e2ee_required"), "e2ee_required"),
        password=password,
    )


@dataclass(frozen=True, slots=True)
class RoomDefaults:
    """Server-wide defaults and bounds of room policies (from ``[rooms]``)."""

    policy: RoomPolicy = field(default_factory=RoomPolicy)
    waiting_timeout_s: float = 600.0
    max_policies: int = 10000

    @classmethod
    def from_config(cls, rooms: RoomsConfig) -> RoomDefaults:
        """The defaults a :class:`RoomsConfig` describes."""
        policy = RoomPolicy(
            waiting_room=rooms.waiting_room,
            max_participants=rooms.max_participants,
            e2ee_required=rooms.e2ee_required,
        )
        return cls(policy, rooms.waiting_timeout_s, rooms.max_policies)


#: The fields an update may set, and the type each takes.
_UPDATE_FIELDS: Final = {
    "waiting_room": bool,
    "locked": bool,
    "max_participants": int,
    "e2ee_required": bool,
    "password": str,
}


def parse_policy_update(body: object, max_participants: int) -> dict[str, Any]:
    """Validate a JSON policy update (absent fields stay as they are); raise PolicyError.

    ``password`` is a string of 1-128 characters, or ``null`` to remove the password; the
    returned mapping still holds it in clear text, for :func:`hash_password` to replace.
    """
    if not isinstance(body, dict):
        raise PolicyError("the body must be a JSON object")
    if not body:
        raise PolicyError(f"name at least one of: {', '.join(_UPDATE_FIELDS)}")
    out: dict[str, Any] = {}
    for key, value in body.items():
        kind = _UPDATE_FIELDS.get(key) if isinstance(key, str) else None
        if kind is None:
            clipped = repr(key[:32]) if isinstance(key, str) else "?"
            raise PolicyError(f"unknown field {clipped}; known: {', '.join(_UPDATE_FIELDS)}")
        if key == "password":
            if value is not None and (
                not isinstance(value, str)
                or not 1 <= len(value) <= MAX_PASSWORD_CHARS
                or "\x00" in value
            ):
                raise PolicyError(
                    f"'password' must be null or a string of 1-{MAX_PASSWORD_CHARS} characters"
                )
        elif kind is int:
            bound = min(max_participants, MAX_ROOM_PARTICIPANTS)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
                raise PolicyError(f"'{key}' must be an integer from 1 to {bound}")
        elif not isinstance(value, bool):
            raise PolicyError(f"'{key}' must be true or false")
        out[key] = value
    return out


class PolicyStore:
    """Every room's policy: the defaults, overlaid with a bounded table of per-room ones.

    A room's own policy exists before and after the room's meetings (an admin may prepare
    it), until reset; one equal to the defaults is not stored.
    """

    def __init__(self, defaults: RoomDefaults | None = None) -> None:
        self.defaults = defaults or RoomDefaults()
        self._rooms: dict[str, RoomPolicy] = {}
        #: Told of every change of a room's own policy (None: back to the defaults), after
        #: it is made: how a state file keeps up (:mod:`sfu.room.persistence`).
        self.on_change: Callable[[str, RoomPolicy | None], None] | None = None

    def __len__(self) -> int:
        return len(self._rooms)

    def get(self, room: str) -> RoomPolicy:
        """The policy in force for ``room``."""
        return self._rooms.get(room, self.defaults.policy)

    def has_own(self, room: str) -> bool:
        """Whether ``room`` has a policy of its own."""
        return room in self._rooms

    def update(self, room: str, changes: dict[str, Any]) -> tuple[RoomPolicy, RoomPolicy]:
        """Apply validated ``changes`` (``password`` already a :class:`PasswordHash` or None);
        returns (old, new). Raises PolicyError when the table is full."""
        old = self.get(room)
        new = dataclasses.replace(old, **changes)
        self._store(room, new)
        return old, new

    def reset(self, room: str) -> tuple[RoomPolicy, RoomPolicy]:
        """Back to the defaults; returns (old, new). Raises PolicyError (nothing changed)
        when the change cannot be saved."""
        if self.on_change is not None:
            self.on_change(room, None)
        old = self._rooms.pop(room, self.defaults.policy)
        return old, self.defaults.policy

    def restore(self, room: str, policy: RoomPolicy) -> None:
        """Put back a policy a state file kept (at start; the table's bound still holds)."""
        self._store(room, policy, notify=False)

    def apply_shared(self, room: str, policy: RoomPolicy | None) -> tuple[RoomPolicy, RoomPolicy]:
        """Take a change another shard made and saved (None: back to the defaults), without
        saving it again; returns (old, new)."""
        old = self.get(room)
        if policy is None:
            self._rooms.pop(room, None)
        else:
            self._store(room, policy, notify=False)
        return old, self.get(room)

    def _store(self, room: str, policy: RoomPolicy, *, notify: bool = True) -> None:
        # Saved first (on_change raises PolicyError when it cannot be): memory never holds
        # a policy that a restart would lose.
        if policy == self.defaults.policy:
            if notify and self.on_change is not None:
                self.on_change(room, None)
            self._rooms.pop(room, None)
            return
        if room not in self._rooms and len(self._rooms) >= self.defaults.max_policies:
            raise PolicyError("too many rooms have a policy of their own")
        if notify and self.on_change is not None:
            self.on_change(room, policy)
        self._rooms[room] = policy


class AttemptLimiter:
    """Counts events per key in a sliding window, in a bounded table.

    At most ``limit`` events per key within ``window`` seconds; keys whose events have all
    expired are dropped, and beyond ``max_keys`` the least recently used key is dropped.
    """

    def __init__(self, limit: int, window: float = ATTEMPT_WINDOW_S, max_keys: int = MAX_TRACKED):
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._events)

    def _current(self, key: str, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is None:
            return None
        while events and events[0] <= now - self.window:
            events.popleft()
        if not events:
            del self._events[key]
            return None
        return events

    def allowed(self, key: str, now: float) -> bool:
        """Whether one more event for ``key`` is within the limit."""
        events = self._current(key, now)
        return events is None or len(events) < self.limit

    def add(self, key: str, now: float) -> None:
        """Count one event for ``key``."""
        events = self._current(key, now)
        if events is None:
            events = self._events[key] = deque(maxlen=self.limit)
        self._events.move_to_end(key)
        events.append(now)
        self._expire(now)

    def forget(self, key: str, at: float) -> None:
        """Un-count the event recorded for ``key`` at ``at`` (it turned out acceptable)."""
        events = self._events.get(key)
        if events is not None and at in events:
            events.remove(at)
            if not events:
                del self._events[key]

    def _expire(self, now: float) -> None:
        while len(self._events) > self.max_keys:
            self._events.popitem(last=False)
        # The oldest entry is the least recently added: drop it while it has expired.
        while self._events:
            key = next(iter(self._events))
            if self._current(key, now) is not None:
                break


class PasswordAttempts:
    """Password attempt limits per source (over all rooms) and per room.

    An attempt is counted when it starts (so concurrent guesses count too) and forgotten when
    the password turns out right: only wrong attempts use up the allowance. Sources are kept
    as keyed hashes, never as addresses.
    """

    def __init__(self, per_source: int = 5, per_room: int = 20, max_keys: int = MAX_TRACKED):
        self.sources = AttemptLimiter(per_source, max_keys=max_keys)
        self.rooms = AttemptLimiter(per_room, max_keys=max_keys)
        self._key = secrets.token_bytes(16)

    def source_key(self, source: str) -> str:
        """An opaque per-process key for a source address."""
        digest = hashlib.blake2b(source.encode("utf-8", "surrogatepass"), key=self._key)
        return digest.hexdigest()[:32]

    def begin(self, source: str, room: str, now: float) -> bool:
        """Start an attempt; False (and nothing counted) when either limit is reached."""
        key = self.source_key(source)
        if not (self.sources.allowed(key, now) and self.rooms.allowed(room, now)):
            return False
        self.sources.add(key, now)
        self.rooms.add(room, now)
        return True

    def succeeded(self, source: str, room: str, started: float) -> None:
        """The attempt begun at ``started`` had the right password: it does not count."""
        self.sources.forget(self.source_key(source), started)
        self.rooms.forget(room, started)


class Bans:
    """Identities barred from one room until a time (bounded; expired bans vanish)."""

    def __init__(self, max_entries: int = 10000) -> None:
        self.max_entries = max_entries
        self._until: dict[tuple[str, str], float] = {}
        #: Told of every ban as (room, identity, until, now), after it is recorded.
        self.on_ban: Callable[[str, str, float, float], None] | None = None

    def __len__(self) -> int:
        return len(self._until)

    def ban(self, room: str, identity: str, until: float, now: float) -> None:
        """Bar ``identity`` from ``room`` until ``until`` (a later ban extends, never shortens)."""
        self.prune(now)
        key = (room, identity)
        self._until[key] = max(until, self._until.get(key, until))
        while len(self._until) > self.max_entries:
            soonest = min(self._until, key=self._until.__getitem__)
            del self._until[soonest]
        if self.on_ban is not None:
            self.on_ban(room, identity, until, now)

    def banned(self, room: str, identity: str, now: float) -> bool:
        """Whether ``identity`` is barred from ``room`` at ``now``."""
        until = self._until.get((room, identity))
        if until is None:
            return False
        if until <= now:
            del self._until[(room, identity)]
            return False
        return True

    def until(self, room: str, identity: str) -> float | None:
        """Until when ``identity`` is barred from ``room`` (None: no ban held)."""
        return self._until.get((room, identity))

    def of_room(self, room: str, now: float) -> list[tuple[str, float]]:
        """The identities barred from ``room`` at ``now``, with until when, latest first."""
        self.prune(now)
        held = [
            (until, identity) for (name, identity), until in self._until.items() if name == room
        ]
        return [(identity, until) for until, identity in sorted(held, reverse=True)]

    def prune(self, now: float) -> None:
        """Drop expired bans."""
        for key in [k for k, until in self._until.items() if until <= now]:
            del self._until[key]
