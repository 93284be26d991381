"""The room protocol's client messages: parsing and validation, sans-I/O (docs/protocol.md).

:func:`parse_client_message` turns one WebSocket text frame into a typed message or raises
:class:`ProtocolError` whose ``code`` and ``message`` are sent back as an ``error`` reply (the
message names the offending field and never echoes more than a short clipped value). Unknown
extra fields are ignored so that newer clients can talk to older servers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

#: Longest room password a ``join`` may carry, longest ban a ``remove`` may ask for (s).
from sfu.config import is_cluster_name
from sfu.core.publication import SOURCES
from sfu.room.policy import MAX_BAN_S, MAX_PASSWORD_CHARS

__all__ = [
    "MAX_BAN_S",
    "MAX_MESSAGE_BYTES",
    "MAX_PASSWORD_CHARS",
    "PROTOCOL_VERSION",
    "Admit",
    "AdmitAll",
    "ClientMessage",
    "Deny",
    "EndMeeting",
    "ForceMute",
    "Join",
    "Leave",
    "Lock",
    "ModerationMessage",
    "Mute",
    "Offer",
    "Ping",
    "Preferences",
    "ProtocolError",
    "Remove",
    "RequestMute",
    "Unsubscribe",
    "error_message",
    "parse_client_message",
]

PROTOCOL_VERSION: Final = 1
#: Largest accepted message (UTF-8 bytes); an SDP offer with many sections is ~20 KiB.
#: Largest accepted message (UTF-8 bytes). Offers set it: Chromium writes ~4 KB per recvonly
#: video section and ~1.2 KB per audio one, so a 30-person meeting's offer is ~160 KB.
MAX_MESSAGE_BYTES: Final = 256 * 1024
_MAX_ID_CHARS: Final = 64
_MAX_MID_CHARS: Final = 32
_MAX_TRACK_ID_CHARS: Final = 64
_MAX_NAME_CHARS: Final = 64
_MAX_ROOM_CHARS: Final = 128
_MAX_ENTRIES: Final = 128
_MAX_LAYER: Final = 2
_MAX_PARTICIPANT_ID_CHARS: Final = 64
#: Longest ``chat`` text accepted by the parser (the relay's own byte limit is smaller).
_MAX_CHAT_CHARS: Final = 16384
#: Largest picture height a publisher may declare (8K).
_MAX_HEIGHT: Final = 4320


class ProtocolError(Exception):
    """A client message that cannot be accepted; ``code`` is a docs/protocol.md error code."""

    def __init__(self, code: str, message: str, request_id: str | int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Join:
    """``join``: the first message of every connection."""

    protocol: int
    room: str
    token: str = field(repr=False)
    id: str | int | None = None
    #: The room's password, when it has one (never logged, never echoed).
    password: str | None = field(default=None, repr=False)
    #: A reconnecting client: take over this identity's session (transport, tracks,
    #: subscriptions) instead of replacing it (docs/protocol.md, "Reconnecting").
    resume: bool = False
    #: The region the client would rather be served in (a cluster's placement hint).
    region: str | None = None
    #: This join was sent here by another node (``moved``): it is never sent on again.
    placed: bool = False


@dataclass(frozen=True, slots=True)
class Offer:
    """``offer``: the whole current media state as an SDP offer."""

    sdp: str = field(repr=False)
    tracks: dict[str, str] = field(default_factory=dict)
    subscriptions: dict[str, str] = field(default_factory=dict)
    id: str | int | None = None
    #: What each published track shows, by mid (``camera``, ``screen``...), where declared.
    sources: dict[str, str] = field(default_factory=dict)
    #: The picture height of each published video track's top layer, by mid, where declared
    #: (subscribers map their tile sizes to layers with it).
    heights: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """``unsubscribe``: stop forwarding one track now."""

    track: str
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Preferences:
    """``prefs``: layer caps and visibility of one subscription."""

    track: str
    max_spatial: int | None = None
    max_temporal: int | None = None
    paused: bool = False
    id: str | int | None = None
    #: The subscriber pinned the tile: it outranks other cameras for bandwidth.
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Mute:
    """``mute``: the publisher (un)muted one of its tracks."""

    track: str
    muted: bool
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: keepalive / latency probe."""

    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    """``leave``: the participant is done."""

    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Admit:
    """``admit`` (host): let one waiting participant in."""

    participant: str
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Deny:
    """``deny`` (host): turn one waiting participant away."""

    participant: str
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class AdmitAll:
    """``admit_all`` (host): let everyone waiting in."""

    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Remove:
    """``remove`` (host): end one participant's session; ``ban_s`` bars its identity from
    this room for that long."""

    participant: str
    ban_s: int | None = None
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class RequestMute:
    """``request_mute`` (host): ask the publisher of one track to mute it."""

    track: str
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class ForceMute:
    """``force_mute`` (host): stop (``muted``) or resume forwarding one track."""

    track: str
    muted: bool
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Lock:
    """``lock`` (host): refuse (or accept again) new joins."""

    locked: bool
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class MuteChat:
    """``mute_chat`` (host): refuse (or accept again) one participant's chat messages."""

    participant: str
    muted: bool
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class Chat:
    """``chat``: one chat message relayed to the room (the WebSocket fallback of the data
    channel; same limits, see :mod:`sfu.room.chat`)."""

    text: str
    id: str | int | None = None


