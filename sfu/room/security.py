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

    @classmethod
    def from_config(cls, config: Config) -> RoomSecurity:
        """Everything ``[rooms]`` and ``[audit]`` describe."""
        rooms = config.rooms
        audit = AuditLog(config.audit.path or None, retention_days=config.audit.retention_days)
        if audit.enabled:
            log.info("audit log: daily files in %s", config.audit.path)
        else:
            log.warning("audit log disabled (audit.path is empty): moderation leaves no record")
        return cls(
            limits=RoomLimits(max_participants=rooms.max_participants),
            policies=PolicyStore(RoomDefaults.from_config(rooms)),
            bans=Bans(rooms.max_bans),
            audit=audit,
            attempts=PasswordAttempts(
                rooms.password_attempts_per_source, rooms.password_attempts_per_room
            ),
        )
