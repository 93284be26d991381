"""Socket-free room fixtures: a room service on a media port that records what it sends,
Chromium offers from the captured fixtures, and RTP packets built like Chromium's."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from fixture_files import FIXTURES
from kernel_selection import selected_kernels

from sfu.app import connect_data_plane
from sfu.codecs.vp8 import Vp8Descriptor
from sfu.core.dataplane import DataPlane
from sfu.packet.extensions import (
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TRANSPORT_CC_URI,
    build_audio_level,
    build_sdes_item,
    build_transport_cc_seq,
)
from sfu.packet.rtp import RtpPacket, build_extension_block
from sfu.room.audit import AuditLog
from sfu.room.identity import Grant, JoinClaims
from sfu.room.policy import PasswordHash, PolicyStore, RoomDefaults, RoomPolicy
from sfu.room.room import Participant
from sfu.room.service import Admission, RoomService
from sfu.transport.certificate import Certificate
from sfu.transport.port import MediaPort
from sfu.transport.transport import WebRtcTransport

# Extension ids as Chromium's offers assign them (tests/fixtures/sdp/chromium_*_offer.sdp).
CHROMIUM_IDS = {
    AUDIO_LEVEL_URI: 1,
    TRANSPORT_CC_URI: 3,
    MID_URI: 4,
    RID_URI: 10,
    REPAIRED_RID_URI: 11,
}
VP8_PT = 96
VP8_RTX_PT = 97
OPUS_PT = 111


@functools.cache
def certificate() -> Certificate:
    return Certificate.generate()


def simulcast_offer() -> str:
    """Chromium publishing audio (sendrecv) and 3-layer simulcast VP8 (q, h, f)."""
    return (FIXTURES / "sdp" / "chromium_simulcast_offer.sdp").read_text()


def recvonly_offer(ufrag: str = "sub1") -> str:
    """A Chromium audio+video offer turned into a pure receiver (mids 0 and 1)."""
    text = (FIXTURES / "sdp" / "chromium_av_offer.sdp").read_text()
    lines = []
    for line in text.splitlines():
        if line.startswith(("a=ssrc", "a=msid:")):
            continue
        if line in ("a=sendrecv", "a=sendonly"):
            line = "a=recvonly"
        if line.startswith("a=ice-ufrag:"):
            line = f"a=ice-ufrag:{ufrag}"
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def answer_ssrcs(answer: str) -> dict[str, list[int]]:
    """mid -> the SSRCs an answer declares in that section."""
    out: dict[str, list[int]] = {}
    mid = ""
    for line in answer.splitlines():
        if line.startswith("a=mid:"):
            mid = line[6:]
        match = re.match(r"a=ssrc:(\d+) cname:", line)
        if match:
            out.setdefault(mid, []).append(int(match.group(1)))
    return out


def claims(room: str, identity: str, grants: Grant = Grant.PUBLISH | Grant.SUBSCRIBE) -> JoinClaims:
    now = int(time.time())
    return JoinClaims(
        room=room, identity=identity, name=identity.title(), grants=grants, exp=now + 600, iat=now
    )


@dataclass
class Harness:
    """A room service whose transports record RTP/RTCP instead of encrypting and sending."""

    service: RoomService
    inbox: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    sent_rtp: dict[str, list[bytes]] = field(default_factory=dict)
    sent_rtcp: dict[str, list[bytes]] = field(default_factory=dict)
    #: transport id -> (rtp, rtcp) lists of captured transports.
    captured: dict[str, tuple[list[bytes], list[bytes]]] = field(default_factory=dict)

    def join(
        self,
        room: str,
        identity: str,
        grants: Grant = Grant.PUBLISH | Grant.SUBSCRIBE,
        *,
        now: float = 0.0,
        password: PasswordHash | None = None,
        kind: str = "websocket",
    ) -> Participant:
        box: list[dict[str, Any]] = []
        self.inbox[identity] = box
        return self.service.join(
            claims(room, identity, grants), box.append, kind=kind, now=now, password=password
        )

    def capture(self, identity: str, participant: Participant) -> WebRtcTransport:
        """Record what the participant's transport would send (it has no SRTP here)."""
        assert participant.peer is not None
        transport = participant.peer.transport
        rtp: list[bytes] = self.sent_rtp.setdefault(identity, [])
        rtcp: list[bytes] = self.sent_rtcp.setdefault(identity, [])

        self.captured[transport.id] = (rtp, rtcp)
        return transport

    def messages(self, identity: str, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.inbox[identity] if m["type"] == kind]


#: Rooms without a waiting room, for tests of everything else.
OPEN_ROOMS = RoomDefaults(RoomPolicy(waiting_room=False))


