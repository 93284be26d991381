"""Ingest behaves the same on every path: the slow path, the reference and compiled forwarders.

Behaviour tests (padding, RTX binding and repair, reordering, wrap-around, audio levels,
unknown SSRCs) run against each path; a hypothesis test drives the slow path and each
forwarder path with the same packets and control events and requires the same egress and the
same receive bookkeeping after every step.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_paths import (
    AUDIO_SSRC,
    EXT_LEVEL,
    EXT_MID,
    EXT_RID,
    EXT_RRID,
    EXT_TWCC,
    OPUS_PT,
    PATHS,
    RIDS,
    RTX_PT,
    RTX_SSRCS,
    VIDEO_SSRCS,
    VP8_PT,
    PathWorld,
    rtp,
    vp8,
)

from sfu.core.kernels import Kernels


def _aim(world: PathWorld, layer: int) -> None:
    for sub in world.video_subs:
        assert sub.selector is not None
        sub.selector.set_target(layer, None)


def _contiguous(seqs: list[int]) -> bool:
    return all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))


@pytest.mark.parametrize("path", PATHS)
def test_padding_only_packet_leaves_no_sequence_hole(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    _aim(world, 0)
    ssrc = VIDEO_SSRCS[0]
    world.send(rtp(ssrc, 100, 9000, VP8_PT, vp8(1, key=True)), 1.0)
    world.send(rtp(ssrc, 101, 9000, VP8_PT, vp8(1, key=True, start=False)), 1.001)
    world.send(rtp(ssrc, 102, 9000, VP8_PT, b"", padding=200), 1.002)  # a probe
    world.send(rtp(ssrc, 103, 12000, VP8_PT, vp8(2, key=False)), 1.033)
    for index in range(2):
        seqs = world.video_seqs(index)
        assert len(seqs) == 3
        assert _contiguous(seqs), seqs
    assert world.counters.rtp_in == 4
    assert world.video.layers[0].stats.packets_expected == 4


@pytest.mark.parametrize("path", PATHS)
def test_rtx_ssrc_bound_on_first_sight_repairs_at_arrival_time(
    path: str, each_kernels: Kernels
) -> None:
    world = PathWorld(path, each_kernels, declare=False)  # Chromium: SSRCs named by mid/rid only
    _aim(world, 0)
    media = VIDEO_SSRCS[0]
    names = [(EXT_MID, b"0"), (EXT_RID, RIDS[0].encode())]
    world.send(rtp(media, 100, 9000, VP8_PT, vp8(1, key=True), names), 5.0)
    world.send(rtp(media, 102, 12000, VP8_PT, vp8(2, key=False), names), 5.03)  # 101 lost
    assert world.video_seqs(0) == [world.video_seqs(0)[0], world.video_seqs(0)[0] + 2]
    original = rtp(media, 101, 9000, VP8_PT, vp8(1, key=True, start=False))
    osn = original[2:4]
    repair = rtp(
        RTX_SSRCS[0],
        7,
        9000,
        RTX_PT,
        osn + original[12:],
        [(EXT_MID, b"0"), (EXT_RRID, RIDS[0].encode())],
    )
    world.send(repair, 7.0)
    stream = world.video.layers[0]
    assert stream.rtx_ssrc == RTX_SSRCS[0]
    assert stream.last_packet_at == 7.0  # not 0.0: the layer must not look stopped
    assert world.counters.rtx_in == 1
    assert stream.stats.packets_lost == 0
    first = world.video_seqs(0)[0]
    assert sorted(world.video_seqs(0)) == [first, first + 1, first + 2]


@pytest.mark.parametrize("path", PATHS)
def test_reordered_packets_keep_their_places(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    _aim(world, 0)
    ssrc = VIDEO_SSRCS[0]
    world.send(rtp(ssrc, 100, 9000, VP8_PT, vp8(1, key=True)), 1.0)
    world.send(rtp(ssrc, 102, 12000, VP8_PT, vp8(3, key=False)), 1.01)
    world.send(rtp(ssrc, 101, 9000, VP8_PT, vp8(1, key=True, start=False)), 1.02)
    world.send(rtp(ssrc, 103, 15000, VP8_PT, vp8(4, key=False)), 1.03)
    first = world.video_seqs(0)[0]
    assert world.video_seqs(0) == [first, first + 2, first + 1, first + 3]
    assert world.video.layers[0].stats.packets_lost == 0


@pytest.mark.parametrize("path", PATHS)
def test_sequence_wrap_around_is_continuous(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    _aim(world, 0)
    ssrc = VIDEO_SSRCS[0]
    stream = world.video.layers[0]
    firsts: list[int] = []
    for i, seq in enumerate((65534, 65535, 0, 1)):
        world.send(rtp(ssrc, seq, 9000 + i * 3000, VP8_PT, vp8(i, key=i == 0)), 1.0 + i * 0.03)
        firsts.append(stream.unwrapper.last)
    seqs = world.video_seqs(0)
    assert len(seqs) == 4 and _contiguous(seqs)
    assert firsts == [firsts[0] + i for i in range(4)]  # one extended sequence across the wrap
    assert stream.stats.packets_expected == 4
    assert stream.stats.packets_lost == 0


@pytest.mark.parametrize("path", PATHS)
def test_audio_levels_and_unknown_ssrcs(path: str, each_kernels: Kernels) -> None:
    world = PathWorld(path, each_kernels)
    world.send(rtp(AUDIO_SSRC, 5, 960, OPUS_PT, b"\x01" * 40, [(EXT_LEVEL, b"\x9e")]), 2.0)
    world.send(rtp(0xDEAD, 5, 960, OPUS_PT, b"\x01" * 40), 2.01)
    assert world.levels == [(0x1E, True, 2.0)]
    assert world.counters.unknown_ssrc == 1
    assert world.counters.audio_in == 1
    assert [len(r.packets) for r in world.received] == [1, 1]


# -- slow path against the forwarders, step by step ---------------------------------------------

events = st.lists(
    st.one_of(
        st.tuples(
            st.just("video"),
            st.integers(0, 2),  # layer
            st.integers(-2, 3),  # sequence step (reorder, duplicate, gap)
            st.booleans(),  # keyframe
            st.integers(0, 2),  # temporal id
            st.integers(0, 2),  # padding only (0 = no)
            st.booleans(),  # malformed extension block
        ),
        st.tuples(st.just("audio"), st.integers(-1, 2), st.integers(0, 255)),
        st.tuples(st.just("rtx"), st.integers(0, 2), st.integers(0, 6), st.booleans()),
        st.tuples(st.just("target"), st.integers(0, 1), st.integers(0, 2)),
        st.tuples(st.just("pause"), st.integers(0, 1), st.booleans()),
    ),
    min_size=1,
    max_size=60,
)


def _bookkeeping(world: PathWorld, now: float) -> list[Any]:
    out: list[Any] = [world.counters, world.levels]
    for stream in (*world.video.layers.values(), *world.audio.layers.values()):
        out.append(
            (
                stream.packets,
                stream.last_packet_at,
                stream.last_keyframe_at,
                stream.meter.bps(now),
                stream.stats.packets_expected,
                stream.stats.packets_lost,
                stream.unwrapper.last,
            )
        )
    return out


@settings(max_examples=120, deadline=None)
@given(events=events)
def test_slow_path_matches_forwarder_and_replay(
    each_kernels: Kernels, events: list[tuple[Any, ...]]
) -> None:
    slow, fast = PathWorld("slow", each_kernels), PathWorld("forwarder", each_kernels)
    seqs = [100, 40000, 65530]
    sent: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    audio_seq, twcc, pid = 65534, 0, 10
    now = 1.0
    for event in events:
        now += 0.004
        packet: bytes | None = None
        kind = event[0]
        if kind == "video":
            _, layer, step, key, tid, padding, bad_ext = event
            seqs[layer] = (seqs[layer] + step) & 0xFFFF
            pid += 1
            twcc = (twcc + 1) & 0xFFFF
            ext = [(EXT_TWCC, struct.pack("!H", twcc))]
            payload = b"" if padding else vp8(pid & 0x7FFF, key=key, tid=tid)
            packet = rtp(
                VIDEO_SSRCS[layer],
                seqs[layer],
                pid * 3000,
                VP8_PT,
                payload,
                ext,
                padding=padding * 50,
            )
            if bad_ext:
                # The twcc element claims 16 bytes of a 4-byte block (framing intact, so
                # SRTP still protects it).
                packet = packet[:16] + bytes([(EXT_TWCC << 4) | 0x0F]) + packet[17:]
            else:
                sent[layer].append(packet)
        elif kind == "audio":
            _, step, level = event
            audio_seq = (audio_seq + step) & 0xFFFF
            packet = rtp(
                AUDIO_SSRC,
                audio_seq,
                audio_seq * 960,
                OPUS_PT,
                b"\x05" * 30,
                [(EXT_LEVEL, bytes([level]))],
            )
        elif kind == "rtx":
            _, layer, back, with_twcc = event
            if sent[layer]:
                original = sent[layer][-1 - min(back, len(sent[layer]) - 1)]
                twcc = (twcc + 1) & 0xFFFF
                ext = [(EXT_TWCC, struct.pack("!H", twcc))] if with_twcc else []
                offset = 12 + 4 + 4  # fixed header and the one-element extension block
                packet = rtp(
                    RTX_SSRCS[layer],
                    now_seq(now),
                    0,
                    RTX_PT,
                    original[2:4] + original[offset:],
                    ext,
                )
        elif kind == "target":
            _, index, layer = event
            for world in (slow, fast):
                selector = world.video_subs[index].selector
                assert selector is not None
                selector.set_target(layer, None)
        else:
            _, index, paused = event
            for world in (slow, fast):
                for sub in (world.video_subs[index], world.audio_subs[index]):
                    sub.set_preferences(None, None, paused)
        if packet is not None:
            slow.send(packet, now)
            fast.send(packet, now)
        assert [r.packets for r in fast.received] == [r.packets for r in slow.received]
        assert _bookkeeping(fast, now) == _bookkeeping(slow, now)
    later = now + 1.0
    assert fast.publisher.router.twcc.poll(later) == slow.publisher.router.twcc.poll(later)


def now_seq(now: float) -> int:
    """A distinct RTX sequence number per step."""
    return int(now * 1000) & 0xFFFF


@settings(max_examples=80, deadline=None)
@given(events=events, every=st.integers(2, 9))
def test_batched_replay_matches_replay_per_packet(
    each_kernels: Kernels, events: list[tuple[Any, ...]], every: int
) -> None:
    """The data plane replays its log in batches (``Router.replay_records``, the counters
    summed per batch): the receive bookkeeping after each batch is what the slow path's
    replay of each packet's record on its own (``Router.replay``) leaves."""
    single, batched = PathWorld("slow", each_kernels), PathWorld("forwarder", each_kernels)
    seqs = [100, 40000, 65530]
    audio_seq, twcc, pid = 65534, 0, 10
    now = 1.0
    for count, event in enumerate(events, 1):
        now += 0.004
        packet: bytes | None = None
        kind = event[0]
        if kind == "video":
            _, layer, step, key, tid, padding, bad_ext = event
            seqs[layer] = (seqs[layer] + step) & 0xFFFF
            pid += 1
            twcc = (twcc + 1) & 0xFFFF
            payload = b"" if padding else vp8(pid & 0x7FFF, key=key, tid=tid)
            packet = rtp(
                VIDEO_SSRCS[layer],
                seqs[layer],
                pid * 3000,
                VP8_PT,
                payload,
                [(EXT_TWCC, struct.pack("!H", twcc))],
                padding=padding * 50,
            )
            if bad_ext:
                packet = packet[:16] + bytes([(EXT_TWCC << 4) | 0x0F]) + packet[17:]
        elif kind == "audio":
            _, step, level = event
            audio_seq = (audio_seq + step) & 0xFFFF
            packet = rtp(
                AUDIO_SSRC,
                audio_seq,
                audio_seq * 960,
                OPUS_PT,
                b"\x05" * 30,
                [(EXT_LEVEL, bytes([level]))],
            )
        elif kind == "target":
            _, index, layer = event
            for world in (single, batched):
                selector = world.video_subs[index].selector
                assert selector is not None
                selector.set_target(layer, None)
        elif kind == "pause":
            _, index, paused = event
            for world in (single, batched):
                for sub in (world.video_subs[index], world.audio_subs[index]):
                    sub.set_preferences(None, None, paused)
        if packet is not None:
            single.send(packet, now)
            batched.send(packet, now, replay=False)
        if count % every == 0:
            batched.replay()
            assert _bookkeeping(batched, now) == _bookkeeping(single, now)
    batched.replay()
    assert [r.packets for r in batched.received] == [r.packets for r in single.received]
    assert _bookkeeping(batched, now) == _bookkeeping(single, now)
    later = now + 1.0
    assert batched.publisher.router.twcc.poll(later) == single.publisher.router.twcc.poll(later)
