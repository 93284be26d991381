"""Meeting security over a real WebSocket and HTTP on loopback (docs/security.md).

Room passwords (wrong ones refused, the sixth wrong attempt in a minute rate-limited, the right
one accepted), the admin API, the waiting room, removal with a ban, moderation scope and
force-mute; refusals change nothing and the audit log records what hosts and admins did.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from clients import LOOPBACK_CONFIG, TIMEOUT, room_state, running_server
from scratch import scratch_dir
from test_room_signaling import Client, aiortc_offer, connect, run, session, token, wait_until

from sfu.app import Server
from sfu.config import AuditConfig, Config, RoomsConfig
from sfu.room.identity import Grant
from sfu.signaling.auth import verify_token

pytestmark = pytest.mark.integration

ROOM = "security-room"
OTHER = "security-elsewhere"
BOTH = Grant.PUBLISH | Grant.SUBSCRIBE
HOST = BOTH | Grant.HOST


def config(*, waiting_room: bool = False) -> Config:
    """Loopback, with an audit directory of its own."""
    audit = AuditConfig(path=scratch_dir())
    return dataclasses.replace(
        LOOPBACK_CONFIG, rooms=RoomsConfig(waiting_room=waiting_room), audit=audit
    )


def audit_records(server: Server) -> list[dict[str, Any]]:
    directory = Path(server.config.audit.path)
    return [json.loads(line) for f in sorted(directory.glob("*.jsonl")) for line in f.open()]


def audit_text(server: Server) -> str:
    return "".join(f.read_text() for f in Path(server.config.audit.path).glob("*.jsonl"))


def bearer(server: Server, identity: str, grants: Grant, room: str = ROOM) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(server, identity, room=room, grants=grants)}"}


def join_message(
    server: Server, identity: str, *, grants: Grant = BOTH, room: str = ROOM, **extra: Any
) -> dict[str, Any]:
    bearer_token = token(server, identity, room=room, grants=grants)
    return {"type": "join", "protocol": 1, "room": room, "token": bearer_token, **extra}


async def enter(http: aiohttp.ClientSession, base: str, message: dict[str, Any]) -> Client:
    """Join; the client's first message (``joined`` or ``waiting``) is in ``client.joined``."""
    client = await connect(http, base)
    reply = await client.request(message)
    assert reply["type"] in ("joined", "waiting"), reply
    client.joined = reply
    return client


async def refused(
    http: aiohttp.ClientSession, base: str, message: dict[str, Any]
) -> tuple[str, int, str]:
    """A join that must be refused: returns (error code, close code, close reason)."""
    client = await connect(http, base)
    await client.send({**message, "id": "j"})
    reply = await client.recv()
    assert reply["type"] == "error" and reply["re"] == "j", reply
    code, reason = await client.closed()
    return reply["code"], code, reason


async def expect_error(client: Client, message: dict[str, Any], code: str) -> dict[str, Any]:
    reply = await client.request({**message, "id": "m"})
    assert reply["type"] == "error" and reply["code"] == code and reply["re"] == "m", reply
    return reply


# -- passwords and the admin API -------------------------------------------------------------


