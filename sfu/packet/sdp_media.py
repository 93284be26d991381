"""Typed values of the SDP lines and attributes a WebRTC SFU negotiates.

Each class parses one field/attribute *value* (the text after ``a=name:``) and formats it back.
The document model in :mod:`sfu.packet.sdp` keeps raw lines as its single source of truth and
uses these classes to derive typed views and to build new lines. Grammars are from RFC 8866
(SDP), RFC 8839 (ICE), RFC 8122 (fingerprint), RFC 4145 (setup), RFC 5888 (group), RFC 8830
(msid), RFC 4585 (rtcp-fb), RFC 8285 (extmap), RFC 5576 (ssrc), RFC 8851 (rid), RFC 8853
(simulcast), RFC 8841 (sctp-port, max-message-size) and RFC 3605 (rtcp). Parsers accept what
real browsers emit and raise only :class:`ParseError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, Self

from sfu.packet.errors import ParseError

#: Longest decimal number accepted anywhere (a 64-bit session id has 20 digits); bounds the
#: cost of int() on hostile input.
MAX_NUMBER_DIGITS = 20
#: Most items accepted in one list-valued attribute (formats, group mids, ssrc lists, rids).
MAX_LIST_ITEMS = 256

_ICE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
_RID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_int(text: str, lo: int, hi: int, what: str) -> int:
    """Strict ASCII decimal in [lo, hi]; int() alone would accept '1_0', ' 7' and non-ASCII
    digits, which must not pass as SDP numbers."""
    if not text or len(text) > MAX_NUMBER_DIGITS or not (text.isascii() and text.isdigit()):
        raise ParseError(f"SDP {what}: not a decimal number: {text[:40]!r}")
    value = int(text)
    if not lo <= value <= hi:
        raise ParseError(f"SDP {what}: {value} out of range [{lo}, {hi}]")
    return value


def split_fields(text: str, what: str, minimum: int, maximum: int = MAX_LIST_ITEMS) -> list[str]:
    """Split on single spaces (SDP's field separator), rejecting empty fields."""
    fields = text.split(" ")
    if len(fields) < minimum or len(fields) > maximum or "" in fields:
        raise ParseError(f"SDP {what}: bad field layout: {text[:80]!r}")
    return fields


def check_token(text: str, what: str) -> str:
    """A non-empty run of printable non-space characters (RFC 8866 §9 ``token``, loosely)."""
    if not text or not text.isprintable() or " " in text:
        raise ParseError(f"SDP {what}: bad token {text[:40]!r}")
    return text


def check_ice_chars(text: str, what: str) -> str:
    """RFC 8839 §5.4 ``ice-char`` = ALPHA / DIGIT / "+" / "/"; used by ufrag, pwd, foundation."""
    if not text or not _ICE_CHARS.issuperset(text):
        raise ParseError(f"SDP {what}: not ice-chars: {text[:40]!r}")
    return text


class SdpAttribute:
    """Base of typed ``a=`` values: ``NAME`` is the attribute name, ``parse`` reads the value."""

    __slots__ = ()
    NAME: ClassVar[str]

    @classmethod
    def parse(cls, value: str) -> Self:
        raise NotImplementedError

    def to_value(self) -> str:
        """The attribute value as it goes after ``a=NAME:``."""
        raise NotImplementedError


class Direction(StrEnum):
    """Media direction property attributes (RFC 8866 §6.7); sendrecv is the default."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


class Setup(StrEnum):
    """DTLS role negotiation, ``a=setup`` (RFC 4145 §4, RFC 8842 §5.1)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    ACTPASS = "actpass"
    HOLDCONN = "holdconn"

    @classmethod
    def parse(cls, value: str) -> Setup:
        try:
            return cls(value)
        except ValueError:
            raise ParseError(f"SDP a=setup: unknown role {value[:40]!r}") from None


@dataclass(frozen=True, slots=True)
class Origin:
    """``o=`` username sess-id sess-version nettype addrtype address (RFC 8866 §5.2)."""

    username: str
    session_id: int
    session_version: int
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "127.0.0.1"

    @classmethod
    def parse(cls, value: str) -> Origin:
        f = split_fields(value, "o=", 6, 6)
        return cls(
            check_token(f[0], "o= username"),
            parse_int(f[1], 0, 2**64 - 1, "o= sess-id"),
            parse_int(f[2], 0, 2**64 - 1, "o= sess-version"),
            check_token(f[3], "o= nettype"),
            check_token(f[4], "o= addrtype"),
            check_token(f[5], "o= address"),
        )

    def to_value(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """``c=`` nettype addrtype connection-address (RFC 8866 §5.7); any /ttl stays in address."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    @classmethod
    def parse(cls, value: str) -> Connection:
        f = split_fields(value, "c=", 3, 3)
        return cls(check_token(f[0], "c="), check_token(f[1], "c="), check_token(f[2], "c="))

    def to_value(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass(frozen=True, slots=True)
class MediaLine:
    """``m=`` media port[/count] proto fmt... (RFC 8866 §5.14)."""

    kind: str
    port: int
    proto: str
    formats: tuple[str, ...]
    port_count: int | None = None

    @classmethod
    def parse(cls, value: str) -> MediaLine:
        f = split_fields(value, "m=", 4, MAX_LIST_ITEMS + 3)
        port_text, _, count_text = f[1].partition("/")
        count = parse_int(count_text, 1, 65535, "m= port count") if count_text else None
        return cls(
            kind=check_token(f[0], "m= media"),
            port=parse_int(port_text, 0, 65535, "m= port"),
            proto=check_token(f[2], "m= proto"),
            formats=tuple(check_token(fmt, "m= fmt") for fmt in f[3:]),
            port_count=count,
        )

    def to_value(self) -> str:
        port = self.port if self.port_count is None else f"{self.port}/{self.port_count}"
        return " ".join([self.kind, str(port), self.proto, *self.formats])

    @property
    def payload_types(self) -> tuple[int, ...]:
        """Formats as RTP payload types; raises ParseError for non-RTP (e.g. SCTP) m-lines."""
        return tuple(parse_int(fmt, 0, 127, "m= payload type") for fmt in self.formats)


@dataclass(frozen=True, slots=True)
class Group(SdpAttribute):
    """``a=group:<semantics> <mid>...`` (RFC 5888 §5), e.g. BUNDLE (RFC 9143)."""

    NAME: ClassVar[str] = "group"
    semantics: str
    mids: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=group", 1, MAX_LIST_ITEMS + 1)
        return cls(check_token(f[0], "a=group"), tuple(check_token(m, "a=group") for m in f[1:]))

    def to_value(self) -> str:
        return " ".join([self.semantics, *self.mids])


@dataclass(frozen=True, slots=True)
class IceOptions(SdpAttribute):
    """``a=ice-options:<option>...`` (RFC 8839 §5.6), e.g. trickle."""

    NAME: ClassVar[str] = "ice-options"
    options: tuple[str, ...]

    @classmethod
    def parse(cls, value: str) -> Self:
        return cls(tuple(split_fields(value, "a=ice-options", 1)))

    def to_value(self) -> str:
        return " ".join(self.options)


@dataclass(frozen=True, slots=True)
class MsidSemantic(SdpAttribute):
    """``a=msid-semantic: WMS [ids | *]`` (legacy WebRTC; Chrome writes a space after ':')."""

    NAME: ClassVar[str] = "msid-semantic"
    semantic: str
    identifiers: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value.lstrip(" "), "a=msid-semantic", 1, MAX_LIST_ITEMS + 1)
        return cls(check_token(f[0], "a=msid-semantic"), tuple(f[1:]))

    def to_value(self) -> str:
        return " ".join([self.semantic, *self.identifiers])


@dataclass(frozen=True, slots=True)
class Fingerprint(SdpAttribute):
    """``a=fingerprint:<hash-func> <XX:XX:...>`` certificate digest (RFC 8122 §5)."""

    NAME: ClassVar[str] = "fingerprint"
    algorithm: str
    value: str

    @classmethod
    def parse(cls, value: str) -> Self:
        algorithm, hex_value = split_fields(value, "a=fingerprint", 2, 2)
        pairs = hex_value.split(":")
        if len(pairs) > 128 or not all(len(p) == 2 and _HEX.issuperset(p) for p in pairs):
            raise ParseError(f"SDP a=fingerprint: bad digest {hex_value[:40]!r}")
        return cls(check_token(algorithm, "a=fingerprint"), hex_value)

    @classmethod
    def from_digest(cls, algorithm: str, digest: bytes) -> Fingerprint:
        """Build from raw digest bytes, in the upper-case form browsers use."""
        return cls(algorithm, ":".join(f"{b:02X}" for b in digest))

    @property
    def digest(self) -> bytes:
        return bytes.fromhex(self.value.replace(":", ""))

    def to_value(self) -> str:
        return f"{self.algorithm} {self.value}"


@dataclass(frozen=True, slots=True)
class Msid(SdpAttribute):
    """``a=msid:<stream-id> [<track-id>]`` (RFC 8830 §2)."""

    NAME: ClassVar[str] = "msid"
    stream_id: str
    track_id: str | None = None

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=msid", 1, 2)
        return cls(f[0], f[1] if len(f) == 2 else None)

    def to_value(self) -> str:
        return self.stream_id if self.track_id is None else f"{self.stream_id} {self.track_id}"


@dataclass(frozen=True, slots=True)
class RtpMap(SdpAttribute):
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`` (RFC 8866 §6.6)."""

    NAME: ClassVar[str] = "rtpmap"
    payload_type: int
    encoding_name: str
    clock_rate: int
    channels: int | None = None

    @classmethod
    def parse(cls, value: str) -> Self:
        pt, encoding = split_fields(value, "a=rtpmap", 2, 2)
        parts = encoding.split("/")
        if not 2 <= len(parts) <= 3:
            raise ParseError(f"SDP a=rtpmap: bad encoding {encoding[:40]!r}")
        channels = parse_int(parts[2], 1, 255, "a=rtpmap channels") if len(parts) == 3 else None
        return cls(
            parse_int(pt, 0, 127, "a=rtpmap payload type"),
            check_token(parts[0], "a=rtpmap encoding"),
            parse_int(parts[1], 1, 2**32 - 1, "a=rtpmap clock rate"),
            channels,
        )

    def to_value(self) -> str:
        tail = "" if self.channels is None else f"/{self.channels}"
        return f"{self.payload_type} {self.encoding_name}/{self.clock_rate}{tail}"


@dataclass(frozen=True, slots=True)
class Fmtp(SdpAttribute):
    """``a=fmtp:<pt> <format parameters>`` (RFC 8866 §6.15), kept verbatim plus a dict view."""

    NAME: ClassVar[str] = "fmtp"
    payload_type: int
    parameters: str

    @classmethod
    def parse(cls, value: str) -> Self:
        pt, sep, params = value.partition(" ")
        if not sep or not params:
            raise ParseError(f"SDP a=fmtp: missing parameters in {value[:40]!r}")
        return cls(parse_int(pt, 0, 127, "a=fmtp payload type"), params)

    @classmethod
    def from_params(cls, payload_type: int, params: dict[str, str]) -> Fmtp:
        """``key=value`` pairs joined with ';' (the common codec convention, e.g. apt=96)."""
        return cls(payload_type, ";".join(f"{k}={v}" if v else k for k, v in params.items()))

    @property
    def params(self) -> dict[str, str]:
        """``k=v;k=v`` split into a dict; a piece without '=' (e.g. RED's ``111/111``) maps
        to the empty string."""
        out: dict[str, str] = {}
        for piece in self.parameters.split(";"):
            key, _, val = piece.strip().partition("=")
            if key:
                out[key] = val
        return out

    def to_value(self) -> str:
        return f"{self.payload_type} {self.parameters}"


@dataclass(frozen=True, slots=True)
class RtcpFb(SdpAttribute):
    """``a=rtcp-fb:<pt|*> <type> [<subtype/params>]`` (RFC 4585 §4.2); pt None means ``*``."""

    NAME: ClassVar[str] = "rtcp-fb"
    payload_type: int | None
    type: str
    subtype: str | None = None

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=rtcp-fb", 2, 16)
        pt = None if f[0] == "*" else parse_int(f[0], 0, 127, "a=rtcp-fb payload type")
        return cls(pt, check_token(f[1], "a=rtcp-fb"), " ".join(f[2:]) or None)

    def to_value(self) -> str:
        pt = "*" if self.payload_type is None else str(self.payload_type)
        return " ".join(p for p in (pt, self.type, self.subtype) if p is not None)


@dataclass(frozen=True, slots=True)
class ExtMap(SdpAttribute):
    """``a=extmap:<id>[/<direction>] <uri> [<attributes>]`` (RFC 8285 §8)."""

    NAME: ClassVar[str] = "extmap"
    id: int
    uri: str
    direction: Direction | None = None
    attributes: str | None = None

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=extmap", 2, 64)
        id_text, slash, dir_text = f[0].partition("/")
        ext_id = parse_int(id_text, 1, 4351, "a=extmap id")
        # 1-14 one-byte, 1-255 two-byte (RFC 8285 §4), 4096-4351 for negotiation (§7).
        if 255 < ext_id < 4096:
            raise ParseError(f"SDP a=extmap: id {ext_id} not usable")
        direction: Direction | None = None
        if slash:
            try:
                direction = Direction(dir_text)
            except ValueError:
                raise ParseError(f"SDP a=extmap: bad direction {dir_text[:20]!r}") from None
        return cls(ext_id, check_token(f[1], "a=extmap uri"), direction, " ".join(f[2:]) or None)

    def to_value(self) -> str:
        head = str(self.id) if self.direction is None else f"{self.id}/{self.direction}"
        tail = "" if self.attributes is None else f" {self.attributes}"
        return f"{head} {self.uri}{tail}"


@dataclass(frozen=True, slots=True)
class Ssrc(SdpAttribute):
    """``a=ssrc:<ssrc> <attribute>[:<value>]`` (RFC 5576 §4.1), e.g. cname, msid."""

    NAME: ClassVar[str] = "ssrc"
    ssrc: int
    attribute: str
    value: str | None = None

    @classmethod
    def parse(cls, value: str) -> Self:
        ssrc_text, sep, rest = value.partition(" ")
        if not sep:
            raise ParseError(f"SDP a=ssrc: missing source attribute in {value[:40]!r}")
        name, colon, attr_value = rest.partition(":")
        return cls(
            parse_int(ssrc_text, 0, 2**32 - 1, "a=ssrc"),
            check_token(name, "a=ssrc attribute"),
            attr_value if colon else None,
        )

    def to_value(self) -> str:
        tail = "" if self.value is None else f":{self.value}"
        return f"{self.ssrc} {self.attribute}{tail}"


@dataclass(frozen=True, slots=True)
class SsrcGroup(SdpAttribute):
    """``a=ssrc-group:<semantics> <ssrc>...`` (RFC 5576 §4.2), e.g. FID (RTX), SIM."""

    NAME: ClassVar[str] = "ssrc-group"
    semantics: str
    ssrcs: tuple[int, ...]

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=ssrc-group", 2, MAX_LIST_ITEMS + 1)
        ssrcs = tuple(parse_int(s, 0, 2**32 - 1, "a=ssrc-group") for s in f[1:])
        return cls(check_token(f[0], "a=ssrc-group"), ssrcs)

    def to_value(self) -> str:
        return " ".join([self.semantics, *map(str, self.ssrcs)])


def _check_rid_id(text: str) -> str:
    """RFC 8851 §10 rid-id: ALPHA-NUMERIC plus '-' and '_'."""
    if not text or len(text) > 255 or not _RID_CHARS.issuperset(text):
        raise ParseError(f"SDP rid-id: bad identifier {text[:40]!r}")
    return text


@dataclass(frozen=True, slots=True)
class Rid(SdpAttribute):
    """``a=rid:<id> send|recv [pt=<fmt>,...;][<restriction>;...]`` (RFC 8851 §10)."""

    NAME: ClassVar[str] = "rid"
    rid: str
    direction: str
    payload_types: tuple[int, ...] = ()
    restrictions: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=rid", 2, 3)
        if f[1] not in ("send", "recv"):
            raise ParseError(f"SDP a=rid: bad direction {f[1][:20]!r}")
        pts: tuple[int, ...] = ()
        restrictions: list[tuple[str, str]] = []
        params = f[2].split(";") if len(f) == 3 else []
        if len(params) > MAX_LIST_ITEMS:
            raise ParseError("SDP a=rid: too many restrictions")
        for i, param in enumerate(params):
            key, _, val = param.partition("=")
            if i == 0 and key == "pt":
                pt_list = val.split(",")
                if len(pt_list) > MAX_LIST_ITEMS:
                    raise ParseError("SDP a=rid: too many payload types")
                pts = tuple(parse_int(p, 0, 127, "a=rid pt") for p in pt_list)
            else:
                restrictions.append((check_token(key, "a=rid restriction"), val))
        return cls(_check_rid_id(f[0]), f[1], pts, tuple(restrictions))

    @property
    def params(self) -> dict[str, str]:
        """Restrictions other than pt= (e.g. max-width, max-fps) as a dict."""
        return dict(self.restrictions)

    def to_value(self) -> str:
        params = [f"{k}={v}" if v else k for k, v in self.restrictions]
        if self.payload_types:
            params.insert(0, "pt=" + ",".join(map(str, self.payload_types)))
        tail = f" {';'.join(params)}" if params else ""
        return f"{self.rid} {self.direction}{tail}"


@dataclass(frozen=True, slots=True)
class SimulcastRid:
    """One alternative in a simulcast stream: a rid, possibly paused (``~`` prefix)."""

    rid: str
    paused: bool = False

    def __str__(self) -> str:
        return f"~{self.rid}" if self.paused else self.rid


#: A simulcast stream: its alternative rids, in preference order (RFC 8853 §5.1, ',').
SimulcastStream = tuple[SimulcastRid, ...]


def _parse_streams(text: str) -> tuple[SimulcastStream, ...]:
    streams = text.split(";")
    if len(streams) > MAX_LIST_ITEMS:
        raise ParseError("SDP a=simulcast: too many streams")
    out: list[SimulcastStream] = []
    for stream in streams:
        alternatives = stream.split(",")
        if len(alternatives) > MAX_LIST_ITEMS:
            raise ParseError("SDP a=simulcast: too many alternatives")
        out.append(
            tuple(
                SimulcastRid(_check_rid_id(alt.removeprefix("~")), alt.startswith("~"))
                for alt in alternatives
            )
        )
    return tuple(out)


def _format_streams(streams: tuple[SimulcastStream, ...]) -> str:
    return ";".join(",".join(str(alt) for alt in stream) for stream in streams)


@dataclass(frozen=True, slots=True)
class Simulcast(SdpAttribute):
    """``a=simulcast:send <streams> [recv <streams>]`` (RFC 8853 §5.1); streams are ';'
    separated, alternatives ',' separated, ``~`` marks a stream initially paused."""

    NAME: ClassVar[str] = "simulcast"
    send: tuple[SimulcastStream, ...] = ()
    recv: tuple[SimulcastStream, ...] = ()

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=simulcast", 2, 4)
        if len(f) % 2:
            raise ParseError(f"SDP a=simulcast: odd field count in {value[:40]!r}")
        found: dict[str, tuple[SimulcastStream, ...]] = {}
        for direction, streams in zip(f[::2], f[1::2], strict=True):
            if direction not in ("send", "recv") or direction in found:
                raise ParseError(f"SDP a=simulcast: bad direction {direction[:20]!r}")
            found[direction] = _parse_streams(streams)
        return cls(found.get("send", ()), found.get("recv", ()))

    @classmethod
    def from_rids(cls, send: list[str] | None = None, recv: list[str] | None = None) -> Simulcast:
        """One stream per rid (no alternatives), the usual browser shape."""
        return cls(
            tuple((SimulcastRid(r),) for r in send or ()),
            tuple((SimulcastRid(r),) for r in recv or ()),
        )

    def to_value(self) -> str:
        parts = []
        if self.send:
            parts.append(f"send {_format_streams(self.send)}")
        if self.recv:
            parts.append(f"recv {_format_streams(self.recv)}")
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Candidate(SdpAttribute):
    """``a=candidate:`` ICE candidate (RFC 8839 §5.1): foundation component transport priority
    address port typ <type> [raddr <a>] [rport <p>] then extension name/value pairs."""

    NAME: ClassVar[str] = "candidate"
    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    related_address: str | None = None
    related_port: int | None = None
    extensions: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def parse(cls, value: str) -> Self:
        f = split_fields(value, "a=candidate", 8, 64)
        if f[6] != "typ":
            raise ParseError(f"SDP a=candidate: expected 'typ', got {f[6][:20]!r}")
        rest = f[8:]
        if len(rest) % 2:
            raise ParseError("SDP a=candidate: unpaired extension attribute")
        pairs = list(zip(rest[::2], rest[1::2], strict=True))
        raddr: str | None = None
        rport: int | None = None
        if pairs and pairs[0][0] == "raddr":
            raddr = pairs.pop(0)[1]
        if pairs and pairs[0][0] == "rport":
            rport = parse_int(pairs.pop(0)[1], 0, 65535, "a=candidate rport")
        return cls(
            foundation=check_ice_chars(f[0], "a=candidate foundation"),
            component=parse_int(f[1], 1, 256, "a=candidate component"),
            transport=check_token(f[2], "a=candidate transport"),
            priority=parse_int(f[3], 0, 2**32 - 1, "a=candidate priority"),
            address=check_token(f[4], "a=candidate address"),
            port=parse_int(f[5], 0, 65535, "a=candidate port"),
            type=check_token(f[7], "a=candidate type"),
            related_address=raddr,
            related_port=rport,
            extensions=tuple(pairs),
        )

    @classmethod
    def parse_trickle(cls, text: str) -> Candidate:
        """Parse the ``candidate:...`` string of a trickled RTCIceCandidate (or an ``a=`` line)."""
        body = text.removeprefix("a=")
        if not body.startswith("candidate:"):
            raise ParseError(f"SDP candidate: missing 'candidate:' prefix in {text[:40]!r}")
        return cls.parse(body.removeprefix("candidate:"))

    def extension(self, name: str) -> str | None:
        """Value of an extension attribute such as tcptype, generation, ufrag."""
        return next((v for k, v in self.extensions if k == name), None)

    @property
    def tcptype(self) -> str | None:
        return self.extension("tcptype")

    def to_value(self) -> str:
        parts = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.address,
            str(self.port),
            "typ",
            self.type,
        ]
        if self.related_address is not None:
            parts += ["raddr", self.related_address]
        if self.related_port is not None:
            parts += ["rport", str(self.related_port)]
        for name, val in self.extensions:
            parts += [name, val]
        return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Rtcp(SdpAttribute):
    """``a=rtcp:<port> [nettype addrtype address]`` (RFC 3605 §2.1)."""

    NAME: ClassVar[str] = "rtcp"
    port: int
    connection: Connection | None = None

    @classmethod
    def parse(cls, value: str) -> Self:
        port_text, sep, conn = value.partition(" ")
        port = parse_int(port_text, 0, 65535, "a=rtcp port")
        return cls(port, Connection.parse(conn) if sep else None)

    def to_value(self) -> str:
        conn = "" if self.connection is None else f" {self.connection.to_value()}"
        return f"{self.port}{conn}"


def parse_sctp_port(value: str) -> int:
    """``a=sctp-port:<port>`` (RFC 8841 §5)."""
    return parse_int(value, 0, 65535, "a=sctp-port")


def parse_max_message_size(value: str) -> int:
    """``a=max-message-size:<bytes>`` (RFC 8841 §6); 0 means no limit."""
    return parse_int(value, 0, 2**64 - 1, "a=max-message-size")


def parse_mid(value: str) -> str:
    """``a=mid:<identification-tag>`` (RFC 5888 §4; RFC 8843 limits it to 16 characters)."""
    return check_token(value, "a=mid")


def parse_ice_ufrag(value: str) -> str:
    """``a=ice-ufrag`` (RFC 8839 §5.4): ice-chars; lengths are checked at negotiation."""
    if len(value) > 256:
        raise ParseError("SDP a=ice-ufrag: longer than 256 characters")
    return check_ice_chars(value, "a=ice-ufrag")


def parse_ice_pwd(value: str) -> str:
    """``a=ice-pwd`` (RFC 8839 §5.4): ice-chars; lengths are checked at negotiation."""
    if len(value) > 256:
        raise ParseError("SDP a=ice-pwd: longer than 256 characters")
    return check_ice_chars(value, "a=ice-pwd")
