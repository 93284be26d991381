"""The sans-I/O mapping of a WHIP/WHEP POST forwarded to the node it was placed on:
the URL and headers sent there, and what of the target's answer reaches the client."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu.signaling.whip_forward import (
    MAX_ANSWER_BYTES,
    RELAYED_HEADERS,
    Relayed,
    forward_headers,
    forward_url,
    relay_answer,
)

TARGET = "https://sfu-2.example.com:8443"
SENT_TO = f"{TARGET}/whip/room?placed=1"
ANSWER = b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"


def test_the_url_keeps_path_and_query_and_is_marked_placed() -> None:
    assert forward_url(TARGET + "/", "/whip/r%20x", []) == f"{TARGET}/whip/r%20x?placed=1"
    url = forward_url(TARGET, "/whep/r/cam", [("region", "eu"), ("placed", "0")])
    assert url == f"{TARGET}/whep/r/cam?region=eu&placed=1"


def test_only_credentials_and_content_type_are_sent_on() -> None:
    headers = {
        "Authorization": "Bearer t0k3n",
        "Content-Type": "application/sdp",
        "Cookie": "session=1",
        "X-Forwarded-For": "198.51.100.9",
        "Host": "sfu-1.example.com",
    }
    assert forward_headers(headers, "203.0.113.5") == {
        "Authorization": "Bearer t0k3n",
        "Content-Type": "application/sdp",
        "X-Forwarded-For": "203.0.113.5",  # the client as this node saw it, not as claimed
    }
    assert forward_headers({}, None) == {}


def test_a_created_session_is_relayed_with_an_absolute_location_on_the_target() -> None:
    headers = [
        ("Content-Type", "application/sdp"),
        ("Location", "/whip/room/abc123"),
        ("Link", '<turn:turn.example.com>; rel="ice-server"'),
        ("link", '<turns:turn.example.com>; rel="ice-server"'),
        ("ETag", '"e1"'),
        ("Cache-Control", "no-store"),
        ("Set-Cookie", "a=b"),
        ("Server", "sfu"),
        ("Content-Length", str(len(ANSWER))),
    ]
    relayed = relay_answer(201, headers, ANSWER, url=SENT_TO)
    assert relayed == Relayed(
        201,
        [
            ("Content-Type", "application/sdp"),
            ("Location", f"{TARGET}/whip/room/abc123"),
            ("Link", '<turn:turn.example.com>; rel="ice-server"'),
            ("Link", '<turns:turn.example.com>; rel="ice-server"'),
            ("ETag", '"e1"'),
            ("Cache-Control", "no-store"),
        ],
        ANSWER,
    )


def test_refusals_of_the_target_are_relayed_as_they_are() -> None:
    challenge = [("WWW-Authenticate", 'Bearer realm="sfu"'), ("Content-Type", "text/plain")]
    relayed = relay_answer(401, challenge, b"token expired\n", url=SENT_TO)
    assert relayed == Relayed(401, challenge, b"token expired\n")
    relayed = relay_answer(403, [], b"the room is locked\n", url=SENT_TO)
    assert isinstance(relayed, Relayed) and relayed.status == 403


def test_a_redirect_of_a_draining_target_keeps_its_absolute_url() -> None:
    elsewhere = "https://sfu-3.example.com/whip/room?placed=1"
    relayed = relay_answer(307, [("Location", elsewhere)], b"", url=SENT_TO)
    assert relayed == Relayed(307, [("Location", elsewhere)], b"")


def test_server_errors_fall_back_to_the_redirect() -> None:
    for status in (500, 502, 503, 504):
        assert relay_answer(status, [("Retry-After", "5")], b"busy\n", url=SENT_TO) == "fallback"


def test_answers_that_cannot_be_relayed_fail() -> None:
    too_large = b"a" * (MAX_ANSWER_BYTES + 1)
    location = [("Location", "/whip/room/abc")]
    assert relay_answer(201, location, too_large, url=SENT_TO) == "failed"
    assert isinstance(relay_answer(201, location, too_large[:-1], url=SENT_TO), Relayed)
    # A 201 must name the session, on the target node.
    assert relay_answer(201, [], ANSWER, url=SENT_TO) == "failed"
    other = [("Location", "https://evil.example.net/whip/room/abc")]
    assert relay_answer(201, other, ANSWER, url=SENT_TO) == "failed"
    scheme = [("Location", "javascript:alert(1)")]
    assert relay_answer(201, scheme, ANSWER, url=SENT_TO) == "failed"
    twice = [("Location", "/whip/room/a"), ("Location", "/whip/room/b")]
    assert relay_answer(201, twice, ANSWER, url=SENT_TO) == "failed"


_NAMES = st.sampled_from([*RELAYED_HEADERS, "Set-Cookie", "Server", "Via", "X-Secret", "Date"])
_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)


@given(
    status=st.integers(min_value=100, max_value=599),
    headers=st.lists(st.tuples(_NAMES, _VALUES), max_size=12),
    body=st.binary(max_size=64),
)
def test_only_allow_listed_headers_ever_reach_the_client(
    status: int, headers: list[tuple[str, str]], body: bytes
) -> None:
    result = relay_answer(status, headers, body, url=SENT_TO)
    if isinstance(result, Relayed):
        assert result.status == status < 500 and result.body == body
        assert {name for name, _ in result.headers} <= set(RELAYED_HEADERS)
        for name, value in result.headers:
            if name == "Location":
                assert value.startswith(("http://", "https://"))
    else:
        assert result in ("fallback", "failed")
        assert (result == "fallback") == (status >= 500)
