"""Every RTP packet the data plane refuses is counted by reason and reaches no subscriber.

Each mutation of ``rtp_mutations`` goes through every ingest path (the slow path, the
reference and the compiled forwarder with their replay) between two good packets: the
subscribers get exactly the good ones, with no hole in their outgoing sequence where the
refused packet did not reach the munger, and the publisher's ``rtp_refused`` counts it under
its reason; the parse's defect codes agree between the compiled and the reference parse.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ingest_paths import AUDIO_SSRC, EXT_MID, OPUS_PT, PATHS, VIDEO_SSRCS, VP8_PT, PathWorld
from ingest_paths import rtp as good_rtp
from ingest_paths import vp8 as vp8_payload
from rtp_mutations import COMMON, VIDEO, reason

from sfu._fastpath import SrtpError
from sfu._fastpath.values import REFUSAL_REASONS
from sfu.core.kernels import Kernels
from sfu.packet import rtp as reference_rtp
from sfu.packet.rtp import RTP_DEFECT_NONE, rtp_defect

MID = bytes([(EXT_MID << 4) | 0]) + b"0"


def _refused(world: PathWorld) -> dict[str, int]:
    return {
        REFUSAL_REASONS[code]: n for code, n in enumerate(world.counters.rtp_refused) if code and n
    }


def _send_plain_or_srtp(world: PathWorld, packet: bytes, now: float) -> bool:
    """Send through SRTP when it can be protected (libsrtp refuses to protect a header that
    overruns the packet), else hand the plain packet to the slow path as a transport would
    after unprotecting it. Returns whether it went through SRTP."""
    try:
        world.send(packet, now)
        return True
    except SrtpError:
        world.publisher.on_rtp(world.pub_transport, packet, now)  # type: ignore[arg-type]
        return False


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(VIDEO))
def test_video_mutation_is_refused_and_counted(path: str, name: str, each_kernels: Kernels) -> None:
    mutate, code = VIDEO[name]
    world = PathWorld(path, each_kernels)
    for sub in world.video_subs:
        assert sub.selector is not None
        sub.selector.set_target(0, None)
    ssrc = VIDEO_SSRCS[0]
    ext = [(EXT_MID, b"0")]
    world.send(good_rtp(ssrc, 100, 9000, VP8_PT, vp8_payload(1, key=True), ext), 1.0)
    bad = mutate(ssrc, 101, 9000, VP8_PT, vp8_payload(1, key=True, start=False), MID)
    _send_plain_or_srtp(world, bad, 1.001)
    world.send(good_rtp(ssrc, 102, 12000, VP8_PT, vp8_payload(2, key=False), ext), 1.033)
    assert _refused(world) == {reason(code): 1}
    for index in range(2):
        got = world.received[index].packets
        assert len(got) == 2, (name, index)
        assert all(len(p) > 20 and p[1] & 0x7F == VP8_PT for p in got)
    # A refusal with a sound header (no payload, another payload type, a bad descriptor)
    # leaves no hole in the subscribers' sequence; a malformed header never reaches it.
    sound = code >= len(reference_rtp.RTP_DEFECTS) or name == "bare_header"
    for index in range(2):
        seqs = world.video_seqs(index)
        assert (seqs[1] - seqs[0]) & 0xFFFF == (1 if sound else 2), (name, seqs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(COMMON))
def test_audio_mutation_is_refused_and_counted(path: str, name: str, each_kernels: Kernels) -> None:
    mutate, code = COMMON[name]
    world = PathWorld(path, each_kernels)
    world.send(good_rtp(AUDIO_SSRC, 7, 960, OPUS_PT, bytes(40), [(EXT_MID, b"1")]), 1.0)
    bad = mutate(AUDIO_SSRC, 8, 1920, OPUS_PT, bytes(40), bytes([(EXT_MID << 4) | 0]) + b"1")
    _send_plain_or_srtp(world, bad, 1.02)
    world.send(good_rtp(AUDIO_SSRC, 9, 2880, OPUS_PT, bytes(40), [(EXT_MID, b"1")]), 1.04)
    assert _refused(world) == {reason(code): 1}
    for index in range(2):
        audio = [
            p
            for p in world.received[index].packets
            if struct.unpack_from("!I", p, 8)[0] == 0xA000 + index
        ]
        assert len(audio) == 2, (name, index)


def test_mutations_name_their_defect() -> None:
    """The header defects are the parse's own; the others pass the parse."""
    for name, (mutate, code) in VIDEO.items():
        packet = mutate(1, 2, 3, VP8_PT, vp8_payload(1, key=True), MID)
        expected = code if code < len(reference_rtp.RTP_DEFECTS) else RTP_DEFECT_NONE
        assert rtp_defect(packet) == expected, name


_packet = st.builds(
    lambda b0, rest: bytes([b0]) + rest,
    st.integers(0, 255),
    st.binary(max_size=80),
)


@settings(max_examples=600, deadline=None)
@given(
    data=st.one_of(
        _packet,
        st.tuples(st.sampled_from(sorted(VIDEO)), st.binary(max_size=30), st.integers(0, 7)).map(
            lambda t: VIDEO[t[0]][0](1, 2, 3, VP8_PT, t[1], MID[: t[2] % 3])
        ),
        st.tuples(st.binary(min_size=12, max_size=60), st.integers(0, 59), st.integers(0, 255))
        .filter(lambda t: t[1] < len(t[0]))
        .map(lambda t: b"\x90" + t[0][1 : t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]),
    )
)
def test_compiled_defect_matches_reference(compiled_kernels: Kernels, data: bytes) -> None:
    from sfu._fastpath import _rtp  # type: ignore[attr-defined]

    assert _rtp.rtp_defect(data) == rtp_defect(data)
    if rtp_defect(data) == RTP_DEFECT_NONE:
        # An admitted packet parses, and its payload (or padding) fits after the header.
        view = reference_rtp.parse_rtp(data)
        assert view.payload_offset < len(data)
