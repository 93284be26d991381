"""Forwarding worlds built from the same keys, one per kernel bundle, for tests and bench.

A publisher (VP8 simulcast with three layers, and Opus) on transport 0 and ``subs``
subscribers on transports 1..subs, each with its own SRTP contexts; the forwarder, the
publications and the subscriptions are built from the world's bundle, as the room service
builds them. SRTP is not part of a bundle: a compiled world uses the compiled contexts (the
compiled forwarder accepts no other), a reference world the reference ones.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from sfu._fastpath import _srtp_py
from sfu.core.kernels import Kernels
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec
from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    TRANSPORT_CC_URI,
)

PROFILE = "SRTP_AEAD_AES_128_GCM"
PUB_KEY, PUB_SALT = bytes(range(16)), bytes(range(100, 112))
SUB_KEY, SUB_SALT = bytes(range(50, 66)), bytes(range(200, 212))
VIDEO_SSRCS = (0x1111, 0x2222, 0x3333)
AUDIO_SSRC = 0x4444
PUB_ADDR = ("127.0.0.1", 5000)
SUBS = 3  # default subscriber count
PUB_EXT = {1: MID_URI, 3: TRANSPORT_CC_URI, 4: ABS_SEND_TIME_URI, 5: AUDIO_LEVEL_URI}
SUB_EXT = {2: ABS_SEND_TIME_URI, 6: AUDIO_LEVEL_URI, 9: MID_URI}
#: Subscribers that negotiated transport-wide CC (all but the last): their egress is stamped.
SUB_TWCC_ID = 10


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

    def __init__(
        self,
        kernels: Kernels,
        subs: int = SUBS,
        stamped: int | None = None,
        *,
        source: bool = False,
    ) -> None:
        """``stamped``: how many subscribers (the first ones) negotiated transport-wide CC and
        get their egress stamped (default: all but the last). ``source``: the publisher is a
        plaintext source (a relay pipe's far end, fed through ``ingest``), not a transport."""
        self.kernels = kernels
        self.subs_count = subs
        self.stamped = subs - 1 if stamped is None else stamped
        srtp = (
            _srtp_py if kernels.name == "python" else importlib.import_module("sfu._fastpath._srtp")
        )
        self.srtp = srtp
        self.forwarder: Any = kernels.Forwarder(log_capacity=1 << 16)
        if source:
            self.forwarder.set_source(0, 5)
        else:
            self.forwarder.set_transport(0, PUB_ADDR, _session(srtp, PUB_KEY, PUB_SALT), 3, 5)
        for i in range(subs):
            sub_srtp = _session(srtp, PUB_KEY, PUB_SALT)
            self.forwarder.set_transport(i + 1, ("127.0.0.1", 6000 + i), sub_srtp)
        vp8 = NegotiatedCodec(96, "VP8", 90000, None, None, ("nack", "nack pli"))
        opus = NegotiatedCodec(111, "opus", 48000, 2, None, ())
        self.video = Publication(
            "v", "p", "video", "cam", "0", vp8, dict(PUB_EXT), ("q", "h", "f"), kernels=kernels
        )
        self.audio = Publication(
            "a", "p", "audio", "mic", "1", opus, dict(PUB_EXT), kernels=kernels
        )
        self.streams = []
        handle = 0
        for layer, ssrc in enumerate(VIDEO_SSRCS):
            self.streams.append(self._stream(handle, self.video, ssrc, layer, 1))
            handle += 1
        self.streams.append(self._stream(handle, self.audio, AUDIO_SSRC, 0, 0))
        # One send history per subscriber transport, shared by its audio and video.
        self.histories = [kernels.SendHistory(64) for _ in range(subs)]
        self.video_subs = [self._sub(self.video, i, 0x9000 + i) for i in range(subs)]
        self.audio_subs = [self._sub(self.audio, i, 0xA000 + i) for i in range(subs)]
        self.video_fanout = list(range(subs))
        self.audio_fanout = list(range(subs))
        self.push_routes()

    def _stream(self, handle: int, pub: Publication, ssrc: int, layer: int, kind: int) -> Any:
        stream = pub.add_stream(ssrc, layer)
        self.forwarder.set_stream(handle, 0, stream, kind)
        return stream

    def _sub(self, pub: Publication, index: int, ssrc: int) -> Subscription:
        # Fixed first outgoing values (not those of the first packet): offsets from the start.
        extensions = dict(SUB_EXT)
        if index < self.stamped:
            extensions[SUB_TWCC_ID] = TRANSPORT_CC_URI
        sub = Subscription(
            f"s{index}{pub.id}",
            pub,
            f"u{index}",
            "0",
            out_ssrc=ssrc,
            payload_type=pub.codec.payload_type,
            extensions=extensions,
            initial_seq=1000 + index,
            initial_ts=5000,
            kernels=self.kernels,
        )
        if index < self.stamped:
            sub.send_history = self.histories[index]
        return sub

    def set_keyed(self, index: int, keyed: bool) -> None:
        """Subscriber ``index``'s transport loses (a new handshake runs) or gets SRTP keys:
        unregistered, or registered again with a fresh session, as the data plane does."""
        handle = index + 1
        if keyed:
            session = _session(self.srtp, PUB_KEY, PUB_SALT)
            self.forwarder.set_transport(handle, ("127.0.0.1", 6000 + index), session)
        else:
            self.forwarder.remove_transport(handle)

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
        for history in self.histories:
            out.append((history.packets, history.bytes, history.next_seq))
            out.append([history.lookup(seq) for seq in range(history.next_seq - 3, 70)])
        f = self.forwarder
        out.append((f.fast_packets, f.slow_packets, f.sent_packets, f.sent_bytes))
        return out


def vp8_payload(
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


def rtp(
    ssrc: int, seq: int, ts: int, pt: int, payload: bytes, ext: bytes, padding: int = 0
) -> bytes:
    b0 = 0x80 | (0x10 if ext else 0) | (0x20 if padding else 0)
    head = struct.pack("!BBHII", b0, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    if ext:
        body = ext + bytes(-len(ext) % 4)
        head += struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return head + payload + pad