def harness(
    monkeypatch: pytest.MonkeyPatch,
    admission: Admission | None = None,
    *,
    defaults: RoomDefaults = OPEN_ROOMS,
    audit: AuditLog | None = None,
) -> Harness:
    """A harness; transports it captures record what they would send (they have no SRTP).
    Rooms have no waiting room unless ``defaults`` say otherwise."""
    port = MediaPort(certificate(), lambda data, addr: None)
    dataplane = DataPlane(kernels=selected_kernels())
    connect_data_plane(port, dataplane)  # as the server wires them
    service = RoomService(
        port,
        [("127.0.0.1", 40000)],
        admission=admission,
        policies=PolicyStore(defaults),
        audit=audit,
        dataplane=dataplane,
        kernels=dataplane.kernels,
    )
    h = Harness(service)
    original_rtp = WebRtcTransport.send_rtp
    original_rtcp = WebRtcTransport.send_rtcp

    def send_rtp(self: WebRtcTransport, packet: bytes) -> bool:
        lists = h.captured.get(self.id)
        if lists is None:
            return original_rtp(self, packet)
        lists[0].append(packet)
        return True

    def send_rtcp(self: WebRtcTransport, packet: bytes) -> bool:
        lists = h.captured.get(self.id)
        if lists is None:
            return original_rtcp(self, packet)
        lists[1].append(packet)
        return True

    # WebRtcTransport has __slots__, so the methods are replaced on the class (undone by
    # monkeypatch); uncaptured transports keep the real behaviour.
    original_has_srtp = WebRtcTransport.has_srtp

    def has_srtp(self: WebRtcTransport) -> bool:
        return self.id in h.captured or bool(original_has_srtp.fget(self))  # type: ignore[attr-defined]

    monkeypatch.setattr(WebRtcTransport, "has_srtp", property(has_srtp))
    monkeypatch.setattr(WebRtcTransport, "send_rtp", send_rtp)
    monkeypatch.setattr(WebRtcTransport, "send_rtcp", send_rtcp)
    return h


def vp8_packet(
    ssrc: int,
    seq: int,
    timestamp: int,
    *,
    keyframe: bool,
    start: bool = True,
    picture_id: int = 0,
    tid: int | None = None,
    rid: str | None = None,
    mid: str | None = "1",
    twcc: int | None = None,
    payload: bytes = b"\x00" * 40,
    pt: int = VP8_PT,
) -> bytes:
    """A VP8 packet as Chromium sends it: descriptor with picture id (and TID), mid/rid."""
    desc = Vp8Descriptor(
        extended=True,
        start_of_partition=start,
        picture_id=picture_id & 0x7FFF,
        picture_id_15bit=True,
        tl0picidx=0 if tid is not None else None,
        temporal_id=tid,
        layer_sync=tid is not None and tid > 0,
    )
    # VP8 payload header (RFC 7741 §4.3): P bit (bit 0) is 0 for a keyframe.
    header = bytes([0x00 if keyframe else 0x01]) + payload[1:]
    elements: list[tuple[int, bytes]] = []
    if mid is not None:
        elements.append((CHROMIUM_IDS[MID_URI], build_sdes_item(mid)))
    if rid is not None:
        elements.append((CHROMIUM_IDS[RID_URI], build_sdes_item(rid)))
    if twcc is not None:
        elements.append((CHROMIUM_IDS[TRANSPORT_CC_URI], build_transport_cc_seq(twcc)))
    profile, body = build_extension_block(elements) if elements else (None, b"")
    return RtpPacket(
        payload_type=pt,
        sequence_number=seq & 0xFFFF,
        timestamp=timestamp & 0xFFFFFFFF,
        ssrc=ssrc,
        extension_profile=profile,
        extension_data=body,
        payload=desc.serialize() + header,
    ).serialize()


def opus_packet(ssrc: int, seq: int, timestamp: int, *, level: int = 30, mid: str = "0") -> bytes:
    """An Opus packet with mid and the RFC 6464 audio level (voice activity set)."""
    elements = [
        (CHROMIUM_IDS[MID_URI], build_sdes_item(mid)),
        (CHROMIUM_IDS[AUDIO_LEVEL_URI], build_audio_level(True, level)),
    ]
    profile, body = build_extension_block(elements)
    return RtpPacket(
        payload_type=OPUS_PT,
        sequence_number=seq & 0xFFFF,
        timestamp=timestamp & 0xFFFFFFFF,
        ssrc=ssrc,
        extension_profile=profile,
        extension_data=body,
        payload=b"\xfc" + b"\x01" * 30,
    ).serialize()
