"""Shared test helpers: the captured packets under tests/fixtures/ (see
tests/fixtures/README.md), the parsers' allocation bound and byte-level fuzzing."""

from __future__ import annotations

import contextlib
import re
import struct
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from sfu.packet.errors import ParseError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@dataclass(frozen=True)
class HexCapture:
    """One capture file: its comment lines and its datagrams, in order."""

    path: Path
    comments: tuple[str, ...]
    datagrams: tuple[bytes, ...]

    def comment_value(self, key: str) -> list[str]:
        """All values of ``key=VALUE`` pairs found in the comment lines, in order."""
        pattern = re.compile(rf"\b{re.escape(key)}=(\S+)")
        return [m.group(1) for line in self.comments for m in pattern.finditer(line)]


def hex_captures(kind: str) -> list[HexCapture]:
    """Every ``tests/fixtures/<kind>/*.hex`` file, parsed; fails loudly if there are none."""
    files = sorted((FIXTURES / kind).glob("*.hex"))
    assert files, f"no fixtures under {FIXTURES / kind}"
    return [read_hex(path) for path in files]


def read_hex(path: Path) -> HexCapture:
    """One ``.hex`` capture: ``#`` lines are comments, other non-blank lines datagrams."""
    comments, datagrams = [], []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            comments.append(line)
        elif line.strip():
            datagrams.append(bytes.fromhex(line.strip()))
    return HexCapture(path, tuple(comments), tuple(datagrams))


def capture_ids(captures: list[HexCapture]) -> list[str]:
    return [c.path.stem for c in captures]


@dataclass(frozen=True, slots=True)
class RtpPayload:
    """The RTP header fields the codec tests need, plus the payload window in ``data``."""

    seq: int
    timestamp: int
    marker: bool
    data: bytes
    start: int
    end: int


def rtp_payloads(name: str) -> list[RtpPayload]:
    """Read ``tests/fixtures/rtp/<name>`` and locate each payload (RFC 3550 §5.1, §5.3.1).

    The header is walked here with ``struct`` rather than ``sfu.packet.rtp`` so that the
    codec tests do not depend on the RTP parser they sit on top of.
    """
    out = []
    for pkt in read_hex(FIXTURES / "rtp" / name).datagrams:
        b0, b1, seq, ts = struct.unpack_from("!BBHI", pkt)
        start = 12 + 4 * (b0 & 0x0F)
        if b0 & 0x10:
            (words,) = struct.unpack_from("!H", pkt, start + 2)
            start += 4 + 4 * words
        end = len(pkt) - (pkt[-1] if b0 & 0x20 else 0)
        out.append(RtpPayload(seq, ts, bool(b1 & 0x80), pkt, start, end))
    return out


def peak_allocation(parse: Callable[[bytes], object], data: bytes, repeat: int = 1) -> int:
    """Peak traced memory, in octets, over ``repeat`` calls of ``parse(data)``.

    A ParseError is expected from adversarial input and ignored; anything else fails.
    """
    tracemalloc.start()
    try:
        for _ in range(repeat):
            with contextlib.suppress(ParseError):
                parse(data)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def allocation_bound(data: bytes) -> int:
    """What a parser may allocate for ``data``: a fixed 16 KiB plus 64 octets per input octet."""
    return 16 * 1024 + 64 * len(data)


def assert_bounded_allocation(
    parse: Callable[[bytes], object], samples: Iterable[bytes], repeat: int = 1
) -> None:
    """``parse`` stays within :func:`allocation_bound` on every sample."""
    for i, data in enumerate(samples):
        peak, bound = peak_allocation(parse, data, repeat), allocation_bound(data)
        assert peak < bound, f"sample {i} ({len(data)} octets): peak {peak} >= {bound}"


def mutated(data: st.DataObject, raw: bytes) -> bytes:
    """``raw`` (non-empty) with 1-3 octets overwritten at random, then cut at a random length."""
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    return bytes(buf[: data.draw(st.integers(0, len(buf)))])


def edited(data: st.DataObject, raw: bytes) -> bytes:
    """``raw`` (non-empty) after one random edit: flip a bit, cut, insert or delete an octet."""
    buf = bytearray(raw)
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
    if op == "flip":
        pos = data.draw(st.integers(0, len(buf) * 8 - 1))
        buf[pos // 8] ^= 1 << (pos % 8)
    elif op == "truncate":
        del buf[data.draw(st.integers(0, len(buf))) :]
    elif op == "insert":
        buf.insert(data.draw(st.integers(0, len(buf))), data.draw(st.integers(0, 255)))
    else:
        del buf[data.draw(st.integers(0, len(buf) - 1))]
    return bytes(buf)
