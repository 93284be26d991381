"""Meeting security through the demo page in headless Chromium: the waiting room and removal.

Two browsers, reused through the whole scenario (browsers are the expensive part on a small CI
machine). The host opens the demo page with a development token (which carries the ``host``
grant) and publishes. The guest opens it with a token without that grant and also publishes:

* while it waits it has no participant list, no subscriptions and no media session on the
  server, and the host's page lists it; once admitted it decodes the host's video in 15 s;
* removed by the host, it is disconnected with the reason shown, and its media stops for
  everyone: the host's page and the server hold nothing of it any more;
* a second guest, denied by the host, is disconnected with the denial shown.
"""

from __future__ import annotations

import time
import urllib.parse
from typing import Any

import pytest
from browser import chromium, run_async, wait_until
from meeting import (
    ServerThread,
    open_meeting,
    page_state,
    remote_by,
    server_thread,
    stats,
    wait_connected,
)
from selenium import webdriver

from sfu.room.identity import Grant, JoinClaims
from sfu.signaling.auth import issue_token

pytestmark = pytest.mark.integration

ROOM = "waiting-room"
JOIN_DEADLINE_S = 15.0
TIMEOUT = 15.0


def guest_url(server: ServerThread, identity: str, name: str) -> str:
    """The demo page with a join token that lacks the host grant (so it waits)."""
    now = int(time.time())
    claims = JoinClaims(
        room=ROOM,
        identity=identity,
        name=name,
        grants=Grant.PUBLISH | Grant.SUBSCRIBE,
        iat=now,
        exp=now + 600,
    )
    bearer = issue_token(server.server.token_secret, claims)
    query = urllib.parse.urlencode({"room": ROOM, "name": name, "token": bearer})
    return f"{server.base}/?{query}"


def status_text(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.getElementById('status').textContent;"))


def waiting_names(driver: webdriver.Chrome) -> list[str]:
    return [str(w["name"]) for w in page_state(driver).get("waiting") or []]


def waiting_id(driver: webdriver.Chrome, name: str) -> str:
    """The id the host's page lists for a waiting participant called ``name``."""
    state = wait_until(
        lambda: page_state(driver), lambda s: name in waiting_names(driver), timeout=TIMEOUT
    )
    return next(str(w["id"]) for w in state["waiting"] if w["name"] == name)


def decodes_video(driver: webdriver.Chrome, participant: str) -> bool:
    entry = remote_by(stats(driver), participant, "video")
    return entry is not None and entry["framesDecoded"] > 0 and entry["frameWidth"] > 0


def server_view(server: ServerThread) -> dict[str, Any]:
    """The room as the server holds it: who waits, who is in, whose tracks, transports."""

    def read() -> dict[str, Any]:
        assert server.server.rooms is not None
        room = server.server.rooms.rooms.get(ROOM)
        if room is None:
            return {"waiting": {}, "joined": {}, "tracks": {}, "transports": 0}
        return {
            "waiting": {p.identity: p.peer for p in room.waiting.values()},
            "joined": {p.identity: p.id for p in room.participants.values()},
            "tracks": {t: p.participant_id for t, p in room.publications.items()},
            "transports": server.server.port.transport_count,
        }

    return server.call(read)


def test_waiting_room_admit_remove_and_deny_in_the_browser() -> None:
    with server_thread() as server, chromium() as host, chromium() as guest:
        open_meeting(host, server.base, ROOM, "Host")
        host_id = wait_connected(host)
        assert "host" in page_state(host)["grants"]
        wait_until(lambda: server_view(server)["tracks"], lambda t: len(t) == 2, timeout=TIMEOUT)

        # -- waiting: nothing but the waiting notice ------------------------------------------
        guest.get(guest_url(server, "guest-1", "Guest"))
        wait_until(lambda: page_state(guest), lambda s: s.get("status") == "waiting", TIMEOUT)
        assert "waiting for a host to admit you" in status_text(guest)
        guest_id = waiting_id(host, "Guest")
        time.sleep(1.0)  # give anything that should not arrive a chance to
        assert guest.execute_script("return window.sfuRoom.participants.size;") == 0
        assert stats(guest)["remote"] == {}
        view = server_view(server)
        assert view["waiting"] == {"guest-1": None}  # no media session at all
        assert "guest-1" not in view["joined"] and view["transports"] == 1
        host_people = host.execute_script(
            "return [...document.querySelectorAll('#people-list li')].map((li) => li.textContent);"
        )
        assert not any("Guest" in text for text in host_people)

        # -- admitted: media within 15 s -------------------------------------------------------
        admitted_at = time.monotonic()
        assert run_async(host, f"window.sfuAdmit({guest_id!r})")["type"] == "ok"
        assert wait_connected(guest) == guest_id
        wait_until(lambda: decodes_video(guest, host_id), bool, timeout=JOIN_DEADLINE_S)
        assert time.monotonic() - admitted_at < JOIN_DEADLINE_S
        wait_until(lambda: decodes_video(host, guest_id), bool, timeout=JOIN_DEADLINE_S)
        assert page_state(host)["waiting"] == []

        # -- removed: disconnected with the reason, its media gone for everyone --------------
        guest_tracks = {t for t, p in server_view(server)["tracks"].items() if p == guest_id}
        assert len(guest_tracks) == 2
        assert run_async(host, f"window.sfuRemove({guest_id!r})")["type"] == "ok"
        state = wait_until(
            lambda: page_state(guest), lambda s: s.get("status") == "error", timeout=TIMEOUT
        )
        assert state["closeCode"] == 4004 and "removed" in state["error"], state
        wait_until(lambda: stats(host)["remote"], lambda r: r == {}, timeout=TIMEOUT)
        assert host.execute_script("return window.sfuRoom.participants.size;") == 0
        view = server_view(server)
        assert not guest_tracks & set(view["tracks"]) and "guest-1" not in view["joined"]
        wait_until(lambda: server_view(server)["transports"], lambda n: n == 1, timeout=TIMEOUT)
        assert page_state(host).get("status") == "connected"

        # -- denied: disconnected with the denial shown ---------------------------------------
        guest.get(guest_url(server, "guest-2", "Mallory"))
        wait_until(lambda: page_state(guest), lambda s: s.get("status") == "waiting", TIMEOUT)
        mallory = waiting_id(host, "Mallory")
        assert run_async(host, f"window.sfuDeny({mallory!r})")["type"] == "ok"
        state = wait_until(
            lambda: page_state(guest), lambda s: s.get("status") == "error", timeout=TIMEOUT
        )
        assert state["closeCode"] == 4003 and "denied" in state["error"], state
        assert "denied" in status_text(guest)
        wait_until(lambda: waiting_names(host), lambda names: names == [], timeout=TIMEOUT)
        assert server_view(server)["waiting"] == {}
        assert page_state(host).get("error") is None
