"""Rooms spread over several forwarding places: what a room's shards tell each other.

A room larger than one core has a *shard* on each worker that holds some of its
participants (``sfu.workers.placement``). Each shard's :class:`~sfu.room.room.Room` holds its
own participants and, as *remote* entries, those of the other shards, with their tracks as
local stand-in publications fed over the pipes (``sfu.core.relay``). The shards keep this
consistent by publishing room events on a :class:`RoomBus` (the supervisor relays them
between workers; between nodes Redis does, ``sfu.cluster.room_bus``) and applying the
others' (``RoomService.on_shared``):

- ``shard_opened``: a shard started (or lost the bus); the others answer with their whole
  local state, ending with ``shard_roster``;
- ``shard_roster``: the ids of the publishing shard's participants and tracks now; what
  another shard shows of it beyond these is gone (its leave was lost while the bus was away);
- ``policy``: an admin or host changed the room's policy on the publishing shard (which saved
  it); the others take it (``null``: back to the defaults) and tell their participants;
- ``participant_joined`` / ``participant_left``: a participant of the publishing shard;
- ``track_published`` (with the ``relay`` description below) / ``track_unpublished``;
- ``track_muted`` / ``track_updated``: as the room protocol broadcasts them;
- ``chat``: a chat envelope the publishing shard delivered to its own participants;
- ``seat_taken``: an identity was admitted on the publishing shard; a session of the same
  identity on another shard is replaced (one identity, one seat, across shards);
- ``moderate``: a host's action on a participant of another shard (``remove`` with its
  ban, ``request_mute``, ``mute_chat``), checked and audited where the host is, carried
  out where the participant is. A ``remove`` with a ban carries the target's identity and
  goes to every shard (a local target's too), each of which keeps the ban;
- ``bans``: the room's bans (identity, seconds left), answering a ``shard_opened`` so that a
  banned identity's rejoin placed on the new shard is refused there too.

Events are idempotent (a repeated join or publish changes nothing), so answering a
``shard_opened`` with everything is safe even when some of it was already known.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from sfu.core.publication import SOURCES, Publication
from sfu.negotiation import NegotiatedCodec

if TYPE_CHECKING:
    from sfu.core.kernels import Kernels
    from sfu.core.router import AudioLevelSink

__all__ = [
    "MAX_RELAY_CODECS",
    "SHARED_EVENTS",
    "RemoteTracks",
    "RoomBus",
    "RoomHomes",
    "codec_from_wire",
    "codec_to_wire",
    "publication_from_relay",
    "relay_description",
]

#: The event types a shard publishes (anything else from the bus is dropped and counted).
SHARED_EVENTS: Final = frozenset(
    {
        "shard_opened",
        "shard_roster",
        "policy",
        "participant_joined",
        "participant_left",
        "track_published",
        "track_unpublished",
        "track_muted",
        "track_updated",
        "chat",
        "moderate",
        "bans",
        "seat_taken",
    }
)
#: Formats one relayed publication may list (a publisher offers a handful per codec).
MAX_RELAY_CODECS: Final = 16
_MAX_TEXT: Final = 256


class RoomBus(Protocol):
    """Carries a room's events to its other shards."""

    def publish(self, room: str, event: dict[str, Any]) -> None:
        """Send ``event`` to every other shard of ``room`` (fire and forget, in order)."""
        ...


class RoomHomes(Protocol):
    """Told when a room opens here and when it ends here (a cluster claims the room's home
    in its directory and subscribes to the room's events; releases both at the end)."""

    def opened(self, room: str) -> None:
        """``room`` has its first participant here (before its ``shard_opened`` is shared)."""
        ...

    def closed(self, room: str) -> None:
        """``room``'s last participant here left."""
        ...


class RemoteTracks(Protocol):
    """Feeds a remote track's stand-in publication from the shard that has its publisher."""

    def open(
        self, origin: int, publication: Publication, on_audio_level: AudioLevelSink | None
    ) -> bool:
        """Start relaying ``publication`` from shard ``origin``; False when it cannot."""
        ...

    def close(self, publication: Publication) -> None:
        """Stop relaying ``publication`` (unpublished, or this shard's room ended)."""
        ...

    def ended(self, publication: Publication) -> None:
        """A local ``publication`` ended: end every flow relaying it to another shard."""
        ...


