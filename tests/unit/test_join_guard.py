"""The room protocol's join guard, socket-free: source addresses behind proxies, and the
password check with its attempt limits (scrypt on a worker thread)."""

from __future__ import annotations

import asyncio
import time
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request
from kernel_selection import selected_kernels
from multidict import CIMultiDict
from room_fixtures import OPEN_ROOMS, certificate

from sfu.room.identity import Grant, JoinClaims
from sfu.room.policy import PasswordAttempts, PolicyStore, hash_password
from sfu.room.service import RoomError, RoomService
from sfu.signaling.protocol import Join
from sfu.signaling.room_ws import JoinGuard, source_address
from sfu.transport.port import MediaPort

PROXY = "10.0.0.2"


def request(peer: str, forwarded: list[str] | None = None) -> object:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 50000) if name == "peername" else default
    )
    headers = CIMultiDict([("X-Forwarded-For", value) for value in forwarded or []])
    return make_mocked_request("GET", "/ws", headers=headers, transport=transport)


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("198.51.100.7", [], "198.51.100.7"),
        ("198.51.100.7", ["203.0.113.1"], "198.51.100.7"),  # untrusted peer: header ignored
        (PROXY, [], PROXY),
        (PROXY, ["203.0.113.1"], "203.0.113.1"),
        (PROXY, ["6.6.6.6, 203.0.113.1"], "203.0.113.1"),  # the client may forge the left part
        (PROXY, ["6.6.6.6", f"203.0.113.1, {PROXY}"], "203.0.113.1"),
        (PROXY, [f"{PROXY}, {PROXY}"], PROXY),
    ],
)
def test_source_address_trusts_forwarded_for_only_from_proxies(
    peer: str, forwarded: list[str], expected: str
) -> None:
    assert source_address(request(peer, forwarded), frozenset({PROXY})) == expected  # type: ignore[arg-type]


def _claims(grants: Grant = Grant.PUBLISH) -> JoinClaims:
    now = int(time.time())
    return JoinClaims(room="r", identity="guest", grants=grants, iat=now, exp=now + 60)


def test_password_guard_limits_wrong_attempts_and_lets_the_right_one_in() -> None:
    service = RoomService(
        MediaPort(certificate(), lambda data, addr: None),
        [],
        policies=PolicyStore(OPEN_ROOMS),
        kernels=selected_kernels(),
    )
    stored = hash_password("opensesame")
    service.policies.update("r", {"password": stored})
    guard = JoinGuard(PasswordAttempts(per_source=5, per_room=20))

    async def attempt(password: str | None, source: str = "198.51.100.7", now: float = 0.0) -> str:
        join = Join(1, "r", "token", 1, password)
        try:
            proof = await guard.password(service, join, _claims(), source, now)
        except RoomError as exc:
            return exc.code
        assert proof is stored
        return "ok"

    async def scenario() -> None:
        assert await attempt(None) == "password_required"  # does not count
        assert await attempt("opensesame") == "ok"  # does not count either
        assert [await attempt(f"guess-{i}") for i in range(5)] == ["wrong_password"] * 5
        assert await attempt("opensesame") == "rate_limited"  # the sixth within a minute
        assert await attempt("opensesame", source="203.0.113.9") == "ok"
        assert await attempt("opensesame", now=61.0) == "ok"  # the window has passed
        # Hosts and admins need no password at all.
        host = _claims(Grant.HOST)
        assert await guard.password(service, Join(1, "r", "t"), host, "x", 0.0) is None

    asyncio.run(scenario())
