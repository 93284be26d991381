"""One publisher and its subscribers behind each ingest path, for behaviour and differential tests.

A path is how a publisher's RTP reaches the subscribers:

* ``slow``: the Python slow path alone (``Peer.on_rtp`` → Router → shared ingest → replay);
* ``forwarder``: the kernels' forwarder (the reference ``_forward_py`` or the compiled
  ``_forward``) through the real DataPlane, its records replayed into the same Router, and
  what it hands back taken by the slow path.

Each is built with one kernel bundle (reference or compiled), so four paths in all.

Every path is built from the production parts (Peer, DataPlane, Publication, Subscription);
only the transports are stand-ins that hold SRTP sessions and record what the slow path sends.
Tests feed plain RTP; forwarder paths encrypt it as a browser would and decrypt egress again,
so every path reports what each subscriber received as plain RTP.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, cast

from sfu import _fastpath
from sfu._fastpath import SrtpError, _srtp_py
from sfu.core.dataplane import DataPlane
from sfu.core.kernels import Kernels
from sfu.core.peer import Peer
from sfu.core.publication import Publication
from sfu.core.subscription import Subscription
from sfu.negotiation import NegotiatedCodec
from sfu.packet.extensions import (
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
)
from sfu.transport.transport import WebRtcTransport

PROFILE = "SRTP_AEAD_AES_128_GCM"
PUB_KEY, PUB_SALT = bytes(range(16)), bytes(range(100, 112))
SUB_KEY, SUB_SALT = bytes(range(50, 66)), bytes(range(200, 212))
PUB_ADDR = ("127.0.0.1", 5000)
VIDEO_SSRCS = (0x1111, 0x2222, 0x3333)
RTX_SSRCS = (0x5111, 0x5222, 0x5333)
AUDIO_SSRC = 0x4444
VP8_PT, RTX_PT, OPUS_PT = 96, 97, 111
RIDS = ("q", "h", "f")
#: BUNDLE-wide extension ids the publisher negotiated.
EXT_MID, EXT_RID, EXT_RRID, EXT_TWCC, EXT_LEVEL = 1, 2, 3, 4, 5
PUB_EXT = {
    EXT_MID: MID_URI,
    EXT_RID: RID_URI,
    EXT_RRID: REPAIRED_RID_URI,
    EXT_TWCC: TRANSPORT_CC_URI,
    EXT_LEVEL: AUDIO_LEVEL_URI,
}
SUB_EXT = {9: MID_URI, 6: AUDIO_LEVEL_URI}


PATHS = ("slow", "forwarder")


class _Session:
    def __init__(self, key: bytes, salt: bytes) -> None:
        self.inbound = _fastpath.SrtpContext(PROFILE, key, salt, outbound=False)
        self.outbound = _fastpath.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=True)


class _Ice:
    def __init__(self, address: tuple[str, int]) -> None:
        self.selected_address = address


class FakeTransport:
    """What Peer and DataPlane use of a connected WebRtcTransport: SRTP, an address, sends."""

    def __init__(self, address: tuple[str, int], key: bytes, salt: bytes) -> None:
        self.srtp = _Session(key, salt)
        self.ice = _Ice(address)
        self.finished = False
        self.has_srtp = True
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.rtp.append(bytes(packet))
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp.append(bytes(packet))
        return True


def ext_block(elements: list[tuple[int, bytes]]) -> bytes:
    """An RFC 8285 one-byte header-extension block (profile 0xBEDE) with its header."""
    body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


def rtp(
    ssrc: int,
    seq: int,
    ts: int,
    pt: int,
    payload: bytes,
    ext: list[tuple[int, bytes]] | None = None,
    *,
    padding: int = 0,
    marker: bool = False,
) -> bytes:
    """A plain RTP packet (RFC 3550 §5.1) with optional extensions and padding."""
    b0 = 0x80 | (0x10 if ext else 0) | (0x20 if padding else 0)
    head = struct.pack(
        "!BBHII", b0, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc
    )
    if ext:
        head += ext_block(ext)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return head + payload + pad


def vp8(pid: int, *, key: bool, start: bool = True, tid: int = 0, size: int = 60) -> bytes:
    """A VP8 payload: descriptor with a 15-bit picture id, TL0PICIDX and TID (RFC 7741)."""
    desc = bytes([0x90 if start else 0x80, 0xE0, 0x80 | (pid >> 8) & 0x7F, pid & 0xFF, 0, tid << 6])
    return desc + bytes([0x00 if key else 0x01]) + bytes((i * 7) & 0xFF for i in range(size))


@dataclass
class Received:
    """What one subscriber got: plain RTP packets in order."""

    packets: list[bytes] = field(default_factory=list)

    def seqs(self) -> list[int]:
        return [struct.unpack_from("!H", p, 2)[0] for p in self.packets]


class PathWorld:
    """A VP8 simulcast + Opus publisher and ``subs`` subscribers of both, behind one path."""

    def __init__(self, path: str, kernels: Kernels, subs: int = 2, *, declare: bool = True) -> None:
        self.path = path
        self.dataplane: DataPlane | None = None
        if path == "forwarder":
            self.dataplane = DataPlane(kernels=kernels)
        elif path != "slow":
            raise ValueError(path)
        self.client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
        self.pub_transport = FakeTransport(PUB_ADDR, PUB_KEY, PUB_SALT)
        self.levels: list[tuple[int, bool | None, float]] = []
        self.publisher = Peer(
            "pub",
            cast(WebRtcTransport, self.pub_transport),
            0x77,
            extensions=dict(PUB_EXT),
            on_audio_level=lambda _, level, vad, now: self.levels.append((level, vad, now)),
            dataplane=self.dataplane,
        )
        vp8_codec = NegotiatedCodec(VP8_PT, "VP8", 90000, None, RTX_PT, ("nack", "nack pli"))
        opus = NegotiatedCodec(OPUS_PT, "opus", 48000, 2, None, ())
        self.video = Publication(
            "v", "pub", "video", "cam", "0", vp8_codec, dict(PUB_EXT), RIDS, kernels=kernels
        )
        self.audio = Publication(
            "a", "pub", "audio", "mic", "1", opus, dict(PUB_EXT), kernels=kernels
        )
        declared: list[tuple[int, int | None]] = (
            list(zip(VIDEO_SSRCS, RTX_SSRCS, strict=True)) if declare else []
        )
        self.publisher.add_publication(self.video, declared)
        self.publisher.add_publication(self.audio, [(AUDIO_SSRC, None)])
        self.transports: list[FakeTransport] = []
        self.clients: list[Any] = []
        self.subscribers: list[Peer] = []
        self.video_subs: list[Subscription] = []
        self.audio_subs: list[Subscription] = []
        for i in range(subs):
            transport = FakeTransport(("127.0.0.1", 6000 + i), SUB_KEY, SUB_SALT)
            peer = Peer(
                f"sub{i}",
                cast(WebRtcTransport, transport),
                0x88 + i,
                extensions=dict(SUB_EXT),
                dataplane=self.dataplane,
            )
            self.transports.append(transport)
            self.clients.append(_srtp_py.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=False))
            self.subscribers.append(peer)
            for pub, subs_list, base in (
                (self.video, self.video_subs, 0x9000),
                (self.audio, self.audio_subs, 0xA000),
            ):
                sub = Subscription(
                    f"s{i}{pub.id}",
                    pub,
                    f"sub{i}",
                    pub.mid,
                    out_ssrc=base + i,
                    payload_type=pub.codec.payload_type,
                    extensions=dict(SUB_EXT),
                    kernels=kernels,
                )
                peer.add_subscription(sub)
                pub.add_subscriber(sub, cast(WebRtcTransport, transport))
                subs_list.append(sub)
        self.received = [Received() for _ in range(subs)]

    @property
    def counters(self) -> Any:
        return self.publisher.counters

    def send(self, packet: bytes, now: float, *, replay: bool = True) -> None:
        """The publisher sends one RTP packet (SRTP-protected on the way) at ``now``.
        ``replay=False``: the forwarder's records wait for :meth:`replay` (as they wait for
        the server's replay timer), except when the slow path takes the packet: then they
        are replayed first, so the receive state sees every packet in arrival order."""
        wire = self.client.protect_rtp(packet)
        if self.dataplane is None:
            self._slow(wire, now)
        else:
            slow, egress = self.dataplane.forwarder.process([(wire, PUB_ADDR)], now)
            self.dataplane.relay(now)  # as the server does after each batch
            if replay or slow:
                self.dataplane.replay()
            for data, _ in slow:
                self._slow(data, now)
            for data, address in egress:
                index = address[1] - 6000
                self.received[index].packets.append(self.clients[index].unprotect_rtp(data))
        for index, transport in enumerate(self.transports):
            self.received[index].packets.extend(transport.rtp)
            transport.rtp.clear()

    def replay(self) -> None:
        """Replay the forwarder's records now (forwarder paths)."""
        if self.dataplane is not None:
            self.dataplane.replay()

    def _slow(self, wire: bytes, now: float) -> None:
        """What the transport does with SRTP the forwarder did not take: unprotect (replays
        and forgeries end there), then the peer's slow path."""
        try:
            plain = self.pub_transport.srtp.inbound.unprotect_rtp(wire)
        except SrtpError:
            return
        self.publisher.on_rtp(cast(WebRtcTransport, self.pub_transport), plain, now)

    def video_seqs(self, index: int) -> list[int]:
        """Outgoing sequence numbers of the video packets subscriber ``index`` received."""
        return [
            struct.unpack_from("!H", p, 2)[0]
            for p in self.received[index].packets
            if struct.unpack_from("!I", p, 8)[0] == 0x9000 + index
        ]