def test_wrong_password_refused_sixth_attempt_rate_limited_right_one_accepted() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (server, base), session() as http:
            assert server.rooms is not None
            admin = bearer(server, "room-admin", Grant.ADMIN)
            url = f"{base}/rooms/{ROOM}/policy"
            # The policy is set before the room's first meeting.
            async with http.put(url, json={"password": "opensesame"}, headers=admin) as resp:
                assert resp.status == 200, await resp.text()
                body = await resp.json()
            assert body == {
                "room": ROOM,
                "policy": {
                    "waiting_room": False,
                    "locked": False,
                    "max_participants": 100,
                    "e2ee_required": False,
                    "password_set": True,
                },
            }
            before = room_state(server)
            assert await refused(http, base, join_message(server, "alice")) == (
                "password_required",
                4003,
                "this room needs a password",
            )
            # The right password works, and does not use up the allowance.
            alice = await enter(http, base, join_message(server, "alice", password="opensesame"))
            assert alice.joined["type"] == "joined" and alice.joined["policy"]["password_set"]
            await alice.ws.close()
            await wait_until(lambda: not server.rooms.rooms)  # type: ignore[union-attr]
            for i in range(5):
                wrong = join_message(server, f"guesser-{i}", password=f"guess-{i}")
                assert (await refused(http, base, wrong))[:2] == ("wrong_password", 4003)
            assert room_state(server) == before
            # The sixth attempt from this source within a minute: rate-limited, even if right.
            right = join_message(server, "alice", password="opensesame")
            assert (await refused(http, base, right))[:2] == ("rate_limited", 4003)
            assert room_state(server) == before
            # Another source address is not affected: it gets in with the right password.
            other_source = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(
                connector=other_source, timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as http2:
                bob = await enter(http2, base, join_message(server, "bob", password="opensesame"))
                assert bob.joined["type"] == "joined"
                await bob.ping()
            # Hosts need no password.
            host = await enter(http, base, join_message(server, "host", grants=HOST))
            assert host.joined["type"] == "joined"
            records = audit_records(server)
            assert [(r["action"], r["actor"], r["changed"]) for r in records] == [
                ("policy_update", "room-admin", ["password"])
            ]
            assert "opensesame" not in audit_text(server) and "guess-" not in audit_text(server)

    run(scenario)


def test_admin_api_needs_an_admin_token_for_that_room_and_changes_nothing_when_refused() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (server, base), session() as http:
            assert server.rooms is not None
            url = f"{base}/rooms/{ROOM}/policy"
            admin = bearer(server, "room-admin", Grant.ADMIN)
            host = bearer(server, "host", HOST)
            elsewhere = bearer(server, "other-admin", Grant.ADMIN, room=OTHER)
            defaults = server.rooms.policies.get(ROOM)
            cases: list[tuple[str, dict[str, str], Any, int, str]] = [
                ("GET", {}, None, 401, "token missing"),
                ("PUT", {"Authorization": "Bearer nope"}, {"locked": True}, 401, "malformed"),
                ("PUT", elsewhere, {"locked": True}, 401, "wrong room"),
                ("PUT", host, {"locked": True}, 403, "admin grant"),
                ("DELETE", host, None, 403, "admin grant"),
                ("PUT", admin, {"lockd": True}, 400, "unknown field"),
                ("PUT", admin, {"max_participants": 101}, 400, "from 1 to 100"),
                ("PUT", admin, {"password": ""}, 400, "'password'"),
                ("PUT", admin, [], 400, "JSON object"),
                ("PUT", admin, "not json", 400, "JSON object"),
                ("POST", admin, {"locked": True}, 405, ""),
            ]
            for method, headers, body, status, text in cases:
                data = body if isinstance(body, str) else json.dumps(body)
                async with http.request(
                    method, url, data=data if body is not None else None, headers=headers
                ) as resp:
                    assert resp.status == status, (method, body, await resp.text())
                    assert text in await resp.text()
                    if status == 401:
                        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
                assert server.rooms.policies.get(ROOM) == defaults
                assert not server.rooms.policies.has_own(OTHER)

            # An admin changes only the fields it names; a meeting in the room hears of it.
            alice = await enter(http, base, join_message(server, "alice"))
            async with http.put(url, json={"e2ee_required": True}, headers=admin) as resp:
                assert resp.status == 200
            event = await alice.expect("policy")
            assert event["e2ee_required"] is True and event["policy"]["e2ee_required"] is True
            async with http.put(url, json={"locked": True}, headers=admin) as resp:
                policy = (await resp.json())["policy"]
            assert policy["locked"] and policy["e2ee_required"] and not policy["password_set"]
            async with http.get(url, headers=admin) as resp:
                assert (await resp.json())["policy"] == policy
            assert (await refused(http, base, join_message(server, "bob")))[:2] == (
                "room_locked",
                4003,
            )
            async with http.delete(url, headers=admin) as resp:
                assert resp.status == 200 and (await resp.json())["policy"]["locked"] is False
            assert not server.rooms.policies.has_own(ROOM)
            assert [(r["action"], r["outcome"], r.get("changed")) for r in audit_records(server)][
                -3:
            ] == [
                ("policy_update", "ok", ["e2ee_required"]),
                ("policy_update", "ok", ["locked"]),
                ("policy_reset", "ok", None),
            ]

    run(scenario)


# -- the waiting room ------------------------------------------------------------------------


def test_waiting_room_hold_admit_and_deny_over_the_websocket() -> None:
    async def scenario() -> None:
        async with running_server(config(waiting_room=True)) as (server, base), session() as http:
            assert server.rooms is not None
            host = await enter(http, base, join_message(server, "host", grants=HOST))
            assert host.joined["type"] == "joined"
            guest = await enter(http, base, join_message(server, "guest", id="g"))
            assert guest.joined == {
                "type": "waiting",
                "reason": "waiting for a host to admit you",
                "room": ROOM,
                "e2ee_required": False,
            }
            waiting = await host.expect("waiting_list")
            assert waiting == {
                "type": "waiting_list",
                "waiting": [{"id": waiting["waiting"][0]["id"], "name": "guest!"}],
            }
            guest_id = waiting["waiting"][0]["id"]
            # While waiting: no offers, nothing else arrives, the host sees no participant.
            offer = await aiortc_offer(recv=("video",))
            reply = await expect_error(guest, {"type": "offer", "sdp": offer}, "not_joined")
            assert "waiting room" in reply["message"]
            await expect_error(guest, {"type": "admit", "participant": guest_id}, "not_joined")
            await guest.ping()
            await guest.quiet()
            await host.send({"type": "admit", "participant": guest_id, "id": 1})
            got = [await host.recv() for _ in range(3)]
            assert sorted(m["type"] for m in got) == ["ok", "participant_joined", "waiting_list"]
            assert {"type": "ok", "re": 1} in got and {"type": "waiting_list", "waiting": []} in got
            joined = await guest.expect("joined")
            assert [p["identity"] for p in joined["participants"]] == ["host"]
            assert joined["e2ee_required"] is False and joined["policy"]["waiting_room"] is True

            mallory = await enter(http, base, join_message(server, "mallory"))
            mallory_id = (await host.expect("waiting_list"))["waiting"][0]["id"]
            await expect_error(guest, {"type": "deny", "participant": mallory_id}, "forbidden")
            await host.send({"type": "deny", "participant": mallory_id})
            code, reason = await mallory.closed()
            assert (code, reason) == (4003, "a host denied you entry")
            assert await host.recv() == {"type": "waiting_list", "waiting": []}
            assert await host.recv() == {"type": "ok"}
            await guest.quiet()  # nobody else heard of mallory
            room = server.rooms.rooms[ROOM]
            assert room.waiting == {} and len(room.participants) == 2
            records = audit_records(server)
            assert [(r["action"], r["actor"], r["target"], r["outcome"]) for r in records] == [
                ("admit", "guest", None, "not_joined"),
                ("admit", "host", "guest", "ok"),
                ("deny", "guest", None, "forbidden"),
                ("deny", "host", "mallory", "ok"),
            ]

    run(scenario)


# -- moderation ------------------------------------------------------------------------------


def test_remove_with_ban_bars_rejoining_and_leaves_others_alone() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (server, base), session() as http:
            assert server.rooms is not None
            host = await enter(http, base, join_message(server, "host", grants=HOST))
            alice = await enter(http, base, join_message(server, "alice"))
            bob = await enter(http, base, join_message(server, "bob"))
            await host.expect("participant_joined")
            await host.expect("participant_joined")
            await alice.expect("participant_joined")
            bob_id = bob.joined["participant"]["id"]
            await host.send({"type": "remove", "participant": bob_id, "ban_s": 600, "id": "rm"})
            assert await bob.closed() == (4004, "a host removed you from the meeting")
            assert await alice.recv() == {"type": "participant_left", "participant": bob_id}
            assert await host.recv() == {"type": "participant_left", "participant": bob_id}
            assert await host.recv() == {"type": "ok", "re": "rm"}
            # Bob cannot come back while barred; others are unaffected.
            assert (await refused(http, base, join_message(server, "bob")))[:2] == (
                "banned",
                4003,
            )
            await alice.ping()
            await alice.quiet()
            # The ban is for this room only.
            elsewhere = await enter(http, base, join_message(server, "bob", room=OTHER))
            assert elsewhere.joined["type"] == "joined"
            assert set(server.rooms.rooms[ROOM].participants) == {
                host.joined["participant"]["id"],
                alice.joined["participant"]["id"],
            }
            records = audit_records(server)
            assert records[-1] | {"time": ""} == {
                "time": "",
                "room": ROOM,
                "actor": "host",
                "action": "remove",
                "target": "bob",
                "outcome": "ok",
                "ban_s": 600,
            }
            assert "127.0.0.1" not in audit_text(server)

    run(scenario)


def test_moderation_of_another_room_or_without_the_grant_is_refused_and_changes_nothing() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (server, base), session() as http:
            host = await enter(http, base, join_message(server, "host", grants=HOST))
            alice = await enter(http, base, join_message(server, "alice"))
            await host.expect("participant_joined")
            outsider = await enter(http, base, join_message(server, "outsider", room=OTHER))
            outsider_id = outsider.joined["participant"]["id"]
            # The outsider publishes, so there is a track in the other room to name.
            offer = await aiortc_offer(send_video=True)
            await outsider.send({"type": "offer", "sdp": offer, "id": "p"})
            got = [await outsider.recv(), await outsider.recv()]  # answer and track_published
            answer = next(m for m in got if m["type"] == "answer")
            other_track = answer["tracks"]["0"]
            before = room_state(server)
            cases = [
                (host, {"type": "remove", "participant": outsider_id}, "unknown_participant"),
                (host, {"type": "admit", "participant": outsider_id}, "unknown_participant"),
                (host, {"type": "force_mute", "track": other_track}, "unknown_track"),
                (host, {"type": "request_mute", "track": other_track}, "unknown_track"),
                (alice, {"type": "remove", "participant": host.id}, "forbidden"),
                (alice, {"type": "lock", "locked": True}, "forbidden"),
                (alice, {"type": "end_meeting"}, "forbidden"),
                (host, {"type": "remove", "participant": host.id}, "bad_message"),
                (host, {"type": "remove", "participant": alice.id, "ban_s": -5}, "bad_message"),
                (host, {"type": "remove"}, "bad_message"),
            ]
            for client, message, code in cases:
                reply = await expect_error(client, message, code)
                assert len(reply["message"]) < 200
                assert room_state(server) == before
            for client in (host, alice, outsider):
                await client.ping()
            await alice.quiet()
            await outsider.quiet()

    run(scenario)


def test_force_mute_and_request_mute_over_the_websocket() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (server, base), session() as http:
            assert server.rooms is not None
            host = await enter(http, base, join_message(server, "host", grants=HOST))
            alice = await enter(http, base, join_message(server, "alice"))
            await host.expect("participant_joined")
            await alice.send({"type": "offer", "sdp": await aiortc_offer(send_video=True)})
            got = [await alice.recv(), await alice.recv()]
            track = next(m for m in got if m["type"] == "answer")["tracks"]["0"]
            assert (await host.expect("track_published"))["track"]["force_muted"] is False

            await host.send({"type": "request_mute", "track": track, "id": 1})
            assert await host.recv() == {"type": "ok", "re": 1}
            assert await alice.recv() == {"type": "mute_requested", "track": track, "by": host.id}

            await host.send({"type": "force_mute", "track": track, "muted": True})
            forced = {"type": "track_muted", "track": track, "muted": True, "force_muted": True}
            assert await alice.recv() == forced  # the publisher is told
            assert await host.recv() == forced
            assert await host.recv() == {"type": "ok"}
            reply = await expect_error(
                alice, {"type": "mute", "track": track, "muted": False}, "force_muted"
            )
            assert reply["track"] == track
            publication = server.rooms.rooms[ROOM].publications[track]
            assert publication.force_muted and publication.muted

            await host.send({"type": "force_mute", "track": track, "muted": False})
            lifted = {"type": "track_muted", "track": track, "muted": True, "force_muted": False}
            assert await alice.recv() == lifted
            assert await alice.request({"type": "mute", "track": track, "muted": False}) in (
                {"type": "ok"},
                {"type": "track_muted", "track": track, "muted": False},
            )
            assert [r["action"] for r in audit_records(server)] == [
                "request_mute",
                "force_mute",
                "force_mute",
            ]

    run(scenario)


def test_development_tokens_carry_the_host_grant_only_where_they_exist() -> None:
    async def scenario() -> None:
        async with running_server(config(waiting_room=True)) as (server, base), session() as http:
            async with http.post(f"{base}/dev-token", json={"room": ROOM, "name": "Ada"}) as resp:
                assert resp.status == 200
                dev = (await resp.json())["token"]
            claims = verify_token(
                server.token_secret, dev, now=time.time(), room=ROOM, leeway=5, max_ttl=86400
            )
            assert claims.grants == Grant.PUBLISH | Grant.SUBSCRIBE | Grant.HOST
            # So the demo page goes straight in despite the waiting room.
            first = await enter(
                http, base, {"type": "join", "protocol": 1, "room": ROOM, "token": dev}
            )
            assert first.joined["type"] == "joined" and first.joined["grants"][-1] == "host"
        no_dev = dataclasses.replace(
            config(), auth=dataclasses.replace(LOOPBACK_CONFIG.auth, dev_tokens=False)
        )
        async with (
            running_server(no_dev) as (_server, base),
            session() as http,
            http.post(f"{base}/dev-token", json={"room": ROOM}) as resp,
        ):
            assert resp.status in (404, 405)

    run(scenario)


def test_whip_skips_the_waiting_room_but_not_e2ee_bans_or_the_lock() -> None:
    async def scenario() -> None:
        async with running_server(config(waiting_room=True)) as (server, base), session() as http:
            assert server.rooms is not None
            offer = await aiortc_offer(send_video=True)
            url = f"{base}/whip/{ROOM}"

            async def whip(identity: str) -> tuple[int, str]:
                headers = {
                    **bearer(server, identity, Grant.PUBLISH),
                    "Content-Type": "application/sdp",
                }
                async with http.post(url, data=offer, headers=headers) as resp:
                    return resp.status, await resp.text()

            status, _answer = await whip("caster")  # no host, no password: admitted at once
            assert status == 201
            room = server.rooms.rooms[ROOM]
            assert [p.identity for p in room.participants.values()] == ["caster"]
            admin = bearer(server, "room-admin", Grant.ADMIN)
            policy_url = f"{base}/rooms/{ROOM}/policy"
            async with http.put(policy_url, json={"e2ee_required": True}, headers=admin) as resp:
                assert resp.status == 200
            before = room_state(server)
            status, text = await whip("caster-2")
            assert status == 403 and "end-to-end" in text
            async with http.put(
                policy_url, json={"e2ee_required": False, "locked": True}, headers=admin
            ) as resp:
                assert resp.status == 200
            status, text = await whip("caster-3")
            assert status == 403 and "locked" in text
            assert room_state(server) == before

    run(scenario)
