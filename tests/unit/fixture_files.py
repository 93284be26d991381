"""Loading the captured packets under tests/fixtures/ (see tests/fixtures/README.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

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
    captures = []
    for path in files:
        comments, datagrams = [], []
        for line in path.read_text().splitlines():
            if line.startswith("#"):
                comments.append(line)
            elif line.strip():
                datagrams.append(bytes.fromhex(line.strip()))
        captures.append(HexCapture(path, tuple(comments), tuple(datagrams)))
    return captures


def capture_ids(captures: list[HexCapture]) -> list[str]:
    return [c.path.stem for c in captures]