def codec_to_wire(codec: NegotiatedCodec) -> dict[str, Any]:
    """A negotiated codec as JSON values."""
    return {
        "pt": codec.payload_type,
        "name": codec.name,
        "clock_rate": codec.clock_rate,
        "channels": codec.channels,
        "fmtp": codec.fmtp,
        "feedback": list(codec.rtcp_feedback),
        "rtx_pt": codec.rtx_payload_type,
        "rtx_fmtp": codec.rtx_fmtp,
    }


def _int(value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError("integer out of range")
    return value


def _text(value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise ValueError("bad text")
    return value


def codec_from_wire(value: Any) -> NegotiatedCodec:
    """The codec of :func:`codec_to_wire`; ValueError on anything malformed."""
    if not isinstance(value, dict):
        raise ValueError("codec is not an object")
    feedback = value.get("feedback")
    if not isinstance(feedback, list) or len(feedback) > MAX_RELAY_CODECS:
        raise ValueError("bad feedback list")
    rtx = value.get("rtx_pt")
    channels = value.get("channels")
    return NegotiatedCodec(
        _int(value.get("pt"), 0, 127),
        _text(value.get("name")) or "",
        _int(value.get("clock_rate"), 1, 1_000_000),
        None if channels is None else _int(channels, 1, 8),
        _text(value.get("fmtp"), optional=True),
        tuple(_text(f) or "" for f in feedback),
        None if rtx is None else _int(rtx, 0, 127),
        _text(value.get("rtx_fmtp"), optional=True),
    )


def relay_description(publication: Publication) -> dict[str, Any]:
    """What another shard needs to stand in for ``publication``: its room-protocol fields,
    codecs and header-extension ids (the relayed packets carry the publisher's ids)."""
    return {
        "id": publication.id,
        "participant": publication.participant_id,
        "kind": publication.kind,
        "name": publication.name,
        "mid": publication.mid,
        "source": publication.source,
        "height": publication.height,
        "muted": publication.muted,
        "force_muted": publication.force_muted,
        "rids": list(publication.rids),
        "codec": codec_to_wire(publication.codec),
        "codecs": [codec_to_wire(c) for c in publication.codecs],
        "extensions": {str(i): uri for i, uri in publication.extensions.items()},
    }


def publication_from_relay(relay: Any, *, kernels: Kernels) -> Publication:
    """The stand-in publication of :func:`relay_description`; ValueError when malformed."""
    if not isinstance(relay, dict):
        raise ValueError("relay is not an object")
    kind = relay.get("kind")
    if kind not in ("audio", "video"):
        raise ValueError("bad kind")
    rids = relay.get("rids")
    codecs = relay.get("codecs")
    extensions = relay.get("extensions")
    if not isinstance(rids, list) or len(rids) > 4 or not isinstance(codecs, list):
        raise ValueError("bad layers or codecs")
    if len(codecs) > MAX_RELAY_CODECS or not isinstance(extensions, dict):
        raise ValueError("bad codecs or extensions")
    if len(extensions) > 16:
        raise ValueError("too many extensions")
    source = relay.get("source")
    if source not in SOURCES:
        raise ValueError("bad source")
    height = relay.get("height")
    publication = Publication(
        _text(relay.get("id")) or "",
        _text(relay.get("participant")) or "",
        kind,
        _text(relay.get("name")) or "",
        _text(relay.get("mid")) or "",
        codec_from_wire(relay.get("codec")),
        {_int(int(i), 1, 255): _text(uri) or "" for i, uri in extensions.items()},
        tuple(_text(r) or "" for r in rids),
        muted=bool(relay.get("muted")),
        force_muted=bool(relay.get("force_muted")),
        kernels=kernels,
        source=source,
        height=None if height is None else _int(height, 0, 10_000),
        codecs=tuple(codec_from_wire(c) for c in codecs),
    )
    return publication
