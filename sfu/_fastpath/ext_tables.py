"""Header-extension id tables (RFC 8285) and the in-place rewrite that reads them.

Shared by the reference ``sfu.core.header_extensions.ExtensionRewriter`` and the compiled
``_extensions.pyx`` (which copies the tables into C arrays and falls back to
:func:`apply_tables` for buffers its C path cannot take), so both behave the same on every
input. Only the packet layer below is imported.

A publisher and a subscriber negotiate extension ids independently. An element the subscriber
negotiated gets its id; an element it must not see (the publisher's ``mid``/``rid``, which would
misroute the packet in the subscriber's demuxer, and ``transport-cc``, whose sequence belongs
to the publisher's transport) gets an id the subscriber did not negotiate, which receivers skip
(RFC 8285 §4.1: unknown ids are ignored; the element's length still frames it).

Transport-wide CC on egress: when the subscriber negotiated ``transport-cc`` and the caller
passes a sequence number of the subscriber's transport (``twcc_seq`` >= 0), the publisher's
2-byte transport-cc element is reused in place: it gets the subscriber's id and that sequence
number (draft-holmer-rmcat-transport-wide-cc-extensions-01 §2), and the rewrite reports that
it stamped. A packet without the element is left unstamped (no header grows on the way).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, NamedTuple

from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
)

__all__ = [
    "HIDDEN_URIS",
    "ONE_BYTE_PROFILE",
    "ONE_BYTE_STOP_ID",
    "ExtensionTables",
    "apply_tables",
    "build_tables",
]

#: Extensions that describe the publisher's transport or m= section, never forwarded.
HIDDEN_URIS: Final = frozenset({MID_URI, RID_URI, REPAIRED_RID_URI, TRANSPORT_CC_URI})

#: RFC 8285 §4.2: the "defined by profile" value of a one-byte header extension block.
ONE_BYTE_PROFILE: Final = 0xBEDE
#: RFC 8285 §4.2: id 15 is reserved and stops the processing of a one-byte block.
ONE_BYTE_STOP_ID: Final = 15
#: Highest usable id of a one-byte element (RFC 8285 §4.2) and of a two-byte one (§4.3).
_ONE_BYTE_MAX_ID: Final = 14
_TWO_BYTE_MAX_ID: Final = 255


class ExtensionTables(NamedTuple):
    """Source id -> subscriber id, for one-byte (16 entries) and two-byte (256) elements."""

    one: bytes
    two: bytes
    #: Source ids whose element is abs-send-time (restamped on the way out).
    abs_ids: frozenset[int]
    #: True when nothing needs changing (same ids, nothing hidden, no restamp).
    identity: bool
    #: Source ids whose element is transport-cc (restamped when a sequence number is given).
    twcc_ids: frozenset[int] = frozenset()
    #: The subscriber's transport-cc id (0: not negotiated, never stamped).
    twcc_dest: int = 0


def _unused_id(used: set[int], limit: int) -> int:
    """The smallest id in 1..limit the subscriber did not negotiate (receivers ignore it)."""
    for candidate in range(1, limit + 1):
        if candidate not in used:
            return candidate
    # Every id is taken (never seen in practice): 15 stops one-byte parsing, which at worst
    # loses the elements after a hidden one for this subscriber.
    return ONE_BYTE_STOP_ID if limit == _ONE_BYTE_MAX_ID else _TWO_BYTE_MAX_ID


def build_tables(source: Mapping[int, str], dest: Mapping[int, str]) -> ExtensionTables:
    """The tables that turn ``source``'s extension ids (id -> URI) into ``dest``'s."""
    by_uri = {uri: ext_id for ext_id, uri in dest.items() if uri not in HIDDEN_URIS}
    used = set(dest)
    hide_one = _unused_id(used, _ONE_BYTE_MAX_ID)
    hide_two = _unused_id(used, _TWO_BYTE_MAX_ID)
    one = bytearray(range(ONE_BYTE_STOP_ID + 1))
    two = bytearray(range(_TWO_BYTE_MAX_ID + 1))
    for ext_id in range(1, _TWO_BYTE_MAX_ID + 1):
        uri = source.get(ext_id)
        mapped = by_uri.get(uri) if uri is not None else None
        if ext_id < ONE_BYTE_STOP_ID:
            one[ext_id] = mapped if mapped is not None and mapped < ONE_BYTE_STOP_ID else hide_one
        two[ext_id] = mapped if mapped is not None else hide_two
    src_abs = {i for i, u in source.items() if u == ABS_SEND_TIME_URI}
    abs_ids = frozenset(src_abs if ABS_SEND_TIME_URI in by_uri else ())
    identity = (
        all(one[i] == i for i in source if i < ONE_BYTE_STOP_ID)
        and all(two[i] == i for i in source)
        and not abs_ids
    )
    twcc_dest = next(
        (i for i, u in sorted(dest.items()) if u == TRANSPORT_CC_URI and 0 < i <= 255), 0
    )
    twcc_ids = frozenset(
        i for i, u in source.items() if u == TRANSPORT_CC_URI and twcc_dest and 0 < i <= 255
    )
    return ExtensionTables(bytes(one), bytes(two), abs_ids, identity, twcc_ids, twcc_dest)


def apply_tables(
    one: bytes,
    two: bytes,
    abs_ids: frozenset[int],
    buf: bytearray,
    length: int,
    abs_send_time: int,
    twcc_ids: frozenset[int] = frozenset(),
    twcc_dest: int = 0,
    twcc_seq: int = -1,
) -> bool:
    """Rewrite the extension ids of the RTP packet ``buf[:length]`` (already validated by
    the rewrite kernel) in place; ``abs_send_time`` is the 24-bit 6.18 send time to stamp.
    With ``twcc_seq`` >= 0 the first 2-byte transport-cc element of ``twcc_ids`` becomes the
    subscriber's (``twcc_dest``) carrying ``twcc_seq``; returns whether one was stamped."""
    stamped = False
    if not 0 <= twcc_seq <= 0xFFFF or not twcc_dest:
        twcc_ids = frozenset()
    if not buf[0] & 0x10:
        return stamped
    start = 12 + 4 * (buf[0] & 0x0F)
    profile = (buf[start] << 8) | buf[start + 1]
    pos = start + 4
    end = min(pos + 4 * ((buf[start + 2] << 8) | buf[start + 3]), length)
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            b = buf[pos]
            if b == 0:
                pos += 1
                continue
            ext_id = b >> 4
            if ext_id == ONE_BYTE_STOP_ID:
                return stamped
            size = (b & 0x0F) + 1
            if pos + 1 + size > end:
                return stamped
            if ext_id in twcc_ids and size == 2 and not stamped and twcc_dest < ONE_BYTE_STOP_ID:
                buf[pos] = (twcc_dest << 4) | 1
                buf[pos + 1] = (twcc_seq >> 8) & 0xFF
                buf[pos + 2] = twcc_seq & 0xFF
                stamped = True
                pos += 3
                continue
            buf[pos] = (one[ext_id] << 4) | (b & 0x0F)
            if ext_id in abs_ids and size == 3:
                buf[pos + 1] = (abs_send_time >> 16) & 0xFF
                buf[pos + 2] = (abs_send_time >> 8) & 0xFF
                buf[pos + 3] = abs_send_time & 0xFF
            pos += 1 + size
    elif profile >> 4 == 0x100:
        while pos < end:
            ext_id = buf[pos]
            if ext_id == 0:
                pos += 1
                continue
            if pos + 1 >= end:
                return stamped
            size = buf[pos + 1]
            if pos + 2 + size > end:
                return stamped
            if ext_id in twcc_ids and size == 2 and not stamped:
                buf[pos] = twcc_dest
                buf[pos + 2] = (twcc_seq >> 8) & 0xFF
                buf[pos + 3] = twcc_seq & 0xFF
                stamped = True
                pos += 4
                continue
            buf[pos] = two[ext_id]
            if ext_id in abs_ids and size == 3:
                buf[pos + 2] = (abs_send_time >> 16) & 0xFF
                buf[pos + 3] = (abs_send_time >> 8) & 0xFF
                buf[pos + 4] = abs_send_time & 0xFF
            pos += 2 + size
    return stamped
