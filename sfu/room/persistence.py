"""Room policies (with password hashes and locks) and bans that survive a restart (SQLite).

One node keeps them in ``<rooms.state_dir>/rooms.sqlite3`` (stdlib :mod:`sqlite3`, WAL
journal, written through on every change: they change at human speed). At start the file is
opened, checked (``PRAGMA quick_check``) and loaded into the in-memory
:class:`~sfu.room.policy.PolicyStore` and :class:`~sfu.room.policy.Bans`; a file that cannot be
opened, read or understood is a :class:`StateError` naming it, so the server refuses to start
rather than come back with every room open. Bans are stored with their wall-clock expiry
(the service's clock is monotonic), so a ban runs out at the same moment after a restart.
Only scrypt hashes of passwords are stored, never a password; the file is created mode 0600
in a directory created mode 0700.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path
from typing import Final, Protocol

from sfu.room.policy import Bans, PasswordHash, PolicyError, PolicyStore, RoomPolicy

log = logging.getLogger(__name__)

__all__ = ["STATE_FILE", "RoomStateStore", "StateError", "StateStore"]

#: The file's name inside the state directory.
STATE_FILE: Final = "rooms.sqlite3"
#: Bumped when the schema changes; a file of another version is refused, not guessed at.
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS policies (
    room TEXT PRIMARY KEY,
    waiting_room INTEGER NOT NULL,
    locked INTEGER NOT NULL,
    max_participants INTEGER NOT NULL,
    e2ee_required INTEGER NOT NULL,
    password_salt BLOB,
    password_digest BLOB,
    scrypt_n INTEGER,
    scrypt_r INTEGER,
    scrypt_p INTEGER
);
CREATE TABLE IF NOT EXISTS bans (
    room TEXT NOT NULL,
    identity TEXT NOT NULL,
    until_wall REAL NOT NULL,
    PRIMARY KEY (room, identity)
);
"""


class StateError(RuntimeError):
    """The state file cannot be used; the message names it (and the server does not start)."""


class StateStore(Protocol):
    """Where room policies and bans persist: this SQLite file on one node, Redis in a
    cluster (:mod:`sfu.cluster.room_state`). Writes go through on every change."""

    @property
    def location(self) -> str:
        """Where the state is, for logs (a path, or the Redis host: never a password)."""
        ...

    def load(
        self, policies: PolicyStore, bans: Bans, *, now: float, wall: float
    ) -> tuple[int, int]:
        """Restore every policy and unexpired ban; (policies, bans) restored. StateError
        when the store cannot be read."""
        ...

    def save_policy(self, room: str, policy: RoomPolicy | None) -> None:
        """Store (None: forget) a room's policy; PolicyError when it could not be written."""
        ...

    def save_ban(self, room: str, identity: str, until_wall: float) -> None:
        """Store a ban (or its extension); a failed write is logged, the ban holds in memory."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


class RoomStateStore:
    """The SQLite file of one node's room policies and bans."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        folder = Path(directory)
        self.path = folder / STATE_FILE
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            fresh = not self.path.exists()
            if fresh:
                self.path.touch(mode=0o600)
            self._db = sqlite3.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the room state file {self.path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            check = self._db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise StateError(f"the room state file {self.path} is corrupt: {check}")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if fresh or version == 0:
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise StateError(
                    f"the room state file {self.path} has schema version {version}, this "
                    f"server reads {SCHEMA_VERSION}"
                )
        except sqlite3.Error as exc:
            self._db.close()
            raise StateError(f"the room state file {self.path} is unreadable: {exc}") from None
        except StateError:
            self._db.close()
            raise

    @property
    def location(self) -> str:
        """The file's path."""
        return str(self.path)

    def close(self) -> None:
        """Close the file (every change is already written)."""
        self._db.close()

    # -- loading ----------------------------------------------------------------------------

    def load(
        self, policies: PolicyStore, bans: Bans, *, now: float, wall: float
    ) -> tuple[int, int]:
        """Load every stored policy and unexpired ban; returns (policies, bans) restored.

        ``now`` is the service's (monotonic) clock and ``wall`` the wall clock at the same
        moment: a ban's wall-clock expiry becomes ``now + (until_wall - wall)``.
        """
        try:
            rows = self._db.execute(
                "SELECT room, waiting_room, locked, max_participants, e2ee_required, "
                "password_salt, password_digest, scrypt_n, scrypt_r, scrypt_p FROM policies"
            ).fetchall()
            ban_rows = self._db.execute(
                "SELECT room, identity, until_wall FROM bans WHERE until_wall > ?", (wall,)
            ).fetchall()
            self._db.execute("DELETE FROM bans WHERE until_wall <= ?", (wall,))
        except sqlite3.Error as exc:
            raise StateError(f"the room state file {self.path} is unreadable: {exc}") from None
        restored = 0
        for row in rows:
            room, waiting, locked, most, e2ee, salt, digest, n, r, p = row
            try:
                password = None
                if salt is not None:
                    if not (isinstance(salt, bytes) and isinstance(digest, bytes)):
                        raise TypeError("password hash is not binary")
                    password = PasswordHash(salt, digest, int(n), int(r), int(p))
                policy = RoomPolicy(
                    waiting_room=bool(waiting),
                    locked=bool(locked),
                    max_participants=int(most),
                    e2ee_required=bool(e2ee),
                    password=password,
                )
            except (TypeError, ValueError) as exc:
                raise StateError(
                    f"the room state file {self.path} holds a bad policy row: {exc}"
                ) from None
            policies.restore(str(room), policy)
            restored += 1
        for room, identity, until_wall in ban_rows:
            bans.ban(str(room), str(identity), now + (float(until_wall) - wall), now)
        return restored, len(ban_rows)

    # -- writing through ----------------------------------------------------------------------

    def save_policy(self, room: str, policy: RoomPolicy | None) -> None:
        """Store ``room``'s own policy, or forget it (None: back to the defaults). Raises
        PolicyError when the file cannot be written (the caller then changes nothing)."""
        try:
            self._save_policy(room, policy)
        except sqlite3.Error as exc:
            log.error("cannot write the room state file %s: %s", self.path, exc)
            raise PolicyError(f"the policy could not be saved: {exc}") from None

    def _save_policy(self, room: str, policy: RoomPolicy | None) -> None:
        if policy is None:
            self._db.execute("DELETE FROM policies WHERE room = ?", (room,))
            return
        pw = policy.password
        self._db.execute(
            "INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                room,
                int(policy.waiting_room),
                int(policy.locked),
                policy.max_participants,
                int(policy.e2ee_required),
                None if pw is None else pw.salt,
                None if pw is None else pw.digest,
                None if pw is None else pw.n,
                None if pw is None else pw.r,
                None if pw is None else pw.p,
            ),
        )

    def save_ban(self, room: str, identity: str, until_wall: float) -> None:
        """Store a ban (or its extension) with its wall-clock expiry. A write that fails is
        logged as an error: the ban holds in memory (the removal it came with goes on), it
        would not survive a restart."""
        try:
            self._db.execute(
                "INSERT INTO bans VALUES (?, ?, ?) ON CONFLICT (room, identity) "
                "DO UPDATE SET until_wall = max(until_wall, excluded.until_wall)",
                (room, identity, until_wall),
            )
        except sqlite3.Error as exc:
            log.error("cannot write a ban to the room state file %s: %s", self.path, exc)