@dataclass(frozen=True, slots=True)
class EndMeeting:
    """``end_meeting`` (host): end the meeting for everyone in the room."""

    id: str | int | None = None


ModerationMessage = (
    Admit | Deny | AdmitAll | Remove | RequestMute | ForceMute | MuteChat | Lock | EndMeeting
)
ClientMessage = (
    Join
    | Chat
    | Offer
    | Unsubscribe
    | Preferences
    | Mute
    | Ping
    | Leave
    | Admit
    | Deny
    | AdmitAll
    | Remove
    | RequestMute
    | ForceMute
    | MuteChat
    | Lock
    | EndMeeting
)


def _clip(value: str) -> str:
    return repr(value if len(value) <= 32 else value[:32] + "...")


def _string(obj: dict[str, Any], key: str, max_chars: int, rid: str | int | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ProtocolError("bad_message", f"'{key}' must be a string", rid)
    if not value or len(value) > max_chars:
        raise ProtocolError("bad_message", f"'{key}' must be 1-{max_chars} characters", rid)
    return value


def _layer(obj: dict[str, Any], key: str, rid: str | int | None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_LAYER:
        raise ProtocolError(
            "bad_message", f"'{key}' must be null or an integer 0-{_MAX_LAYER}", rid
        )
    return value


def _boolean(obj: dict[str, Any], key: str, rid: str | int | None, default: bool | None) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise ProtocolError("bad_message", f"'{key}' must be true or false", rid)
    return value


def _mid_map(
    obj: dict[str, Any], key: str, rid: str | int | None, *, nested_name: bool
) -> dict[str, str]:
    value = obj.get(key, {})
    if not isinstance(value, dict):
        raise ProtocolError("bad_message", f"'{key}' must be an object keyed by mid", rid)
    if len(value) > _MAX_ENTRIES:
        raise ProtocolError("bad_message", f"'{key}' has more than {_MAX_ENTRIES} entries", rid)
    out: dict[str, str] = {}
    for mid, item in value.items():
        if not mid or len(mid) > _MAX_MID_CHARS:
            raise ProtocolError("bad_message", f"'{key}': mids must be 1-32 characters", rid)
        if nested_name:
            if not isinstance(item, dict):
                raise ProtocolError("bad_message", f"'{key}.{mid}' must be an object", rid)
            out[mid] = _string(item, "name", _MAX_NAME_CHARS, rid)
        else:
            if not isinstance(item, str) or not item or len(item) > _MAX_TRACK_ID_CHARS:
                raise ProtocolError("bad_message", f"'{key}.{mid}' must be a track id", rid)
            out[mid] = item
    return out


def _track_details(
    obj: dict[str, Any], rid: str | int | None
) -> tuple[dict[str, str], dict[str, int]]:
    """The optional ``source`` and ``height`` of each ``tracks`` entry (already checked to be
    objects keyed by short mids)."""
    sources: dict[str, str] = {}
    heights: dict[str, int] = {}
    for mid, item in obj.get("tracks", {}).items():
        source = item.get("source")
        if source is not None:
            if not isinstance(source, str) or source not in SOURCES:
                raise ProtocolError(
                    "bad_message",
                    f"'tracks.{mid}.source' must be one of {', '.join(sorted(SOURCES))}",
                    rid,
                )
            sources[mid] = source
        height = item.get("height")
        if height is not None:
            if (
                isinstance(height, bool)
                or not isinstance(height, int)
                or not 1 <= height <= _MAX_HEIGHT
            ):
                raise ProtocolError(
                    "bad_message", f"'tracks.{mid}.height' must be an integer 1-{_MAX_HEIGHT}", rid
                )
            heights[mid] = height
    return sources, heights


def parse_client_message(text: str | bytes) -> ClientMessage:
    """Parse and validate one client message (raises :class:`ProtocolError`)."""
    # surrogatepass: a str can hold lone surrogates (no wire can); json.loads refuses them.
    size = len(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    if size > MAX_MESSAGE_BYTES:
        limit = MAX_MESSAGE_BYTES
        raise ProtocolError("too_large", f"message is {size} bytes; the limit is {limit}")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    rid = obj.get("id")
    if rid is not None and not (
        (isinstance(rid, str) and len(rid) <= _MAX_ID_CHARS)
        or (isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**53)
    ):
        raise ProtocolError("bad_message", "'id' must be a string (<= 64 chars) or an integer")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", "'type' must be a string", rid)
    if kind == "join":
        version = obj.get("protocol")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ProtocolError("bad_message", "'protocol' must be an integer", rid)
        room = _string(obj, "room", _MAX_ROOM_CHARS, rid)
        token = obj.get("token")
        if not isinstance(token, str):
            raise ProtocolError("bad_message", "'token' must be a string", rid)
        password = None
        if obj.get("password") is not None:
            password = _string(obj, "password", MAX_PASSWORD_CHARS, rid)
        resume = obj.get("resume", False)
        if not isinstance(resume, bool):
            raise ProtocolError("bad_message", "'resume' must be a boolean", rid)
        region = obj.get("region")
        if region is not None and not (isinstance(region, str) and is_cluster_name(region)):
            raise ProtocolError(
                "bad_message", "'region' must be 1-64 letters, digits, '.', '_' or '-'", rid
            )
        placed = _boolean(obj, "placed", rid, False)
        return Join(version, room, token, rid, password, resume, region, placed)
    if kind == "offer":
        sdp = obj.get("sdp")
        if not isinstance(sdp, str) or not sdp:
            raise ProtocolError("bad_message", "'sdp' must be a non-empty string", rid)
        tracks = _mid_map(obj, "tracks", rid, nested_name=True)
        subscriptions = _mid_map(obj, "subscriptions", rid, nested_name=False)
        sources, heights = _track_details(obj, rid)
        return Offer(sdp, tracks, subscriptions, rid, sources, heights)
    if kind == "unsubscribe":
        return Unsubscribe(_string(obj, "track", _MAX_TRACK_ID_CHARS, rid), rid)
    if kind == "prefs":
        return Preferences(
            _string(obj, "track", _MAX_TRACK_ID_CHARS, rid),
            _layer(obj, "max_spatial", rid),
            _layer(obj, "max_temporal", rid),
            _boolean(obj, "paused", rid, False),
            rid,
            _boolean(obj, "pinned", rid, False),
        )
    if kind == "mute":
        track = _string(obj, "track", _MAX_TRACK_ID_CHARS, rid)
        return Mute(track, _boolean(obj, "muted", rid, None), rid)
    if kind == "ping":
        return Ping(rid)
    if kind == "chat":
        # The relay applies the byte limit; here only the type and a generous bound.
        return Chat(_string(obj, "text", _MAX_CHAT_CHARS, rid), rid)
    if kind == "leave":
        return Leave(rid)
    moderation = _moderation(kind, obj, rid)
    if moderation is not None:
        return moderation
    raise ProtocolError("unknown_type", f"unknown message type {_clip(kind)}", rid)


def _moderation(kind: str, obj: dict[str, Any], rid: str | int | None) -> ClientMessage | None:
    """The host messages (docs/protocol.md, "Moderation"); None for any other type."""
    if kind in ("admit", "deny"):
        participant = _string(obj, "participant", _MAX_PARTICIPANT_ID_CHARS, rid)
        return Admit(participant, rid) if kind == "admit" else Deny(participant, rid)
    if kind == "admit_all":
        return AdmitAll(rid)
    if kind == "remove":
        participant = _string(obj, "participant", _MAX_PARTICIPANT_ID_CHARS, rid)
        ban = obj.get("ban_s")
        if ban is not None and (
            isinstance(ban, bool) or not isinstance(ban, int) or not 0 <= ban <= MAX_BAN_S
        ):
            raise ProtocolError(
                "bad_message", f"'ban_s' must be null or an integer 0-{MAX_BAN_S}", rid
            )
        return Remove(participant, ban, rid)
    if kind == "request_mute":
        return RequestMute(_string(obj, "track", _MAX_TRACK_ID_CHARS, rid), rid)
    if kind == "force_mute":
        track = _string(obj, "track", _MAX_TRACK_ID_CHARS, rid)
        return ForceMute(track, _boolean(obj, "muted", rid, True), rid)
    if kind == "mute_chat":
        participant = _string(obj, "participant", _MAX_PARTICIPANT_ID_CHARS, rid)
        return MuteChat(participant, _boolean(obj, "muted", rid, True), rid)
    if kind == "lock":
        return Lock(_boolean(obj, "locked", rid, True), rid)
    if kind == "end_meeting":
        return EndMeeting(rid)
    return None


def error_message(code: str, message: str, request_id: str | int | None) -> dict[str, Any]:
    """The ``error`` reply."""
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if request_id is not None:
        out["re"] = request_id
    return out
