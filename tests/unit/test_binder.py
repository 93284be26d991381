"""The Binder: SSRCs to publications and layers, by SDP or by mid/rid on first sight."""

from __future__ import annotations

import pytest
from core_parts import audio_publication, video_publication
from ingest_paths import rtp

from sfu.core.binder import MAX_STREAMS, Binder
from sfu.core.publication import Publication, SourceStream
from sfu.packet.errors import ParseError
from sfu.packet.rtp import Extensions

MID, RID, RRID = 1, 2, 3


def _binder() -> tuple[Binder, list[str]]:
    events: list[str] = []

    def added(pub: Publication, stream: SourceStream) -> None:
        events.append(f"+{stream.ssrc:x}")

    def removed(stream: SourceStream) -> None:
        events.append(f"-{stream.ssrc:x}")

    binder = Binder(on_added=added, on_removed=removed)
    binder.set_extension_ids(mid=MID, rid=RID, repaired_rid=RRID)
    return binder, events


def _named(
    ssrc: int, pt: int, mid: bytes, rid: bytes | None = None, rrid: bytes | None = None
) -> bytes:
    ext = [(MID, mid)]
    if rid is not None:
        ext.append((RID, rid))
    if rrid is not None:
        ext.append((RRID, rrid))
    return rtp(ssrc, 1, 0, pt, b"\x90\xe0\x80\x01\x00\x00\x00", ext)


def test_declared_streams_bind_media_and_rtx() -> None:
    binder, events = _binder()
    video = video_publication()
    binder.add_publication(video, [(0x10, 0x20), (0x11, None)])
    assert events == ["+10", "+11"]
    media = binder.media(0x10)
    assert media is not None and media[1].layer == 0
    rtx = binder.rtx(0x20)
    assert rtx is not None and rtx[1] is media[1]
    assert binder.media(0x20) is None


def test_first_sight_binding_by_mid_and_rid() -> None:
    binder, events = _binder()
    video = video_publication()
    binder.add_publication(video, [])
    binding = binder.bind(0x31, 96, Extensions(_named(0x31, 96, b"0", rid=b"h")))
    assert binding is not None and not binding.rtx
    assert binding.stream.layer == 1 and binder.media(0x31) is not None
    repair = binder.bind(0x41, 97, Extensions(_named(0x41, 97, b"0", rrid=b"h")))
    assert repair is not None and repair.rtx and repair.stream is binding.stream
    assert binding.stream.rtx_ssrc == 0x41
    assert events == ["+31"]


def test_a_new_ssrc_for_a_layer_replaces_the_old_one() -> None:
    binder, events = _binder()
    binder.add_publication(video_publication(), [])
    binder.bind(0x31, 96, Extensions(_named(0x31, 96, b"0", rid=b"q")))
    binder.bind(0x32, 96, Extensions(_named(0x32, 96, b"0", rid=b"q")))
    assert events == ["+31", "-31", "+32"]
    assert binder.media(0x31) is None and binder.media(0x32) is not None


@pytest.mark.parametrize(
    "packet",
    [
        _named(0x50, 96, b"9", rid=b"q"),  # unknown mid
        _named(0x50, 96, b"0", rid=b"x"),  # unknown rid
        _named(0x50, 100, b"0", rid=b"q"),  # payload type the answer did not accept
        _named(0x50, 97, b"0", rrid=b"f"),  # RTX before its media stream
    ],
)
def test_what_names_nothing_binds_nothing(packet: bytes) -> None:
    binder, events = _binder()
    binder.add_publication(video_publication(), [])
    binder.add_publication(audio_publication(), [])
    assert binder.bind(0x50, packet[1] & 0x7F, Extensions(packet)) is None
    assert events == []


def test_single_publication_binds_without_mid() -> None:
    binder, _ = _binder()
    audio = audio_publication()
    binder.add_publication(audio, [])
    binding = binder.bind(0x60, 111, Extensions(rtp(0x60, 1, 0, 111, b"x")))
    assert binding is not None and binding.publication is audio


def test_tables_are_bounded() -> None:
    binder, _ = _binder()
    binder.add_publication(audio_publication(), [])
    for i in range(MAX_STREAMS):
        binder.add_publication(audio_publication(mid=f"m{i}"), [(0x1000 + i, None)])
    assert binder.bind(0x60, 111, Extensions(_named(0x60, 111, b"1"))) is None


def test_malformed_extension_block_raises_parse_error() -> None:
    binder, _ = _binder()
    binder.add_publication(video_publication(), [])
    packet = bytearray(_named(0x31, 96, b"0", rid=b"q"))
    packet[14:16] = b"\x00\x40"  # a block far longer than the packet
    with pytest.raises(ParseError):
        binder.bind(0x31, 96, Extensions(bytes(packet)))


def test_removing_a_publication_forgets_its_ssrcs() -> None:
    binder, events = _binder()
    video = video_publication()
    binder.add_publication(video, [(0x10, 0x20)])
    assert binder.remove_publication("0") is video
    assert binder.media(0x10) is None and binder.rtx(0x20) is None
    assert events == ["+10", "-10"]
    assert binder.remove_publication("0") is None
