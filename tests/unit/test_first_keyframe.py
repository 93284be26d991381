"""A subscriber whose transport has no SRTP keys yet loses nothing (issue 18, bug 1).

While a new subscriber's DTLS handshake runs, the keyframe that answers the subscription's PLI
may already arrive. A route that cannot send must then be left exactly as it was: no layer
switch, no outgoing sequence number, nothing counted as forwarded. Once the keys arrive the
subscription asks the publisher for a keyframe, and the first packet the subscriber gets is
that keyframe's. Every ingest path (the Python slow path, the reference and the compiled
forwarder) is driven with a fake clock (plain ``now`` values).
"""

from __future__ import annotations

import struct
from typing import cast

import pytest
from ingest_paths import (
    AUDIO_SSRC,
    OPUS_PT,
    PATHS,
    SUB_KEY,
    SUB_SALT,
    VIDEO_SSRCS,
    VP8_PT,
    FakeTransport,
    PathWorld,
    _Session,
    rtp,
    vp8,
)

from sfu.core.kernels import Kernels
from sfu.packet.rtcp import parse_compound
from sfu.packet.rtcp_feedback import Pli
from sfu.transport.transport import TransportState, WebRtcTransport

LATE = 1  # the subscriber whose handshake is still running


def _unkeyed(world: PathWorld, index: int) -> FakeTransport:
    """Turn subscriber ``index``'s transport back into one still in its DTLS handshake."""
    # As the room service wires it: the publication's PLIs go to its publisher's peer.
    world.video.keyframe_requester = world.publisher.request_keyframe
    transport = world.transports[index]
    transport.srtp = None  # type: ignore[assignment]
    transport.has_srtp = False
    if world.dataplane is not None:
        world.dataplane.sync(cast(WebRtcTransport, transport))
    return transport


def _keyed(world: PathWorld, index: int, now: float) -> None:
    """The handshake completes: keys, then the CONNECTED state reaches the subscriber's peer."""
    transport = world.transports[index]
    transport.srtp = _Session(SUB_KEY, SUB_SALT)
    transport.has_srtp = True
    world.subscribers[index].on_state(
        cast(WebRtcTransport, transport), TransportState.CONNECTED, now
    )


def _plis(world: PathWorld) -> list[int]:
    """Media SSRCs the publisher was sent PLIs for (and forget them)."""
    out = []
    for compound in world.pub_transport.rtcp:
        for packet in parse_compound(compound):
            if isinstance(packet, Pli):
                out.append(packet.media_ssrc)
    world.pub_transport.rtcp.clear()
    return out


def _is_vp8_keyframe_start(packet: bytes) -> bool:
    offset = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        offset += 4 + 4 * struct.unpack_from("!H", packet, offset + 2)[0]
    # The descriptor vp8() writes: 6 bytes with X, I (15-bit), L, T; then the payload header.
    return bool(packet[offset] & 0x10) and not packet[offset + 6] & 0x01


@pytest.mark.parametrize("path", PATHS)
def test_keyframe_before_keys_is_not_consumed(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    _unkeyed(world, LATE)
    ssrc = VIDEO_SSRCS[0]
    late = world.video_subs[LATE]
    assert late.selector is not None
    # The keyframe that answered the subscription's first PLI, mid-handshake.
    world.send(rtp(ssrc, 100, 9000, VP8_PT, vp8(1, key=True)), 1.0)
    world.send(rtp(ssrc, 101, 9000, VP8_PT, vp8(1, key=True, start=False)), 1.001)
    world.send(rtp(ssrc, 102, 12000, VP8_PT, vp8(2, key=False)), 1.033)
    assert len(world.video_seqs(0)) == 3  # the keyed subscriber got everything
    assert world.received[LATE].packets == []
    assert late.forwarded == 0
    assert late.selector.current.spatial is None  # no switch on a keyframe it never got
    assert late.munger.last_out_seq is None  # no sequence number taken
    assert late.state.lookup(0) is None
    # Keys arrive: the subscription asks for a keyframe of the layer it starts on.
    _plis(world)
    _keyed(world, LATE, 1.05)
    assert _plis(world) == [ssrc]
    # A delta frame before that keyframe is useless to it: not sent.
    world.send(rtp(ssrc, 103, 15000, VP8_PT, vp8(3, key=False)), 1.066)
    assert world.received[LATE].packets == []
    world.send(rtp(ssrc, 104, 18000, VP8_PT, vp8(4, key=True)), 1.1)
    world.send(rtp(ssrc, 105, 21000, VP8_PT, vp8(5, key=False)), 1.133)
    out_ssrc = 0x9000 + LATE
    got = [p for p in world.received[LATE].packets if struct.unpack_from("!I", p, 8)[0] == out_ssrc]
    assert got and _is_vp8_keyframe_start(got[0])
    assert late.forwarded == 2
    seqs = world.video_seqs(LATE)
    assert len(seqs) == 2 and (seqs[1] - seqs[0]) & 0xFFFF == 1


@pytest.mark.parametrize("path", PATHS)
def test_padding_before_keys_leaves_the_route_untouched(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    _unkeyed(world, LATE)
    ssrc = VIDEO_SSRCS[0]
    world.send(rtp(ssrc, 100, 9000, VP8_PT, vp8(1, key=True)), 1.0)
    world.send(rtp(ssrc, 101, 9000, VP8_PT, b"", padding=200), 1.001)  # a probe
    world.send(rtp(ssrc, 102, 9000, VP8_PT, b""), 1.002)  # a bare header
    late = world.video_subs[LATE]
    assert late.munger.last_out_seq is None and late.forwarded == 0
    _keyed(world, LATE, 1.01)
    world.send(rtp(ssrc, 103, 12000, VP8_PT, vp8(2, key=True)), 1.033)
    world.send(rtp(ssrc, 104, 15000, VP8_PT, vp8(3, key=False)), 1.066)
    seqs = world.video_seqs(LATE)
    assert len(seqs) == 2 and (seqs[1] - seqs[0]) & 0xFFFF == 1


@pytest.mark.parametrize("path", PATHS)
def test_audio_before_keys_is_not_counted(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    _unkeyed(world, LATE)
    world.send(rtp(AUDIO_SSRC, 7, 960, OPUS_PT, b"\x01" * 40), 1.0)
    assert world.audio_subs[LATE].forwarded == 0
    assert world.audio_subs[0].forwarded == 1
    _keyed(world, LATE, 1.01)
    assert AUDIO_SSRC not in _plis(world)  # audio needs no keyframe
    world.send(rtp(AUDIO_SSRC, 8, 1920, OPUS_PT, b"\x01" * 40), 1.02)
    assert world.audio_subs[LATE].forwarded == 1
