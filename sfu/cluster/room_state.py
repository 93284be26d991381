"""Room policies and bans in Redis, for a cluster: every node reads and writes the same ones.

The same contract as the single node's SQLite file (:class:`~sfu.room.persistence.StateStore`):
loaded at start, written through on every change, so a policy or ban survives a node's
restart (and Redis's, with its persistence on). Keys:

- ``sfu:policy:<room>``: the room's own policy as JSON (a password only as its scrypt salt
  and digest, hex; never the password);
- ``sfu:bans:<room>``: a hash of identity -> wall-clock expiry; a ban is only ever extended
  (a Lua script keeps the later expiry) and the hash expires with its last ban.

Writes happen at human speed (an admin's request), and the caller must know whether a policy
was stored before it answers, so this uses redis-py's blocking client with a short timeout
(:data:`COMMAND_TIMEOUT_S`, one attempt, no retries): at worst one admin request holds the
event loop that long while Redis is down, and is then refused.
"""

from __future__ import annotations

import json
import logging
from typing import Final

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from sfu.room.persistence import StateError
from sfu.room.policy import (
    Bans,
    PolicyError,
    PolicyStore,
    RoomPolicy,
    policy_from_wire,
    policy_to_wire,
)

__all__ = ["RedisRoomState"]

log = logging.getLogger(__name__)

_POLICY: Final = "sfu:policy:"
_BANS: Final = "sfu:bans:"
#: Seconds one Redis command may take here before the write counts as failed.
COMMAND_TIMEOUT_S: Final = 0.5

#: Keep the later of the stored and the new expiry; let the hash expire with its last ban.
#: KEYS[1]: the room's ban hash; ARGV[1]: identity; ARGV[2]: expiry (wall-clock seconds).
_BAN: Final = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local until_ms = math.ceil(tonumber(ARGV[2]) * 1000)
local expiry = redis.call('PEXPIRETIME', KEYS[1])
if expiry < until_ms then
  redis.call('PEXPIREAT', KEYS[1], until_ms)
end
return 1
"""


def _policy_json(policy: RoomPolicy) -> str:
    return json.dumps(policy_to_wire(policy), separators=(",", ":"))


def _policy_of(text: str) -> RoomPolicy:
    return policy_from_wire(json.loads(text))


class RedisRoomState:
    """Room policies and bans in the cluster's Redis."""

    def __init__(self, url: str) -> None:
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            # No retries: redis-py's default retries a failed connection with backoff, which
            # would hold the event loop (and every session's media) for seconds per write
            # while Redis is down; one attempt bounds the stall to COMMAND_TIMEOUT_S.
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._ban = self._client.register_script(_BAN)
        kwargs = self._client.get_connection_kwargs()
        where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port')}"
        self._location = f"redis {where}"

    @property
    def location(self) -> str:
        return self._location

    def load(
        self, policies: PolicyStore, bans: Bans, *, now: float, wall: float
    ) -> tuple[int, int]:
        try:
            policy_keys = list(self._client.scan_iter(match=_POLICY + "*", count=500))
            ban_keys = list(self._client.scan_iter(match=_BANS + "*", count=500))
            policy_values = self._client.mget(policy_keys) if policy_keys else []
            ban_tables = [(key, self._client.hgetall(key)) for key in ban_keys]
        except RedisError as exc:
            raise StateError(f"cannot read room state from {self._location}: {exc}") from None
        restored = 0
        for key, value in zip(policy_keys, policy_values, strict=True):
            if value is None:
                continue
            try:
                policy = _policy_of(str(value))
            except (TypeError, ValueError, KeyError) as exc:
                raise StateError(
                    f"{self._location} holds a bad policy under {key}: {exc}"
                ) from None
            policies.restore(str(key).removeprefix(_POLICY), policy)
            restored += 1
        banned = 0
        for key, table in ban_tables:
            room = str(key).removeprefix(_BANS)
            for identity, until_text in table.items():
                try:
                    until_wall = float(until_text)
                except ValueError:
                    continue
                if until_wall > wall:
                    bans.ban(room, str(identity), now + (until_wall - wall), now)
                    banned += 1
        return restored, banned

    def save_policy(self, room: str, policy: RoomPolicy | None) -> None:
        try:
            if policy is None:
                self._client.delete(_POLICY + room)
            else:
                self._client.set(_POLICY + room, _policy_json(policy))
        except RedisError as exc:
            log.error("cannot write a room policy to %s: %s", self._location, exc)
            # The host who changed the policy sees this: no server address in it.
            raise PolicyError("the policy could not be saved") from None

    def save_ban(self, room: str, identity: str, until_wall: float) -> None:
        try:
            self._ban(keys=[_BANS + room], args=[identity, repr(float(until_wall))])
        except RedisError as exc:
            log.error("cannot write a ban to %s: %s", self._location, exc)

    def close(self) -> None:
        self._client.close()
