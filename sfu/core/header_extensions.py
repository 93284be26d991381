"""Header-extension id mapping for forwarded packets (RFC 8285), done in place.

A publisher and a subscriber negotiate extension ids independently, so every forwarded packet
must carry the subscriber's ids. Rebuilding the extension block per packet per subscriber would
cost an allocation each; instead the ids are rewritten in place: an element the subscriber
negotiated gets its id, an element it must not see (the publisher's ``mid``/``rid``, which would
misroute the packet in the subscriber's demuxer, and ``transport-cc``, whose sequence belongs to
the publisher's transport) gets an id the subscriber did not negotiate, which receivers skip
(RFC 8285 §4.1: unknown ids are ignored; the element's length still frames it).

``abs-send-time`` is restamped with the SFU's own send time, so the subscriber's receive-side
estimator measures the SFU -> subscriber path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
)

__all__ = ["HIDDEN_URIS", "ExtensionRewriter"]

#: Extensions that describe the publisher's transport or m= section, never forwarded.
HIDDEN_URIS: Final = frozenset({MID_URI, RID_URI, REPAIRED_RID_URI, TRANSPORT_CC_URI})

_ONE_BYTE_PROFILE: Final = 0xBEDE
_ONE_BYTE_STOP_ID: Final = 15


def _unused_id(used: set[int], limit: int) -> int:
    """The smallest id in 1..limit the subscriber did not negotiate (receivers ignore it)."""
    for candidate in range(1, limit + 1):
        if candidate not in used:
            return candidate
    # Every id is taken (never seen in practice): 15 stops one-byte parsing, which at worst
    # loses the elements after a hidden one for this subscriber.
    return _ONE_BYTE_STOP_ID if limit == 14 else 255


class ExtensionRewriter:
    """Rewrites one publisher section's extension ids to one subscriber section's, in place."""

    __slots__ = ("_abs_ids", "_one", "_two", "identity")

    def __init__(self, source: Mapping[int, str], dest: Mapping[int, str]) -> None:
        by_uri = {uri: ext_id for ext_id, uri in dest.items() if uri not in HIDDEN_URIS}
        used = set(dest)
        hide_one = _unused_id(used, 14)
        hide_two = _unused_id(used, 255)
        one = bytearray(range(16))
        two = bytearray(range(256))
        for ext_id in range(1, 256):
            uri = source.get(ext_id)
            mapped = by_uri.get(uri) if uri is not None else None
            if ext_id < 15:
                one[ext_id] = mapped if mapped is not None and mapped < 15 else hide_one
            two[ext_id] = mapped if mapped is not None else hide_two
        self._one = bytes(one)
        self._two = bytes(two)
        #: Source ids whose element is abs-send-time (restamped on the way out).
        src_abs = {i for i, u in source.items() if u == ABS_SEND_TIME_URI}
        self._abs_ids = frozenset(src_abs if ABS_SEND_TIME_URI in by_uri else ())
        #: True when nothing needs changing (same ids, nothing hidden, no restamp).
        self.identity = (
            all(one[i] == i for i in source if i < 15)
            and all(two[i] == i for i in source)
            and not self._abs_ids
        )

    def apply(self, buf: bytearray, length: int, abs_send_time: int) -> None:
        """Rewrite the extension ids of the RTP packet ``buf[:length]`` (already validated by
        the rewrite kernel); ``abs_send_time`` is the 24-bit 6.18 send time to stamp."""
        if self.identity or not buf[0] & 0x10:
            return
        start = 12 + 4 * (buf[0] & 0x0F)
        profile = (buf[start] << 8) | buf[start + 1]
        pos = start + 4
        end = min(pos + 4 * ((buf[start + 2] << 8) | buf[start + 3]), length)
        abs_ids = self._abs_ids
        if profile == _ONE_BYTE_PROFILE:
            table = self._one
            while pos < end:
                b = buf[pos]
                if b == 0:
                    pos += 1
                    continue
                ext_id = b >> 4
                if ext_id == _ONE_BYTE_STOP_ID:
                    return
                size = (b & 0x0F) + 1
                if pos + 1 + size > end:
                    return
                buf[pos] = (table[ext_id] << 4) | (b & 0x0F)
                if ext_id in abs_ids and size == 3:
                    buf[pos + 1] = (abs_send_time >> 16) & 0xFF
                    buf[pos + 2] = (abs_send_time >> 8) & 0xFF
                    buf[pos + 3] = abs_send_time & 0xFF
                pos += 1 + size
        elif profile >> 4 == 0x100:
            table = self._two
            while pos < end:
                ext_id = buf[pos]
                if ext_id == 0:
                    pos += 1
                    continue
                if pos + 1 >= end:
                    return
                size = buf[pos + 1]
                if pos + 2 + size > end:
                    return
                buf[pos] = table[ext_id]
                if ext_id in abs_ids and size == 3:
                    buf[pos + 2] = (abs_send_time >> 16) & 0xFF
                    buf[pos + 3] = (abs_send_time >> 8) & 0xFF
                    buf[pos + 4] = abs_send_time & 0xFF
                pos += 2 + size
