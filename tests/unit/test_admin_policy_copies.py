"""The room policy admin API under a supervisor: the worker that takes a change audits it;
the supervisor's copies of it to the other workers apply it without a second record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import StreamReader, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict
from room_fixtures import claims, harness

from sfu.config import AuthConfig, Config
from sfu.room.audit import AuditLog
from sfu.room.identity import Grant
from sfu.signaling.admin_http import POLICY_COPY_HEADER, add_admin_routes
from sfu.signaling.auth import issue_token
from sfu.workers.bus import worker_key
from sfu.workers.supervisor import Supervisor

SECRET = "s" * 40
ROOM = "standup"


def _handler(app: web.Application, method: str) -> Any:
    return next(r.handler for r in app.router.routes() if r.method == method)


def _call(app: web.Application, method: str, body: bytes, headers: dict[str, str]) -> int:
    """``method`` on the room's policy through the app's own handler, socket-free."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        payload = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        payload.feed_data(body)
        payload.feed_eof()
        request = make_mocked_request(
            method,
            f"/rooms/{ROOM}/policy",
            headers=headers,
            match_info={"room": ROOM},
            app=app,
            payload=payload,
        )
        response = await _handler(app, method)(request)
        return int(response.status)

    return asyncio.run(run())


def _records(path: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for file in sorted(path.glob("audit-*.jsonl"))
        for line in file.read_text("utf-8").splitlines()
    ]


def test_a_policy_change_is_audited_once_not_once_per_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Three workers' room services, each with its own audit log.
    workers = []
    for index in range(3):
        audit = AuditLog(tmp_path / str(index))
        h = harness(monkeypatch, audit=audit)
        app = web.Application()
        add_admin_routes(
            app, h.service, token_secret=SECRET, auth=AuthConfig(), copy_key=worker_key(SECRET)
        )
        workers.append((app, h))
    token = issue_token(SECRET, claims(ROOM, "boss", Grant.ADMIN))
    bearer = {"Authorization": f"Bearer {token}"}
    copy = {**bearer, POLICY_COPY_HEADER: worker_key(SECRET)}
    body = json.dumps({"locked": True}).encode()
    # Worker 0 takes the request; the supervisor copies it to workers 1 and 2.
    assert _call(workers[0][0], "PUT", body, bearer) == 200
    for app, _ in workers[1:]:
        assert _call(app, "PUT", body, copy) == 200
    assert _call(workers[0][0], "DELETE", b"", bearer) == 200
    for app, _ in workers[1:]:
        assert _call(app, "DELETE", b"", copy) == 200
    # Every worker applied both; only worker 0 recorded them.
    for _, h in workers:
        assert not h.service.policies.get(ROOM).locked
        assert not h.service.policies.has_own(ROOM)
    assert [(r["action"], r["outcome"]) for r in _records(tmp_path / "0")] == [
        ("policy_update", "ok"),
        ("policy_reset", "ok"),
    ]
    assert _records(tmp_path / "1") == _records(tmp_path / "2") == []
    # A client's own request cannot pass for a copy: a wrong key is audited as usual.
    forged = {**bearer, POLICY_COPY_HEADER: "0" * 64}
    assert _call(workers[1][0], "PUT", body, forged) == 200
    assert [r["action"] for r in _records(tmp_path / "1")] == ["policy_update"]
    assert workers[1][1].service.policies.get(ROOM).locked


class _Upstream:
    status = 200
    headers: dict[str, str] = {}

    async def read(self) -> bytes:
        return b"{}"

    async def __aenter__(self) -> _Upstream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None


class _Session:
    """What the supervisor sends its workers (each request answered 200)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    def request(self, method: str, url: str, *, headers: Any, **_kwargs: Any) -> _Upstream:
        self.sent.append((url, dict(headers)))
        return _Upstream()


def test_the_supervisor_marks_its_copies_with_its_key() -> None:
    supervisor = Supervisor(Config(auth=AuthConfig(jwt_secret=SECRET)), 3)
    for worker in supervisor.workers:
        worker.ready = True
        worker.http_port = 9000 + worker.index
    session = _Session()
    supervisor._session = session  # type: ignore[assignment]
    request = make_mocked_request("PUT", f"/rooms/{ROOM}/policy")
    headers: CIMultiDict[str] = CIMultiDict({"Authorization": "Bearer t"})
    asyncio.run(supervisor._copy_policy(supervisor.workers[1], request, headers, b"{}"))
    assert sorted(url for url, _ in session.sent) == [
        f"http://127.0.0.1:9000/rooms/{ROOM}/policy",
        f"http://127.0.0.1:9002/rooms/{ROOM}/policy",
    ]
    for _, sent in session.sent:
        assert sent[POLICY_COPY_HEADER] == worker_key(SECRET)
        assert sent["Authorization"] == "Bearer t"
    assert POLICY_COPY_HEADER not in headers  # the home's own request went unmarked
