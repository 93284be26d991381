"""Property tests of the room protocol's message parser (sfu.signaling.protocol).

Whatever arrives, :func:`parse_client_message` either returns a message of the class its
``type`` names or raises :class:`ProtocolError` with a documented code, a short message and
the request id echoed when it was valid; it never raises anything else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu.core.publication import SOURCES
from sfu.signaling.protocol import (
    MAX_BAN_S,
    MAX_MESSAGE_BYTES,
    Admit,
    AdmitAll,
    Chat,
    ClientMessage,
    Deny,
    EndMeeting,
    ForceMute,
    Join,
    Leave,
    Lock,
    Mute,
    MuteChat,
    Offer,
    Ping,
    Preferences,
    ProtocolError,
    Remove,
    RequestMute,
    Unsubscribe,
    parse_client_message,
)

CLASSES: dict[str, type] = {
    "join": Join,
    "offer": Offer,
    "unsubscribe": Unsubscribe,
    "prefs": Preferences,
    "mute": Mute,
    "ping": Ping,
    "leave": Leave,
    "admit": Admit,
    "deny": Deny,
    "admit_all": AdmitAll,
    "remove": Remove,
    "request_mute": RequestMute,
    "force_mute": ForceMute,
    "lock": Lock,
    "end_meeting": EndMeeting,
    "chat": Chat,
    "mute_chat": MuteChat,
}
PARSE_CODES = {"bad_json", "bad_message", "unknown_type", "too_large"}
FIELDS = [
    "id",
    "protocol",
    "room",
    "token",
    "sdp",
    "tracks",
    "subscriptions",
    "track",
    "max_spatial",
    "max_temporal",
    "paused",
    "pinned",
    "muted",
    "name",
    "password",
    "participant",
    "ban_s",
    "locked",
    "text",
]

# Any text at all, lone surrogates included (a str can hold them even if no wire can).
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=6)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELDS), children, max_size=6)
    ),
    max_leaves=12,
)
valid_id = st.none() | st.text(max_size=64) | st.integers(-(2**53) + 1, 2**53 - 1)


def valid_request_id(obj: object) -> bool:
    rid = obj.get("id") if isinstance(obj, dict) else None
    return rid is None or (
        (isinstance(rid, str) and len(rid) <= 64)
        or (isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**53)
    )


def check(text: str | bytes) -> ClientMessage | ProtocolError:
    """Parse ``text``: a message, or the ProtocolError (anything else fails the test)."""
    try:
        message = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code in PARSE_CODES, exc.code
        assert exc.message and len(exc.message) < 200
        return exc
    assert isinstance(message, tuple(CLASSES.values()))
    return message


def check_object(obj: object) -> ClientMessage | ProtocolError:
    """Parse ``json.dumps(obj)`` and check the outcome against what ``obj`` is."""
    result = check(json.dumps(obj))
    if not isinstance(obj, dict):
        assert isinstance(result, ProtocolError) and result.code == "bad_json"
        return result
    if isinstance(result, ProtocolError):
        if result.code == "too_large":
            return result
        assert result.code != "bad_json"
        if valid_request_id(obj):
            assert result.request_id == obj.get("id")
        else:
            assert result.request_id is None and "'id'" in result.message
        if result.code == "unknown_type":
            assert isinstance(obj.get("type"), str) and obj["type"] not in CLASSES
        return result
    assert valid_request_id(obj)
    assert type(result) is CLASSES[obj["type"]]
    assert getattr(result, "id", None) == obj.get("id")
    return result


@given(any_text)
def test_any_text(text: str) -> None:
    check(text)


@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    check(data)


@given(json_values)
def test_any_json_value(value: Any) -> None:
    check_object(value)


@given(
    st.sampled_from([*CLASSES, "dance", "", "JOIN", "ping "]),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values, max_size=8),
)
def test_real_and_fake_types_with_random_fields(kind: str, fields: dict[str, Any]) -> None:
    check_object({**fields, "type": kind})


@given(st.sampled_from(list(CLASSES)), st.data())
def test_real_types_with_plausible_fields(kind: str, data: st.DataObject) -> None:
    """Fields of the right names with values near the valid range: both outcomes occur."""
    plausible: dict[str, st.SearchStrategy[Any]] = {
        "id": valid_id | json_scalars,
        "protocol": st.sampled_from([1, 2, 0, True, "1", None]),
        "room": st.text(max_size=130) | json_scalars,
        "token": st.text(max_size=20) | json_scalars,
        "sdp": st.text(max_size=40) | json_scalars,
        "tracks": st.dictionaries(
            st.text(max_size=33),
            st.fixed_dictionaries(
                {"name": st.text(max_size=65)},
                optional={"source": st.sampled_from(["camera", "screen", "tv"]) | json_scalars},
            ),
        )
        | json_values,
        "subscriptions": st.dictionaries(st.text(max_size=33), st.text(max_size=65)) | json_values,
        "track": st.text(max_size=65) | json_scalars,
        "max_spatial": st.none() | st.integers(-1, 3) | st.booleans(),
        "max_temporal": st.none() | st.integers(-1, 3) | st.floats(0, 2),
        "paused": st.booleans() | json_scalars,
        "pinned": st.booleans() | json_scalars,
        "muted": st.booleans() | json_scalars,
        "password": st.none() | st.text(max_size=130) | json_scalars,
        "participant": st.text(max_size=66) | json_scalars,
        "ban_s": st.none() | st.integers(-1, MAX_BAN_S + 1) | st.booleans() | json_scalars,
        "locked": st.booleans() | json_scalars,
    }
    names = data.draw(st.sets(st.sampled_from(list(plausible))))
    obj = {name: data.draw(plausible[name]) for name in names}
    obj["type"] = kind
    check_object(obj)


# -- valid messages parse to the right values ---------------------------------------------

short = st.text(min_size=1, max_size=64)
layer = st.none() | st.integers(0, 2)


@given(
    valid_id,
    st.text(min_size=1, max_size=128),
    st.text(max_size=100),
    st.none() | st.text(min_size=1, max_size=128),
)
def test_valid_join(rid: str | int | None, room: str, token: str, password: str | None) -> None:
    obj = {"type": "join", "protocol": 1, "room": room, "token": token, "id": rid}
    if password is not None:
        obj["password"] = password
    joined = parse_client_message(json.dumps(obj))
    assert joined == Join(1, room, token, rid, password)
    assert "password=" not in repr(Join(1, "r", "t", None, password))


@pytest.mark.parametrize("password", ["", "x" * 129, 1234, True, ["pw"]])
def test_join_password_is_bounded(password: object) -> None:
    obj = {"type": "join", "protocol": 1, "room": "r", "token": "t", "password": password}
    result = check(json.dumps(obj))
    assert isinstance(result, ProtocolError) and "'password'" in result.message


@given(
    valid_id,
    st.text(min_size=1, max_size=64),
    short,
    st.none() | st.integers(0, MAX_BAN_S),
    st.booleans(),
)
def test_valid_moderation_messages(
    rid: str | int | None, participant: str, track: str, ban: int | None, flag: bool
) -> None:
    def parse(obj: dict[str, Any]) -> ClientMessage:
        return parse_client_message(json.dumps({**obj, "id": rid}))

    assert parse({"type": "admit", "participant": participant}) == Admit(participant, rid)
    assert parse({"type": "deny", "participant": participant}) == Deny(participant, rid)
    assert parse({"type": "admit_all"}) == AdmitAll(rid)
    remove = {"type": "remove", "participant": participant, "ban_s": ban}
    assert parse(remove) == Remove(participant, ban, rid)
    assert parse({"type": "request_mute", "track": track}) == RequestMute(track, rid)
    assert parse({"type": "force_mute", "track": track, "muted": flag}) == ForceMute(
        track, flag, rid
    )
    assert parse({"type": "force_mute", "track": track}) == ForceMute(track, True, rid)
    assert parse({"type": "lock", "locked": flag}) == Lock(flag, rid)
    assert parse({"type": "lock"}) == Lock(True, rid)
    assert parse({"type": "end_meeting"}) == EndMeeting(rid)


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        ({"type": "admit"}, "'participant'"),
        ({"type": "deny", "participant": ""}, "'participant'"),
        ({"type": "remove", "participant": "x" * 65}, "'participant'"),
        ({"type": "remove", "participant": "PA_x", "ban_s": -1}, "'ban_s'"),
        ({"type": "remove", "participant": "PA_x", "ban_s": MAX_BAN_S + 1}, "'ban_s'"),
        ({"type": "remove", "participant": "PA_x", "ban_s": 1.5}, "'ban_s'"),
        ({"type": "remove", "participant": "PA_x", "ban_s": True}, "'ban_s'"),
        ({"type": "request_mute", "track": 5}, "'track'"),
        ({"type": "force_mute", "track": "TR_x", "muted": "yes"}, "'muted'"),
        ({"type": "lock", "locked": None}, "'locked'"),
    ],
)
def test_malformed_moderation_messages_name_the_field(obj: dict[str, Any], field: str) -> None:
    result = check(json.dumps({**obj, "id": "m"}))
    assert isinstance(result, ProtocolError) and result.code == "bad_message"
    assert field in result.message and result.request_id == "m"


@given(
    valid_id,
    st.text(min_size=1, max_size=500),
    st.dictionaries(st.text(min_size=1, max_size=32), short, max_size=5),
    st.dictionaries(st.text(min_size=1, max_size=32), short, max_size=5),
)
def test_valid_offer(
    rid: str | int | None, sdp: str, names: dict[str, str], subs: dict[str, str]
) -> None:
    obj = {
        "type": "offer",
        "sdp": sdp,
        "tracks": {mid: {"name": name} for mid, name in names.items()},
        "subscriptions": subs,
        "id": rid,
    }
    assert parse_client_message(json.dumps(obj)) == Offer(sdp, names, subs, rid)


@given(st.dictionaries(st.text(min_size=1, max_size=32), st.sampled_from(sorted(SOURCES))))
def test_offer_track_sources(sources: dict[str, str]) -> None:
    tracks = {mid: {"name": "n", "source": source} for mid, source in sources.items()}
    obj = {"type": "offer", "sdp": "v=0", "tracks": tracks}
    offer = parse_client_message(json.dumps(obj))
    assert isinstance(offer, Offer) and offer.sources == sources


@pytest.mark.parametrize("source", ["tv", "", 3, True])
def test_an_unknown_track_source_is_refused_by_name(source: object) -> None:
    obj = {"type": "offer", "sdp": "v=0", "tracks": {"0": {"name": "n", "source": source}}}
    result = check(json.dumps(obj))
    assert isinstance(result, ProtocolError) and result.code == "bad_message"
    assert "'tracks.0.source'" in result.message


@given(valid_id, short, layer, layer, st.booleans(), st.booleans())
def test_valid_track_messages(
    rid: str | int | None,
    track: str,
    spatial: int | None,
    temporal: int | None,
    paused: bool,
    muted: bool,
) -> None:
    def parse(obj: dict[str, Any]) -> ClientMessage:
        return parse_client_message(json.dumps({**obj, "id": rid}))

    assert parse({"type": "unsubscribe", "track": track}) == Unsubscribe(track, rid)
    prefs = {
        "type": "prefs",
        "track": track,
        "max_spatial": spatial,
        "max_temporal": temporal,
        "paused": paused,
    }
    assert parse(prefs) == Preferences(track, spatial, temporal, paused, rid)
    pinned = parse({**prefs, "pinned": muted})
    assert pinned == Preferences(track, spatial, temporal, paused, rid, pinned=muted)
    assert parse({"type": "prefs", "track": track}) == Preferences(track, id=rid)
    assert parse({"type": "mute", "track": track, "muted": muted}) == Mute(track, muted, rid)
    assert parse({"type": "ping"}) == Ping(rid)
    assert parse({"type": "leave"}) == Leave(rid)


@given(valid_id, st.dictionaries(st.text(max_size=10), json_scalars, max_size=4))
def test_unknown_extra_fields_are_ignored(rid: str | int | None, extra: dict[str, Any]) -> None:
    extra = {k: v for k, v in extra.items() if k not in ("type", "id")}
    assert parse_client_message(json.dumps({**extra, "type": "ping", "id": rid})) == Ping(rid)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        '{"a":' * 100_000,
        "\ud800",
        '{"type": "ping", "id": 1e400}',
        '{"type": "ping", "id": NaN}',
        '{"type": "ping", "id": ' + "9" * 5000 + "}",
        '{"type": "\\ud800"}',
        "x" * (MAX_MESSAGE_BYTES + 1),
        "é" * (MAX_MESSAGE_BYTES // 2 + 1),
    ],
    ids=[
        "deep arrays",
        "deep objects",
        "lone surrogate",
        "huge float id",
        "nan id",
        "huge int id",
        "escaped surrogate type",
        "too large",
        "too large in utf-8",
    ],
)
def test_edge_cases(text: str) -> None:
    result = check(text)
    assert isinstance(result, ProtocolError)


@pytest.mark.parametrize("height", [0, 4321, 1.5, True, "720"])
def test_a_declared_track_height_is_bounded(height: object) -> None:
    obj = {"type": "offer", "sdp": "v=0", "tracks": {"1": {"name": "n", "height": height}}}
    result = check(json.dumps(obj))
    assert isinstance(result, ProtocolError) and "'tracks.1.height'" in result.message
    valid = {"type": "offer", "sdp": "v=0", "tracks": {"1": {"name": "n", "height": 720}}}
    offer = parse_client_message(json.dumps(valid))
    assert isinstance(offer, Offer) and offer.heights == {"1": 720}
