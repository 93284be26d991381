"""Coverage-guided fuzzing (atheris, libFuzzer) of the RTP parsers and the forwarder.

    python tests/fuzz/fuzz_rtp.py parse     CORPUS_DIR... [libFuzzer flags]
    python tests/fuzz/fuzz_rtp.py forward   CORPUS_DIR... [libFuzzer flags]

``parse``: every RTP parser on the input (``rtp_defect``, ``parse_rtp``, ``find_extension``,
``payload_offset``, ``RtpPacket.parse``, the VP8/VP9/H.264 descriptors at the payload) raises
nothing but ParseError, a packet the admission check passes parses, and the compiled parse
agrees with the reference.

``forward``: the input, as a plain RTP packet of one of the publisher's streams (the
first byte picks which and overwrites version, SSRC and payload type, and may give it a fresh
sequence number so SRTP's replay check lets it through), is SRTP-protected and forwarded by
the reference world and, when built, the compiled one: both give identical egress, records
and state, and nothing a subscriber receives is malformed. Coverage comes from the
instrumented pure-Python references.

``make fuzz`` runs both for longer and adds what it finds to ``tests/fuzz/corpus/``; the
unit suite runs each briefly (``tests/unit/test_fuzz.py``).
"""

from __future__ import annotations

import contextlib
import os
import struct
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent / "unit")]

import atheris  # noqa: E402

with atheris.instrument_imports(include=["sfu"]):
    from sfu import _fastpath
    from sfu._fastpath import _srtp_py
    from sfu._fastpath._srtp_shared import SrtpError
    from sfu._fastpath.values import refusal
    from sfu.codecs.h264 import parse_h264
    from sfu.codecs.vp8 import parse_vp8
    from sfu.codecs.vp9 import parse_vp9
    from sfu.core.kernels import REFERENCE, compiled
    from sfu.packet.errors import ParseError
    from sfu.packet.rtp import (
        RTP_DEFECT_NONE,
        RtpPacket,
        find_extension,
        parse_rtp,
        payload_offset,
        rtp_defect,
    )

from forwarder_world import (  # noqa: E402
    AUDIO_SSRC,
    PROFILE,
    PUB_ADDR,
    PUB_KEY,
    PUB_SALT,
    SUB_KEY,
    SUB_SALT,
    VIDEO_SSRCS,
    World,
)

_COMPILED: Any = None
if _fastpath.IMPLEMENTATION == "cython":
    from sfu._fastpath import _rtp as _COMPILED  # type: ignore[attr-defined,no-redef]


def _parse_one(data: bytes) -> None:
    defect = rtp_defect(data)
    if _COMPILED is not None:
        assert _COMPILED.rtp_defect(data) == defect, (data.hex(), defect)
    try:
        view = parse_rtp(data)
    except ParseError:
        view = None
        assert defect != RTP_DEFECT_NONE
    if _COMPILED is not None:
        try:
            assert _COMPILED.parse_rtp(data) == view
        except ParseError:
            assert view is None
    for ext_id in (1, 3, 15, 200):
        with contextlib.suppress(ParseError):
            find_extension(data, ext_id)
    try:
        packet = RtpPacket.parse(data)
    except ParseError:
        assert defect != RTP_DEFECT_NONE
    else:
        if defect == RTP_DEFECT_NONE:
            assert packet.serialize() == data
    try:
        offset = payload_offset(data)
    except ParseError:
        return
    for parse in (parse_vp8, parse_vp9, parse_h264):
        with contextlib.suppress(ParseError):
            parse(data, offset)


class _Forwarding:
    """The reference world and, when built, the compiled one, fed the same packets."""

    def __init__(self) -> None:
        self.worlds = [World(REFERENCE)]
        if _fastpath.IMPLEMENTATION == "cython":
            self.worlds.append(World(compiled()))
        for world in self.worlds:
            for sub in world.video_subs:
                sub.selector.set_target(2, None)
        self.client = _srtp_py.SrtpContext(PROFILE, PUB_KEY, PUB_SALT, outbound=True)
        self.receivers = [
            _srtp_py.SrtpContext(PROFILE, SUB_KEY, SUB_SALT, outbound=False) for _ in range(3)
        ]
        self.now = 1.0
        self.seq = 0

    def one(self, data: bytes) -> None:
        if len(data) < 13:
            return
        ssrcs = (*VIDEO_SSRCS, AUDIO_SSRC)
        choice = data[0]
        plain = bytearray(data[1:])
        if choice & 0x80:  # keep the packet's own version, SSRC and payload type otherwise
            plain[0] = 0x80 | (plain[0] & 0x3F)
            plain[8:12] = struct.pack("!I", ssrcs[choice & 3])
            plain[1] = (plain[1] & 0x80) | (111 if choice & 3 == 3 else 96)
        if choice & 0x40 and len(plain) >= 4:  # a fresh sequence number: past SRTP's replay check
            self.seq = (self.seq + 1 + (choice >> 2 & 7)) & 0xFFFF
            plain[2:4] = struct.pack("!H", self.seq)
        try:
            wire = self.client.protect_rtp(bytes(plain))
        except SrtpError:
            return  # a header libsrtp will not protect never arrives inside SRTP
        self.now += 0.001
        results = []
        for world in self.worlds:
            slow, egress = world.forwarder.process([(wire, PUB_ADDR)], self.now)
            results.append((slow, egress, world.forwarder.drain_log(), world.snapshot()))
        first = results[0]
        for other in results[1:]:
            assert other == first
        _, egress, log, _ = first
        for record in log:
            if refusal(record[1]):
                assert record[8] == 0  # refused: forwarded to nobody
        for out, address in egress:
            receiver = self.receivers[address[1] - 6000]
            try:
                received = receiver.unprotect_rtp(out)
            except SrtpError as exc:
                assert exc.reason == "replay", exc.reason
                continue
            # Nothing malformed reaches a subscriber.
            assert rtp_defect(received) == RTP_DEFECT_NONE, received.hex()


def main() -> None:
    target = sys.argv.pop(1) if len(sys.argv) > 1 else "parse"
    if target == "parse":
        atheris.Setup(sys.argv, _parse_one)
    elif target == "forward":
        forwarding = _Forwarding()
        atheris.Setup(sys.argv, forwarding.one)
    else:
        raise SystemExit(f"unknown fuzz target {target!r} (parse, forward)")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    atheris.Fuzz()


if __name__ == "__main__":
    main()
