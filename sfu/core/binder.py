"""Which publication and layer an incoming SSRC belongs to.

A publisher declares some SSRCs in its SDP; Chromium's simulcast declares none and names each
stream with the ``mid`` and ``rid`` header extensions (RFC 8852) on its first packets, and its
RTX streams with ``repaired-rid`` (RFC 4588 §8). :class:`Binder` keeps those tables for one
participant, bounded so that a hostile publisher cannot grow them, and tells its owner when a
source stream appears or goes (the data plane forwards bound streams).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sfu.core.publication import Publication, SourceStream
from sfu.packet.extensions import parse_sdes_item
from sfu.packet.rtp import Extensions

__all__ = ["MAX_STREAMS", "Binder", "Binding"]

#: Most incoming SSRCs (media and RTX) one participant may bind: bounds a hostile publisher.
MAX_STREAMS: Final = 32

Entry = tuple[Publication, SourceStream]


@dataclass(frozen=True, slots=True)
class Binding:
    """A newly bound SSRC: its publication and source stream, and whether it is the RTX
    stream of that source (its packets are repairs to restore) or the media stream itself."""

    publication: Publication
    stream: SourceStream
    rtx: bool


def _nothing(publication: Publication, stream: SourceStream) -> None:
    return None


def _nothing_removed(stream: SourceStream) -> None:
    return None


class Binder:
    """SSRC tables of one participant's publications (media and RTX)."""

    def __init__(
        self,
        *,
        on_added: Callable[[Publication, SourceStream], None] = _nothing,
        on_removed: Callable[[SourceStream], None] = _nothing_removed,
    ) -> None:
        self.publications: dict[str, Publication] = {}  # by mid
        self._media: dict[int, Entry] = {}
        self._rtx: dict[int, Entry] = {}
        self._on_added = on_added
        self._on_removed = on_removed
        self.mid_id = 0
        self.rid_id = 0
        self.repaired_rid_id = 0

    def set_extension_ids(self, *, mid: int, rid: int, repaired_rid: int) -> None:
        """The BUNDLE-wide ids of the naming extensions (0: not negotiated)."""
        self.mid_id, self.rid_id, self.repaired_rid_id = mid, rid, repaired_rid

    def media(self, ssrc: int) -> Entry | None:
        """The source stream ``ssrc`` carries media of, if bound."""
        return self._media.get(ssrc)

    def rtx(self, ssrc: int) -> Entry | None:
        """The source stream ``ssrc`` carries repairs of, if bound."""
        return self._rtx.get(ssrc)

    def add_publication(
        self, publication: Publication, declared: list[tuple[int, int | None]]
    ) -> None:
        """Track ``publication`` on its mid; ``declared`` are (ssrc, rtx ssrc) from the SDP."""
        self.publications[publication.mid] = publication
        for layer, (ssrc, rtx) in enumerate(declared[: publication.num_layers]):
            if ssrc in self._media:
                continue
            stream = self._add_stream(publication, layer, ssrc, rtx)
            if rtx is not None:
                self._rtx[rtx] = (publication, stream)

    def remove_publication(self, mid: str) -> Publication | None:
        """Forget the publication on ``mid`` and every SSRC bound to it."""
        publication = self.publications.pop(mid, None)
        if publication is None:
            return None
        for table in (self._media, self._rtx):
            for ssrc in [s for s, (p, _) in table.items() if p is publication]:
                del table[ssrc]
        for stream in publication.streams.values():
            self._on_removed(stream)
        return publication

    def bind(self, ssrc: int, payload_type: int, extensions: Extensions) -> Binding | None:
        """Bind an SSRC seen for the first time by its packet's mid/rid/repaired-rid (None:
        it belongs to nothing, or the table is full). Raises ParseError on a malformed
        extension block."""
        if len(self._media) + len(self._rtx) >= MAX_STREAMS:
            return None
        raw_mid = extensions.get(self.mid_id) if self.mid_id else None
        pub: Publication | None = None
        if raw_mid is not None:
            pub = self.publications.get(parse_sdes_item(raw_mid))
        elif len(self.publications) == 1:
            pub = next(iter(self.publications.values()))
        if pub is None:
            return None
        raw_rrid = extensions.get(self.repaired_rid_id) if self.repaired_rid_id else None
        raw_rid = extensions.get(self.rid_id) if self.rid_id else None
        is_rtx = raw_rrid is not None or payload_type in pub.rtx_apt
        raw_name = raw_rrid if raw_rrid is not None else raw_rid
        layer = 0
        if raw_name is not None and pub.rids:
            rid = parse_sdes_item(raw_name)
            if rid not in pub.rids:
                return None
            layer = pub.rids.index(rid)
        if is_rtx:
            stream = pub.layers.get(layer)
            if stream is None:
                return None  # RTX before its media stream: wait for the media
            stream.rtx_ssrc = ssrc
            self._rtx[ssrc] = (pub, stream)
            return Binding(pub, stream, True)
        if payload_type not in pub.payload_types:
            return None
        return Binding(pub, self._add_stream(pub, layer, ssrc, None), False)

    def declare(self, publication: Publication, layer: int, ssrc: int) -> None:
        """``ssrc`` carries ``layer`` of ``publication`` (a relayed publication learns it from
        the pipe, not from packets); nothing changes when it already does."""
        entry = self._media.get(ssrc)
        if entry is not None and entry[1].layer == layer:
            return
        if entry is not None:
            self._media.pop(ssrc)
            publication.layers.pop(entry[1].layer, None)
            publication.streams.pop(ssrc, None)
            self._on_removed(entry[1])
        if len(self._media) + len(self._rtx) < MAX_STREAMS:
            self._add_stream(publication, layer, ssrc, None)

    def _add_stream(
        self, publication: Publication, layer: int, ssrc: int, rtx: int | None
    ) -> SourceStream:
        """``ssrc`` becomes the stream of ``layer``, replacing an earlier SSRC of that layer."""
        old = publication.layers.get(layer)
        if old is not None:
            self._media.pop(old.ssrc, None)
            self._on_removed(old)
        stream = publication.add_stream(ssrc, layer, rtx)
        self._media[ssrc] = (publication, stream)
        self._on_added(publication, stream)
        return stream
