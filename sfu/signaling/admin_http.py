"""The room policy admin API: ``GET``/``PUT``/``DELETE /rooms/{room}/policy``.

Each request carries ``Authorization: Bearer <token>`` whose ``room`` claim is the room in the
path and whose grants include ``admin``: an admin token governs its own room and nothing else
(there is no server-wide admin). ``PUT`` changes the fields it names (``password``,
``waiting_room``, ``locked``, ``max_participants``, ``e2ee_required``) and leaves the others;
``DELETE`` returns the room to the configured defaults. A policy may be set before the room's
first meeting. Passwords are hashed (scrypt, on a worker thread) before they are stored and are
never returned: responses say only ``password_set``. Every change, and every refused attempt
by a token holder, goes to the audit log, once: with several workers the supervisor copies an
accepted change to every other worker (:data:`POLICY_COPY_HEADER`), and a copy is applied
but not audited again (it is no new action; the worker that took the request audited it).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from sfu.config import AuthConfig
from sfu.room.identity import Grant, JoinClaims
from sfu.room.policy import (
    AttemptLimiter,
    PolicyError,
    RoomPolicy,
    hash_password,
    parse_policy_update,
)
from sfu.room.service import RoomService
from sfu.signaling.auth import BEARER_CHALLENGE, TokenError, bearer_token, verify_with_config

__all__ = ["POLICY_COPY_HEADER", "add_admin_routes"]

#: Marks the supervisor's copy of a policy change another worker accepted; its value is the
#: supervisor's key (``copy_key``), so a client cannot pass its own request off as a copy.
POLICY_COPY_HEADER: Final = "X-Sfu-Policy-Copy"

_NO_STORE: Final = {"Cache-Control": "no-store"}
#: Refused attempts audited per (room, identity) per hour; more are refused unrecorded.
_AUDITED_REFUSALS_PER_HOUR: Final = 10


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={**_NO_STORE, **headers})


def _policy_response(room: str, policy: RoomPolicy) -> web.Response:
    return web.json_response({"room": room, "policy": policy.public()}, headers=_NO_STORE)


def add_admin_routes(
    app: web.Application,
    service: RoomService,
    *,
    token_secret: str,
    auth: AuthConfig,
    clock: Callable[[], float] = time.monotonic,
    wallclock: Callable[[], float] = time.time,
    copy_key: str | None = None,
) -> None:
    """Register the room policy endpoints on ``app``. ``copy_key``: the key a supervisor's
    copy of a change shows in :data:`POLICY_COPY_HEADER` (None: this process takes no copies)."""
    refusals = AttemptLimiter(_AUDITED_REFUSALS_PER_HOUR, window=3600.0)

    def is_copy(request: web.Request) -> bool:
        shown = request.headers.get(POLICY_COPY_HEADER)
        return (
            copy_key is not None
            and shown is not None
            and hmac.compare_digest(shown.encode(), copy_key.encode())
        )

    def audit(claims: JoinClaims, action: str, outcome: str, *, copy: bool, **details: Any) -> None:
        if copy:
            return  # audited by the worker that took the request
        if outcome != "ok":
            key = f"{claims.room}\x00{claims.identity}"
            if not refusals.allowed(key, clock()):
                return
            refusals.add(key, clock())
        service.audit.record(
            room=claims.room,
            actor=claims.identity,
            action=action,
            outcome=outcome,
            via="admin_api",
            **details,
        )

    def authorize(request: web.Request, action: str) -> JoinClaims | web.Response:
        room = request.match_info["room"]
        copy = is_copy(request)
        try:
            token = bearer_token(request.headers.get("Authorization"))
            claims = verify_with_config(token_secret, token, auth, room=room, now=wallclock())
        except TokenError as exc:
            return _error(401, f"token {exc.reason}", **BEARER_CHALLENGE)
        if not claims.grants & Grant.ADMIN:
            if action != "policy_read":
                audit(claims, action, "forbidden", copy=copy)
            return _error(403, "the token lacks the admin grant")
        return claims

    async def get_policy(request: web.Request) -> web.Response:
        claims = authorize(request, "policy_read")
        if isinstance(claims, web.Response):
            return claims
        return _policy_response(claims.room, service.policies.get(claims.room))

    async def put_policy(request: web.Request) -> web.Response:
        claims = authorize(request, "policy_update")
        if isinstance(claims, web.Response):
            return claims
        copy = is_copy(request)
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError, RecursionError):
            audit(claims, "policy_update", "bad_request", copy=copy)
            return _error(400, "the body must be a JSON object")
        try:
            changes = parse_policy_update(body, service.limits.max_participants)
        except PolicyError as exc:
            audit(claims, "policy_update", "bad_request", copy=copy)
            return _error(400, str(exc))
        changed = sorted(changes)
        password = changes.get("password")
        if password is not None:
            loop = asyncio.get_running_loop()
            changes["password"] = await loop.run_in_executor(None, hash_password, password)
        try:
            old, new = service.policies.update(claims.room, changes)
        except PolicyError as exc:
            audit(claims, "policy_update", "server_busy", copy=copy, changed=changed)
            return _error(503, str(exc), **{"Retry-After": "60"})
        service.policy_changed(claims.room, old, new)
        audit(claims, "policy_update", "ok", copy=copy, changed=changed)
        return _policy_response(claims.room, new)

    async def delete_policy(request: web.Request) -> web.Response:
        claims = authorize(request, "policy_reset")
        if isinstance(claims, web.Response):
            return claims
        copy = is_copy(request)
        try:
            old, new = service.policies.reset(claims.room)
        except PolicyError as exc:  # the state file could not be written
            audit(claims, "policy_reset", "server_busy", copy=copy)
            return _error(503, str(exc), **{"Retry-After": "60"})
        service.policy_changed(claims.room, old, new)
        audit(claims, "policy_reset", "ok", copy=copy)
        return _policy_response(claims.room, new)

    app.router.add_get("/rooms/{room}/policy", get_policy, allow_head=False)
    app.router.add_put("/rooms/{room}/policy", put_policy)
    app.router.add_delete("/rooms/{room}/policy", delete_policy)
