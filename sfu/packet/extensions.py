"""RTP header extension URIs, the SDP ``a=extmap`` id map, and per-extension codecs.

The element bodies handled here are those an SFU reads or rewrites on every packet: MID
and RID SDES items (RFC 8843 / RFC 8852), abs-send-time, the transport-wide congestion
control sequence number and the client-to-mixer audio level (RFC 6464). The AV1 dependency
descriptor body is decoded by :mod:`sfu.codecs.av1`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from sfu.packet.errors import ParseError

__all__ = [
    "ABS_CAPTURE_TIME_URI",
    "ABS_SEND_TIME_URI",
    "AUDIO_LEVEL_URI",
    "DEPENDENCY_DESCRIPTOR_URI",
    "MID_URI",
    "PLAYOUT_DELAY_URI",
    "REPAIRED_RID_URI",
    "RID_URI",
    "TOFFSET_URI",
    "TRANSPORT_CC_URI",
    "VIDEO_ORIENTATION_URI",
    "AudioLevel",
    "ExtensionMap",
    "Extmap",
    "abs_send_time_from_seconds",
    "abs_send_time_from_us",
    "abs_send_time_to_seconds",
    "abs_send_time_to_us",
    "build_abs_send_time",
    "build_audio_level",
    "build_mid",
    "build_repaired_rid",
    "build_rid",
    "build_sdes_item",
    "build_transport_cc_seq",
    "parse_abs_send_time",
    "parse_audio_level",
    "parse_extmap",
    "parse_mid",
    "parse_repaired_rid",
    "parse_rid",
    "parse_sdes_item",
    "parse_transport_cc_seq",
]

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
DEPENDENCY_DESCRIPTOR_URI = (
    "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
)
# Common in browser offers; recognised by URI only (bodies are forwarded untouched).
TOFFSET_URI = "urn:ietf:params:rtp-hdrext:toffset"
VIDEO_ORIENTATION_URI = "urn:3gpp:video-orientation"
PLAYOUT_DELAY_URI = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
ABS_CAPTURE_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"

_MAX_EXT_ID = 255


# --------------------------------------------------------------------------- extmap


class Extmap(NamedTuple):
    """One parsed ``a=extmap`` attribute (RFC 8285 §8)."""

    ext_id: int
    uri: str
    direction: str | None
    attributes: str | None


_DIRECTIONS = frozenset(("sendonly", "recvonly", "sendrecv", "inactive"))


def parse_extmap(value: str) -> Extmap:
    """Parse ``extmap:<id>[/<direction>] <uri> [<attributes>]`` (``a=`` prefix optional).

    Ids 1-255 are accepted (RFC 8285 §5). Raises ParseError on anything else.
    """
    text = value.strip()
    if text.startswith("a="):
        text = text[2:]
    if not text.startswith("extmap:"):
        raise ParseError(f"not an extmap attribute: {value[:64]!r}")
    fields = text[len("extmap:") :].split(None, 2)
    if len(fields) < 2:
        raise ParseError(f"extmap attribute lacks a URI: {value[:64]!r}")
    id_part, uri = fields[0], fields[1]
    attributes = fields[2] if len(fields) == 3 else None
    direction: str | None = None
    if "/" in id_part:
        id_part, direction = id_part.split("/", 1)
        if direction not in _DIRECTIONS:
            raise ParseError(f"bad extmap direction {direction[:16]!r}")
    if not id_part.isascii() or not id_part.isdigit() or len(id_part) > 5:
        raise ParseError(f"bad extmap id {id_part[:16]!r}")
    ext_id = int(id_part)
    if not 1 <= ext_id <= _MAX_EXT_ID:
        raise ParseError(f"extmap id {ext_id} out of range 1-255")
    return Extmap(ext_id, uri, direction, attributes)


class ExtensionMap:
    """Bidirectional map between RFC 8285 local ids and extension URIs of one session."""

    __slots__ = ("_by_id", "_by_uri")

    def __init__(self, items: Iterable[tuple[int, str]] = ()) -> None:
        self._by_id: dict[int, str] = {}
        self._by_uri: dict[str, int] = {}
        for ext_id, uri in items:
            self.add(ext_id, uri)

    @classmethod
    def from_sdp(cls, lines: Iterable[str]) -> ExtensionMap:
        """Build from SDP lines; lines that are not ``a=extmap:`` are ignored.

        Raises ParseError on a malformed extmap line or conflicting mappings.
        """
        emap = cls()
        for line in lines:
            stripped = line.strip()
            if stripped.startswith(("a=extmap:", "extmap:")):
                entry = parse_extmap(stripped)
                try:
                    emap.add(entry.ext_id, entry.uri)
                except ValueError as exc:
                    raise ParseError(str(exc)) from None
        return emap

    def add(self, ext_id: int, uri: str) -> None:
        """Map ``ext_id`` to ``uri``; ValueError if either side is already mapped elsewhere."""
        if not 1 <= ext_id <= _MAX_EXT_ID:
            raise ValueError(f"extension id {ext_id} out of range 1-255")
        old_uri = self._by_id.get(ext_id)
        old_id = self._by_uri.get(uri)
        if old_uri == uri:
            return
        if old_uri is not None:
            raise ValueError(f"extension id {ext_id} already mapped to {old_uri}")
        if old_id is not None:
            raise ValueError(f"extension {uri} already mapped to id {old_id}")
        self._by_id[ext_id] = uri
        self._by_uri[uri] = ext_id

    def id_for(self, uri: str) -> int | None:
        """Local id negotiated for ``uri``, or None."""
        return self._by_uri.get(uri)

    def uri_for(self, ext_id: int) -> str | None:
        """URI mapped to ``ext_id``, or None."""
        return self._by_id.get(ext_id)

    def items(self) -> list[tuple[int, str]]:
        """``(id, uri)`` pairs sorted by id."""
        return sorted(self._by_id.items())

    def to_sdp(self) -> list[str]:
        """``a=extmap:<id> <uri>`` lines, sorted by id."""
        return [f"a=extmap:{i} {u}" for i, u in self.items()]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, int):
            return key in self._by_id
        return key in self._by_uri

    def __iter__(self) -> Iterator[tuple[int, str]]:
        return iter(self.items())

    def __len__(self) -> int:
        return len(self._by_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtensionMap):
            return NotImplemented
        return self._by_id == other._by_id

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ExtensionMap({self.items()!r})"


# --------------------------------------------------------------------------- SDES items


def _sdes_char_ok(c: int) -> bool:
    return 0x21 <= c <= 0x7E


def parse_sdes_item(data: bytes) -> str:
    """Decode a MID/RID/repaired-RID element (RFC 8843 §15.1, RFC 8852 §3).

    The value is printable ASCII. A NUL ends the string early (some senders null-pad the
    element to a word boundary); an empty value is an error.
    """
    raw = bytes(data)
    nul = raw.find(0)
    if nul >= 0:
        raw = raw[:nul]
    if not raw:
        raise ParseError("empty SDES header extension")
    if not all(_sdes_char_ok(c) for c in raw):
        raise ParseError("SDES header extension is not printable ASCII")
    return raw.decode("ascii")


def build_sdes_item(value: str) -> bytes:
    """Encode a MID/RID value: 1-255 printable ASCII characters (ValueError otherwise)."""
    if not value or len(value) > 255:
        raise ValueError("SDES header extension value must be 1-255 characters")
    if not value.isascii() or not all(_sdes_char_ok(ord(c)) for c in value):
        raise ValueError("SDES header extension value must be printable ASCII")
    return value.encode("ascii")


parse_mid = parse_sdes_item
build_mid = build_sdes_item
parse_rid = parse_sdes_item
build_rid = build_sdes_item
parse_repaired_rid = parse_sdes_item
build_repaired_rid = build_sdes_item


# --------------------------------------------------------------------------- abs-send-time

_AST_FRAC_BITS = 18  # 6.18 fixed point seconds
_AST_MASK = 0xFFFFFF


def parse_abs_send_time(data: bytes) -> int:
    """Raw 24-bit abs-send-time value (6.18 fixed point seconds, wraps every 64 s)."""
    if len(data) != 3:
        raise ParseError(f"abs-send-time must be 3 bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def build_abs_send_time(value: int) -> bytes:
    """Encode a raw 24-bit abs-send-time value."""
    if not 0 <= value <= _AST_MASK:
        raise ValueError(f"abs-send-time {value} out of range")
    return value.to_bytes(3, "big")


def abs_send_time_from_seconds(seconds: float) -> int:
    """Raw abs-send-time for a send time in seconds (taken modulo 64 s)."""
    return round(seconds * (1 << _AST_FRAC_BITS)) & _AST_MASK


def abs_send_time_from_us(us: int) -> int:
    """Raw abs-send-time for a send time in microseconds, rounded to nearest."""
    return (((us << _AST_FRAC_BITS) + 500_000) // 1_000_000) & _AST_MASK


def abs_send_time_to_seconds(value: int) -> float:
    """Seconds (0 <= s < 64) represented by a raw abs-send-time value."""
    return value / (1 << _AST_FRAC_BITS)


def abs_send_time_to_us(value: int) -> int:
    """Microseconds (rounded) represented by a raw abs-send-time value."""
    return (value * 1_000_000 + (1 << (_AST_FRAC_BITS - 1))) >> _AST_FRAC_BITS


# --------------------------------------------------------------------------- transport-cc


def parse_transport_cc_seq(data: bytes) -> int:
    """16-bit transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-01 §2)."""
    if len(data) != 2:
        raise ParseError(f"transport-cc sequence number must be 2 bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def build_transport_cc_seq(seq: int) -> bytes:
    """Encode a transport-wide sequence number (taken modulo 2**16)."""
    return (seq & 0xFFFF).to_bytes(2, "big")


# --------------------------------------------------------------------------- audio level


class AudioLevel(NamedTuple):
    """RFC 6464 client-to-mixer audio level: voice flag and level in -dBov (0 loudest)."""

    voice_activity: bool
    level: int


def parse_audio_level(data: bytes) -> AudioLevel:
    """Decode the 1-byte ssrc-audio-level element (RFC 6464 §3)."""
    if len(data) != 1:
        raise ParseError(f"audio level must be 1 byte, got {len(data)}")
    b = data[0]
    return AudioLevel(bool(b & 0x80), b & 0x7F)


def build_audio_level(voice_activity: bool, level: int) -> bytes:
    """Encode an RFC 6464 audio level; ``level`` is 0-127 (-dBov, 127 = silence)."""
    if not 0 <= level <= 127:
        raise ValueError(f"audio level {level} out of range 0-127")
    return bytes(((0x80 if voice_activity else 0) | level,))
