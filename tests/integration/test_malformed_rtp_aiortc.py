"""Malformed RTP inside a real DTLS-SRTP session is refused, counted by reason, forwarded to
nobody, and disturbs no other session.

An aiortc publisher (WHIP) and viewer (WHEP) meet in a room while an aiortc echo session runs
beside them. A packet hook on the publisher's DTLS transport replaces some of its outgoing
audio and video packets, before SRTP, with the mutations of ``tests/unit/rtp_mutations.py``
(same SSRC, sequence number and timestamp). A tap on the viewer's SRTP session sees every RTP
packet the server forwarded to it, decrypted. Two mutations (a CSRC list or an extension
block that overruns the packet) cannot travel inside SRTP at all (libsrtp refuses to protect
them, and the server's unprotect refuses them as ``srtp_malformed``); the unit tests feed
those to ingest directly.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from typing import Any

import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack
from clients import TIMEOUT, aiortc_echo, frames, running_server
from rtp_mutations import COMMON, VP8_ONLY, Mutation, reason
from test_whip_whep_aiortc import (
    ROOM,
    new_pc,
    publisher_offer,
    request,
    sdp_headers,
    token,
    wait_connected,
    wait_for,
)

from sfu.packet.rtp import RTP_DEFECT_NONE, payload_offset, rtp_defect
from sfu.room.identity import Grant

pytestmark = pytest.mark.integration

#: Mutations that SRTP can carry (libsrtp protects them).
CARRIED = ("csrc_overrun", "block_overrun")
AUDIO_MUTATIONS = {k: v for k, v in COMMON.items() if k not in CARRIED}
VIDEO_MUTATIONS = {**AUDIO_MUTATIONS, **VP8_ONLY}


class _Hook:
    """Replaces the next outgoing packets of one payload type with mutations of them."""

    def __init__(self, transport: Any) -> None:
        self.send = transport._send_rtp
        self.queue: dict[int, list[tuple[str, tuple[Mutation, int]]]] = {}
        self.sent: list[tuple[int, str]] = []
        transport._send_rtp = self

    async def __call__(self, data: bytes) -> None:
        pt = data[1] & 0x7F
        pending = self.queue.get(pt)
        if pending and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            name, (mutate, _) = pending.pop(0)
            ssrc = struct.unpack_from("!I", data, 8)[0]
            seq, ts = struct.unpack_from("!HI", data, 2)
            body = data[payload_offset(data) :]
            data = mutate(ssrc, seq, ts, pt, body, b"")
            self.sent.append((pt, name))
        await self.send(data)


class _Tap:
    """Records every RTP packet a viewer's SRTP session decrypts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.rtp: list[bytes] = []

    def unprotect(self, data: bytes) -> bytes:
        plain: bytes = self.inner.unprotect(data)
        self.rtp.append(plain)
        return plain

    def unprotect_rtcp(self, data: bytes) -> bytes:
        out: bytes = self.inner.unprotect_rtcp(data)
        return out


def _payload_types(sdp: str, kind: str) -> set[int]:
    section = sdp.split(f"m={kind} ")[1].split("\r\nm=")[0]
    return {int(p) for p in section.split("\r\n")[0].split()[2:]}


def test_malformed_rtp_in_srtp_is_refused_counted_and_contained() -> None:
    async def scenario() -> None:
        async with (
            running_server() as (server, base),
            aiortc_echo(base) as (_, echo_tracks, _, _),
        ):
            assert server.rooms is not None
            publisher, viewer = new_pc(), new_pc()
            try:
                offer = await publisher_offer(publisher)
                status, answer, _ = await request(
                    "POST",
                    f"{base}/whip/{ROOM}",
                    body=offer,
                    headers=sdp_headers(token(server, "caster")),
                )
                assert status == 201, answer
                await publisher.setRemoteDescription(RTCSessionDescription(answer, "answer"))
                await wait_connected(publisher)
                received: dict[str, MediaStreamTrack] = {}
                viewer.on("track", lambda track: received.setdefault(track.kind, track))
                viewer.addTransceiver("audio", direction="recvonly")
                viewer.addTransceiver("video", direction="recvonly")
                await viewer.setLocalDescription(await viewer.createOffer())
                status, view_answer, _ = await request(
                    "POST",
                    f"{base}/whep/{ROOM}/caster",
                    body=viewer.localDescription.sdp,
                    headers=sdp_headers(token(server, "viewer", grants=Grant.SUBSCRIBE)),
                )
                assert status == 201, view_answer
                await viewer.setRemoteDescription(RTCSessionDescription(view_answer, "answer"))
                await wait_connected(viewer)
                assert await asyncio.wait_for(frames(received["video"], 5), TIMEOUT) == 5
                assert await asyncio.wait_for(frames(received["audio"], 5), TIMEOUT) == 5
                tap = _Tap(viewer.getReceivers()[0].transport._rx_srtp)
                viewer.getReceivers()[0].transport._rx_srtp = tap

                caster = next(iter(server.rooms.rooms[ROOM].participants.values()))
                assert caster.identity == "caster" and caster.peer is not None
                counters = caster.peer.counters
                before = list(counters.rtp_refused)
                hook = _Hook(publisher.getSenders()[0].transport)
                audio_pt = min(_payload_types(answer, "audio"))
                video_pt = min(_payload_types(answer, "video"))
                hook.queue[audio_pt] = list(AUDIO_MUTATIONS.items())
                hook.queue[video_pt] = list(VIDEO_MUTATIONS.items())
                await wait_for(lambda: not any(hook.queue.values()))
                expected = Counter(
                    reason(table[name][1])
                    for pt, name in hook.sent
                    for table in (AUDIO_MUTATIONS if pt == audio_pt else VIDEO_MUTATIONS,)
                )
                assert sum(expected.values()) == len(AUDIO_MUTATIONS) + len(VIDEO_MUTATIONS)

                def refused() -> Counter[str]:
                    return Counter(
                        {
                            reason(code): n - before[code]
                            for code, n in enumerate(counters.rtp_refused)
                            if code and n - before[code]
                        }
                    )

                await wait_for(lambda: refused() == expected)
                # Media goes on, for this viewer and for the echo session beside it.
                assert await asyncio.wait_for(frames(received["video"], 10), TIMEOUT) == 10
                assert await asyncio.wait_for(frames(received["audio"], 10), TIMEOUT) == 10
                assert await asyncio.wait_for(frames(echo_tracks["video"], 10), TIMEOUT) == 10
                # Nothing malformed reached the viewer: every packet parses cleanly and
                # carries a payload type its answer negotiated.
                allowed = _payload_types(view_answer, "audio") | _payload_types(
                    view_answer, "video"
                )
                assert tap.rtp
                for packet in tap.rtp:
                    assert rtp_defect(packet) == RTP_DEFECT_NONE, packet[:40].hex()
                    assert packet[1] & 0x7F in allowed
                assert refused() == expected  # and nothing else was refused
            finally:
                await publisher.close()
                await viewer.close()

    asyncio.run(asyncio.wait_for(scenario(), 120))
