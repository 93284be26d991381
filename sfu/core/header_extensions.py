"""Header-extension id mapping for forwarded packets (RFC 8285), done in place.

A publisher and a subscriber negotiate extension ids independently, so every forwarded packet
must carry the subscriber's ids. Rebuilding the extension block per packet per subscriber would
cost an allocation each; instead the ids are rewritten in place: an element the subscriber
negotiated gets its id, an element it must not see (the publisher's ``mid``/``rid``, which would
misroute the packet in the subscriber's demuxer, and ``transport-cc``, whose sequence belongs to
the publisher's transport) gets an id the subscriber did not negotiate, which receivers skip
(RFC 8285 §4.1: unknown ids are ignored; the element's length still frames it).

``abs-send-time`` is restamped with the SFU's own send time, so the subscriber's receive-side
estimator measures the SFU -> subscriber path. The tables and the rewrite loop live in
``sfu._fastpath.ext_tables``, shared with the compiled twin.
"""

from __future__ import annotations

from collections.abc import Mapping

from sfu._fastpath.ext_tables import apply_tables, build_tables

__all__ = ["ExtensionRewriter"]


class ExtensionRewriter:
    """Rewrites one publisher section's extension ids to one subscriber section's, in place."""

    __slots__ = ("_abs_ids", "_one", "_twcc_dest", "_twcc_ids", "_two", "identity")

    def __init__(self, source: Mapping[int, str], dest: Mapping[int, str]) -> None:
        tables = build_tables(source, dest)
        self._one = tables.one
        self._two = tables.two
        #: Source ids whose element is abs-send-time (restamped on the way out).
        self._abs_ids = tables.abs_ids
        self._twcc_ids = tables.twcc_ids
        self._twcc_dest = tables.twcc_dest
        #: True when nothing needs changing (same ids, nothing hidden, no restamp).
        self.identity = tables.identity

    def apply(self, buf: bytearray, length: int, abs_send_time: int, twcc_seq: int = -1) -> bool:
        """Rewrite the extension ids of the RTP packet ``buf[:length]`` (already validated by
        the rewrite kernel); ``abs_send_time`` is the 24-bit 6.18 send time to stamp. With
        ``twcc_seq`` >= 0 (a sequence number of the subscriber's transport) the packet's
        transport-cc element carries it under the subscriber's id; returns whether it did."""
        if self.identity:
            return False
        return apply_tables(
            self._one,
            self._two,
            self._abs_ids,
            buf,
            length,
            abs_send_time,
            self._twcc_ids,
            self._twcc_dest,
            twcc_seq,
        )
