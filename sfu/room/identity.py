"""Who a participant is and what it may do: the identity and grant values of a verified join.

These are plain values of the room layer. signaling/auth.py turns a token into
:class:`JoinClaims`; the room service, moderation and the command line only read them, so
they live here and point no layer upward.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

__all__ = [
    "GRANT_NAMES",
    "MAX_IDENTITY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_ROOM_CHARS",
    "Grant",
    "JoinClaims",
    "grant_names",
    "parse_grants",
]

#: Longest room name, identity and display name a join may carry (characters); longer
#: values are refused as bad claims so they never reach room state, logs or other clients.
MAX_ROOM_CHARS: Final = 128
MAX_IDENTITY_CHARS: Final = 128
MAX_NAME_CHARS: Final = 64


class Grant(enum.Flag):
    """What a participant holding the token may do in its room."""

    NONE = 0
    #: Send media.
    PUBLISH = enum.auto()
    #: Receive other participants' media.
    SUBSCRIBE = enum.auto()
    #: Moderate the room, including ending it and changing its settings.
    ADMIN = enum.auto()
    #: Admit people from the room's waiting room and moderate participants in that room.
    HOST = enum.auto()


#: Token spelling of each single grant, in canonical order.
GRANT_NAMES: Final[Mapping[str, Grant]] = MappingProxyType(
    {
        "publish": Grant.PUBLISH,
        "subscribe": Grant.SUBSCRIBE,
        "admin": Grant.ADMIN,
        "host": Grant.HOST,
    }
)


def grant_names(grants: Grant) -> list[str]:
    """The token spelling of ``grants``, in canonical order (``["publish", "subscribe"]``)."""
    return [name for name, flag in GRANT_NAMES.items() if flag in grants]


def parse_grants(text: str) -> Grant:
    """Parse a comma-separated grant list such as ``"publish,subscribe"``; ``""`` is none.

    Raises :class:`ValueError` naming the unknown grant, for command-line and config use.
    """
    grants = Grant.NONE
    for part in text.split(","):
        name = part.strip().lower()
        if not name:
            continue
        flag = GRANT_NAMES.get(name)
        if flag is None:
            known = ", ".join(GRANT_NAMES)
            raise ValueError(f"unknown grant {name!r} (known: {known})")
        grants |= flag
    return grants


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinClaims:
    """The verified content of a join token.

    ``identity`` and ``name`` are personal data and are left out of ``repr`` so that an
    accidentally logged claims object does not leak them.
    """

    room: str
    identity: str = field(repr=False)
    #: Display name shown to other participants; optional.
    name: str | None = field(default=None, repr=False)
    grants: Grant = Grant.NONE
    #: Expiry, issued-at and not-before as integer Unix seconds (``nbf`` optional).
    exp: int
    nbf: int | None = None
    iat: int
