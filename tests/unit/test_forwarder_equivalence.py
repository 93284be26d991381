"""The compiled forwarder and its pure-Python reference give byte-identical egress.

Two worlds are built side by side from the same keys: one with the reference forwarder and
reference per-packet classes (``sfu.core.*``), one with the compiled forwarder and compiled
twins. Hypothesis drives both with the same sequence of SRTP datagrams (simulcast VP8 with
keyframes, temporal layers, reordering, duplicates, padding, corrupt and foreign datagrams;
Opus with audio levels) and control events (layer targets, subscriber preferences, pause,
hold, fan-out changes); after every step the slow-path datagrams, the egress datagrams, the
ingress log and every subscription's state must be equal.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu._fastpath import _srtp_py
from sfu._fastpath._forward_py import Forwarder as RefForwarder
from sfu.core import header_extensions, layers, munger, retransmission, route_state, vp8_munger
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    TRANSPORT_CC_URI,
)
from sfu.packet.seqnum import SequenceUnwrapper as RefUnwrapper
from sfu.transport.negotiation import NegotiatedCodec

NO_EXTENSIONS = os.environ.get("SFU_NO_EXTENSIONS", "") not in ("", "0")

_compiled: dict[str, ModuleType] | None
if NO_EXTENSIONS:
    _compiled = None  # the references only: the compiled kernels must not be used in this run
else:
    try:
        from sfu._fastpath import (
            _cache,
            _extensions,
            _forward,
            _layers,
            _munger,
            _srtp,
            _vp8,
        )
    except ImportError:  # not built; SFU_EXPECT_COMPILED=1 makes the selection test fail
        _compiled = None
    else:
        _compiled = {
            "cache": _cache,
            "extensions": _extensions,
            "forward": _forward,
            "layers": _layers,
            "munger": _munger,
            "srtp": _srtp,
            "vp8": _vp8,
        }

pytestmark = pytest.mark.skipif(_compiled is None, reason="compiled kernels not in use")

PROFILE = "SRTP_AEAD_AES_128_GCM"
PUB_KEY, PUB_SALT = bytes(range(16)), bytes(range(100, 112))
SUB_KEY, SUB_SALT = bytes(range(50, 66)), bytes(range(200, 212))
VIDEO_SSRCS = (0x1111, 0x2222, 0x3333)
AUDIO_SSRC = 0x4444
PUB_ADDR = ("127.0.0.1", 5000)
SUBS = 3
PUB_EXT = {1: MID_URI, 3: TRANSPORT_CC_URI, 4: ABS_SEND_TIME_URI, 5: AUDIO_LEVEL_URI}
SUB_EXT = {2: ABS_SEND_TIME_URI, 6: AUDIO_LEVEL_URI, 9: MID_URI}


@dataclass
class Srtp:
    inbound: Any
    outbound: Any


def _session(srtp: ModuleType, key: bytes, salt: bytes) -> Srtp:
    return Srtp(
        srtp.SrtpContext(PROFILE, key, salt, outbound=False),
        srtp.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=True),
    )


class World:
    """A publisher (VP8 simulcast + Opus) and SUBS subscribers on one forwarder."""

    def __init__(self, compiled: bool) -> None:
        c = _compiled if compiled else None
        srtp = c["srtp"] if c else _srtp_py
        self.forwarder: Any = (
            c["forward"].Forwarder(log_capacity=1 << 16)
            if c
            else RefForwarder(log_capacity=1 << 16)
        )
        self.classes = {
            "selector": c["layers"].SimulcastSelector if c else layers.SimulcastSelector,
            "munger": c["munger"].RtpMunger if c else munger.RtpMunger,
            "vp8": c["vp8"].Vp8Munger if c else vp8_munger.Vp8Munger,
            "ext": c["extensions"].ExtensionRewriter if c else header_extensions.ExtensionRewriter,
            "state": c["forward"].RouteState if c else route_state.RouteState,
            "cache": c["cache"].RetransmissionBuffer if c else retransmission.RetransmissionBuffer,
            "unwrap": c["forward"].SequenceUnwrapper if c else RefUnwrapper,
        }
        self.forwarder.set_transport(0, PUB_ADDR, _session(srtp, PUB_KEY, PUB_SALT), 3, 5)
        for i in range(SUBS):
            sub_srtp = _session(srtp, PUB_KEY, PUB_SALT)
            self.forwarder.set_transport(i + 1, ("127.0.0.1", 6000 + i), sub_srtp)
        vp8 = NegotiatedCodec(96, "VP8", 90000, None, None, ("nack", "nack pli"))
        opus = NegotiatedCodec(111, "opus", 48000, 2, None, ())
        self.video = Publication("v", "p", "video", "cam", "0", vp8, dict(PUB_EXT), ("q", "h", "f"))
        self.audio = Publication("a", "p", "audio", "mic", "1", opus, dict(PUB_EXT))
        self.streams = []
        handle = 0
        for layer, ssrc in enumerate(VIDEO_SSRCS):
            self.streams.append(self._stream(handle, self.video, ssrc, layer, 1))
            handle += 1
        self.streams.append(self._stream(handle, self.audio, AUDIO_SSRC, 0, 0))
        self.subs: list[tuple[Subscription, Subscription]] = []
        self.video_subs = [self._sub(self.video, i, 0x9000 + i) for i in range(SUBS)]
        self.audio_subs = [self._sub(self.audio, i, 0xA000 + i) for i in range(SUBS)]
        self.video_fanout = list(range(SUBS))
        self.audio_fanout = list(range(SUBS))
        self.push_routes()

    def _stream(self, handle: int, pub: Publication, ssrc: int, layer: int, kind: int) -> Any:
        stream = pub.add_stream(ssrc, layer)
        stream.unwrapper = self.classes["unwrap"]()
        stream.cache = self.classes["cache"](256)
        self.forwarder.set_stream(handle, 0, stream, kind)
        return stream

    def _sub(self, pub: Publication, index: int, ssrc: int) -> Subscription:
        sub = Subscription(
            f"s{index}{pub.id}",
            pub,
            f"u{index}",
            "0",
            out_ssrc=ssrc,
            payload_type=pub.codec.payload_type,
            extensions=dict(SUB_EXT),
        )
        k = self.classes
        if pub.video:
            sub.selector = k["selector"](pub.num_layers)
            sub.vp8 = k["vp8"]()
        clock_rate = pub.codec.clock_rate
        pt = pub.codec.payload_type
        sub.munger = k["munger"](
            ssrc, {pt: pt}, clock_rate=clock_rate, initial_seq=1000 + index, initial_ts=5000
        )
        sub.extensions = k["ext"](pub.extensions, SUB_EXT)
        sub.state = k["state"]()
        sub.send_stats.sent = sub.state
        return sub

    def push_routes(self) -> None:
        video = [(self.video_subs[i], i + 1) for i in self.video_fanout]
        audio = [(self.audio_subs[i], i + 1) for i in self.audio_fanout]
        for handle in range(3):
            self.forwarder.set_routes(handle, video)
        self.forwarder.set_routes(3, audio)

    def snapshot(self) -> list[Any]:
        out: list[Any] = []
        for sub in self.video_subs + self.audio_subs:
            state = sub.state
            out.append(
                (
                    state.forwarded,
                    state.packets_sent,
                    state.octets_sent,
                    state.last_rtp_ts,
                    state.last_at,
                    sub.munger.last_out_seq,
                )
            )
            if sub.selector is not None:
                out.append((sub.selector.current, sub.selector.switches))
            if sub.munger.last_out_seq is not None:
                out.append(state.lookup(sub.munger.last_out_seq & 0xFFFF))
        for stream in self.streams:
            out.append((stream.unwrapper.last, stream.cache.stored, stream.cache.newest))
        f = self.forwarder
        out.append((f.fast_packets, f.slow_packets, f.sent_packets, f.sent_bytes))
        return out


def _vp8_payload(
    pid: int, tl0: int, tid: int, sync: bool, key: bool, start: bool, size: int
) -> bytes:
    desc = bytes(
        [
            0x90 if start else 0x80,
            0xE0,
            0x80 | (pid >> 8) & 0x7F,
            pid & 0xFF,
            tl0,
            (tid << 6) | (0x20 if sync else 0),
        ]
    )
    header = bytes([0x00 if key else 0x01])  # VP8 payload header: P bit 0 = keyframe
    return desc + header + bytes((i * 7) & 0xFF for i in range(size))


def _rtp(
    ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes, padding: int = 0
) -> bytes:
    b0 = 0x80 | (0x10 if ext else 0) | (0x20 if padding else 0)
    head = struct.pack("!BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    if ext:
        body = ext + bytes(-len(ext) % 4)
        head += struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return head + payload + pad


events = st.lists(
    st.one_of(
        st.tuples(
            st.just("video"),
            st.integers(0, 2),  # layer
            st.integers(-3, 4),  # sequence step (reorder, duplicate, gap)
            st.booleans(),  # keyframe
            st.booleans(),  # start of frame
            st.integers(0, 2),  # temporal id
            st.booleans(),  # layer sync
            st.integers(40, 1100),  # payload size
            st.integers(0, 3),  # padding only (0 = no)
        ),
        st.tuples(st.just("audio"), st.integers(-1, 3), st.integers(0, 127), st.booleans()),
        st.tuples(st.just("target"), st.integers(0, SUBS - 1), st.integers(-1, 2)),
        st.tuples(
            st.just("prefs"),
            st.integers(0, SUBS - 1),
            st.integers(-1, 2),
            st.integers(-1, 2),
            st.booleans(),
        ),
        st.tuples(st.just("hold"), st.integers(0, SUBS - 1), st.booleans()),
        st.tuples(st.just("fanout"), st.lists(st.integers(0, SUBS - 1), max_size=SUBS)),
        st.tuples(st.just("junk"), st.binary(min_size=0, max_size=40), st.booleans()),
        st.tuples(st.just("tamper"), st.integers(0, 2)),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(events=events)
def test_compiled_forwarder_matches_reference(events: list[tuple[Any, ...]]) -> None:
    ref, comp = World(compiled=False), World(compiled=True)
    # What the publisher's browser would send: one client context encrypts for both.
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    seqs = [100, 40000, 65530]
    pid, tl0, audio_seq, twcc = 300, 7, 65534, 0
    now = 10.0
    for event in events:
        now += 0.003
        datagrams: list[tuple[bytes, tuple[str, int]]] = []
        kind = event[0]
        if kind == "video":
            _, layer, step, key, start, tid, sync, size, padding = event
            seqs[layer] = (seqs[layer] + step) & 0xFFFF
            pid = (pid + (1 if start else 0)) & 0x7FFF
            tl0 = (tl0 + (1 if start and tid == 0 else 0)) & 0xFF
            twcc += 1
            ext = bytes([0x10, ord("0"), 0x31, twcc >> 8 & 0xFF, twcc & 0xFF, 0x42, 1, 2, 3])
            payload = b"" if padding else _vp8_payload(pid, tl0, tid, sync, key, start, size)
            plain = _rtp(
                VIDEO_SSRCS[layer], seqs[layer], int(now * 90000), 96, payload, ext, padding
            )
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
        elif kind == "audio":
            _, step, level, vad = event
            audio_seq = (audio_seq + step) & 0xFFFF
            ext = bytes([0x50, (0x80 if vad else 0) | level])
            plain = _rtp(AUDIO_SSRC, audio_seq, int(now * 48000), 111, bytes(60), ext)
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
        elif kind == "junk":
            _, data, known = event
            datagrams.append((data, PUB_ADDR if known else ("127.0.0.1", 7777)))
        elif kind == "tamper":
            plain = _rtp(VIDEO_SSRCS[event[1]], seqs[event[1]] + 1, 0, 96, bytes(50), b"")
            wire = bytearray(client.protect_rtp(plain))
            wire[-1] ^= 1
            datagrams.append((bytes(wire), PUB_ADDR))
        for world in (ref, comp):
            if kind == "target":
                _, index, layer = event
                world.video_subs[index].selector.set_target(None if layer < 0 else layer, None)
            elif kind == "prefs":
                _, index, top, temporal, paused = event
                for sub in (world.video_subs[index], world.audio_subs[index]):
                    sub.set_preferences(
                        None if top < 0 else top, None if temporal < 0 else temporal, paused
                    )
            elif kind == "hold":
                world.video_subs[event[1]].set_held(event[2])
                world.audio_subs[event[1]].set_held(event[2])
            elif kind == "fanout":
                world.video_fanout = sorted(set(event[1]))
                world.audio_fanout = sorted(set(event[1]))
                world.push_routes()
        if not datagrams:
            continue
        ref_slow, ref_egress = ref.forwarder.process(datagrams, now)
        comp_slow, comp_egress = comp.forwarder.process(datagrams, now)
        assert comp_slow == ref_slow
        assert comp_egress == ref_egress
        assert comp.forwarder.drain_log() == ref.forwarder.drain_log()
        assert comp.snapshot() == ref.snapshot()


def test_every_kind_of_datagram_is_exercised() -> None:
    """A fixed run: media is forwarded (fast), the rest goes up (slow), and both agree."""
    ref, comp = World(compiled=False), World(compiled=True)
    client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
    datagrams = []
    for i in range(30):
        for ssrc in VIDEO_SSRCS:
            payload = _vp8_payload(10 + i, i, i % 2, True, i == 0, True, 900)
            plain = _rtp(ssrc, 100 + i, 3000 * i, 96, payload, bytes([0x10, ord("0")]))
            datagrams.append((client.protect_rtp(plain), PUB_ADDR))
    datagrams.append((b"\x00\x01\x00\x00" + bytes(16), PUB_ADDR))  # STUN
    datagrams.append((bytes([0x80, 200]) + bytes(30), PUB_ADDR))  # RTCP
    for world in (ref, comp):
        for sub in world.video_subs:
            sub.selector.set_target(2, None)
    ref_slow, ref_egress = ref.forwarder.process(datagrams, 1.0)
    comp_slow, comp_egress = comp.forwarder.process(datagrams, 1.0)
    assert len(ref_slow) == 2 and comp_slow == ref_slow
    # The first keyframes climb 0 -> 1 -> 2 (one packet each), then layer 2 to everyone.
    assert len(ref_egress) == (2 + 30) * SUBS and comp_egress == ref_egress
    assert comp.forwarder.fast_packets == ref.forwarder.fast_packets == 90
    assert comp.snapshot() == ref.snapshot()
