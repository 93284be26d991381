"""The meeting-security state of one server, built from its configuration in one place.

Room policies (defaults plus what admins set), bans, the audit log and the password attempt
limits are all bounded in-memory tables except the audit log's files; the composition root
builds them here and hands them to the room service and the signaling adapters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sfu.config import Config
from sfu.room.audit import AuditLog
from sfu.room.persistence import RoomStateStore, StateStore
from sfu.room.policy import Bans, PasswordAttempts, PolicyStore, RoomDefaults
from sfu.room.service import RoomLimits

__all__ = ["RoomSecurity"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RoomSecurity:
    """Policies, bans, audit log and password attempt limits of one server."""

    limits: RoomLimits
    policies: PolicyStore
    bans: Bans
    audit: AuditLog
    attempts: PasswordAttempts
    #: Where policies and bans persist (``rooms.state_dir``, or Redis in a cluster); None
    #: keeps them in memory.
    state: StateStore | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        now: float = 0.0,
        wall: float = 0.0,
        store: StateStore | None = None,
    ) -> RoomSecurity:
        """Everything ``[rooms]`` and ``[audit]`` describe, with the policies and bans the
        state file kept (``now``: the service's clock, ``wall``: the wall clock, at start).
        Raises :class:`~sfu.room.persistence.StateError`, naming the file, when it cannot be
        used: never a silent start with every room open. ``store`` (the cluster's Redis)
        takes the place of ``rooms.state_dir``'s file."""
        rooms = config.rooms
        audit = AuditLog(config.audit.path or None, retention_days=config.audit.retention_days)
        if audit.enabled:
            log.info("audit log: daily files in %s", config.audit.path)
        else:
            log.warning("audit log disabled (audit.path is empty): moderation leaves no record")
        policies = PolicyStore(RoomDefaults.from_config(rooms))
        bans = Bans(rooms.max_bans)
        state: StateStore | None = store
        if state is None and rooms.state_dir:
            state = RoomStateStore(rooms.state_dir)
        if state is not None:
            restored, banned = state.load(policies, bans, now=now, wall=wall)
            log.info(
                "room state: restored %d room policies and %d bans from %s",
                restored,
                banned,
                state.location,
            )
            store = state
            policies.on_change = store.save_policy

            def save_ban(room: str, identity: str, until: float, _at: float) -> None:
                # The two clocks advance together: a monotonic expiry is this far past start.
                store.save_ban(room, identity, wall + (until - now))

            bans.on_ban = save_ban
        else:
            log.warning(
                "room policies and bans are kept in memory only (rooms.state_dir is empty): "
                "they vanish on restart"
            )
        return cls(
            limits=RoomLimits(max_participants=rooms.max_participants),
            policies=policies,
            bans=bans,
            audit=audit,
            attempts=PasswordAttempts(
                rooms.password_attempts_per_source, rooms.password_attempts_per_room
            ),
            state=state,
        )
