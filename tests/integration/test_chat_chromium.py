"""Chat between demo pages in headless Chromium, over data channels through the room relay.

Plain: two pages chat both ways on their ``chat`` data channels (Chromium's SCTP stack against
the server's). E2EE: three pages in a room, two with the meeting passphrase and one with a
wrong one; the relay's tap (its input, exactly what the server relays) holds only ciphertext in
the documented ``e2ee1:`` format, the pages with the passphrase read the text, the third cannot.
The pages are receive-only (camera denied): chat needs no media, and the CPU stays free.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from browser import chromium, run_async, wait_until
from meeting import MEETING_CONFIG, ServerThread, page_state, server_thread, wait_connected
from selenium import webdriver

from sfu.config import RoomsConfig

pytestmark = pytest.mark.integration

CONFIG = dataclasses.replace(MEETING_CONFIG, rooms=RoomsConfig(waiting_room=False))
RECEIVE_ONLY = ("--use-fake-ui-for-media-stream=deny",)
PASSPHRASE = "correct horse battery staple"
TIMEOUT = 30.0


class Tap:
    """What the relay accepted, as it received it (the hook runs on the server's thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str]] = []

    def __call__(self, sender: str, text: str) -> None:
        with self.lock:
            self.seen.append((sender, text))

    def texts(self) -> list[str]:
        with self.lock:
            return [text for _, text in self.seen]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Tap]]:
    tap = Tap()
    with server_thread(CONFIG) as thread:
        rooms = thread.server.rooms
        assert rooms is not None

        def install() -> None:
            rooms.chat.tap = tap

        thread.call(install)
        yield thread, tap


def _open(driver: webdriver.Chrome, base: str, room: str, name: str, passphrase: str = "") -> str:
    query = urllib.parse.urlencode({"room": room, "name": name})
    fragment = f"#{urllib.parse.urlencode({'e2ee': passphrase})}" if passphrase else ""
    driver.get(f"{base}/?{query}{fragment}")
    participant = wait_connected(driver, TIMEOUT)
    wait_until(
        lambda: driver.execute_script("return !!(window.sfuRoom && window.sfuRoom.chatOpen);"),
        bool,
        TIMEOUT,
    )
    return participant


def _send(driver: webdriver.Chrome, text: str) -> dict[str, Any]:
    sent = run_async(driver, f"window.sfuSendChat({json.dumps(text)})")
    assert isinstance(sent, dict) and "error" not in sent, sent
    return sent


def _chat(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    return [entry for entry in page_state(driver).get("chat", []) if not entry.get("mine")]


def _received(driver: webdriver.Chrome, count: int) -> list[dict[str, Any]]:
    return wait_until(lambda: _chat(driver), lambda chat: len(chat) >= count, TIMEOUT)


def test_two_pages_chat_over_data_channels(server: tuple[ServerThread, Tap]) -> None:
    thread, tap = server
    with chromium(RECEIVE_ONLY) as alice_page, chromium(RECEIVE_ONLY) as bob_page:
        alice = _open(alice_page, thread.base, "chat-plain", "Alice")
        bob = _open(bob_page, thread.base, "chat-plain", "Bob")
        assert _send(alice_page, "hello from alice <b>") == {
            "via": "channel",
            "wire": "hello from alice <b>",
        }
        (got,) = _received(bob_page, 1)
        assert (got["from"], got["name"], got["text"]) == (alice, "Alice", "hello from alice <b>")
        assert got["via"] == "channel" and got["encrypted"] is False
        # Shown as text, not markup.
        shown = bob_page.execute_script("return document.getElementById('chat-log').innerHTML;")
        assert "&lt;b&gt;" in shown
        _send(bob_page, "hi alice")
        (back,) = _received(alice_page, 1)
        assert (back["from"], back["text"]) == (bob, "hi alice")
        assert (alice, "hello from alice <b>") in tap.seen and (bob, "hi alice") in tap.seen


def test_e2ee_chat_is_ciphertext_to_the_server(server: tuple[ServerThread, Tap]) -> None:
    thread, tap = server
    secret = "the launch code is 0000"
    with (
        chromium(RECEIVE_ONLY) as alice_page,
        chromium(RECEIVE_ONLY) as bob_page,
        chromium(RECEIVE_ONLY) as eve_page,
    ):
        alice = _open(alice_page, thread.base, "chat-e2ee", "Alice", PASSPHRASE)
        _open(bob_page, thread.base, "chat-e2ee", "Bob", PASSPHRASE)
        _open(eve_page, thread.base, "chat-e2ee", "Eve", "a wrong passphrase")
        before = len(tap.texts())
        sent = _send(alice_page, secret)
        assert sent["via"] == "channel" and sent["wire"].startswith("e2ee1:0:")
        (got,) = _received(bob_page, 1)
        assert (got["from"], got["text"], got["encrypted"]) == (alice, secret, True)
        (eve_got,) = _received(eve_page, 1)
        assert eve_got["undecryptable"] is True and eve_got["text"] is None
        relayed = tap.texts()[before:]
        assert relayed == [sent["wire"]]
        assert secret not in relayed[0] and "launch" not in relayed[0]
