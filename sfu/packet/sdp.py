"""SDP session descriptions (RFC 8866) for the WebRTC subset used by JSEP (RFC 8829).

The model's single source of truth is the ordered list of raw ``<type>=<value>`` lines, split
into the session part and one part per ``m=`` section; every typed accessor re-derives its value
from those lines, so builders and accessors can never drift apart. Unknown attributes are kept
verbatim, so ``SessionDescription.parse(text).serialize() == text`` for any well-formed input
with consistent line endings. Typed attribute values live in :mod:`sfu.packet.sdp_media`.

Parsing is bounded (see the ``MAX_*`` constants), validates the syntax of every attribute this
module knows how to type, and raises only :class:`ParseError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

from sfu.packet.errors import ParseError
from sfu.packet.sdp_media import (
    Candidate,
    Connection,
    Direction,
    ExtMap,
    Fingerprint,
    Fmtp,
    Group,
    IceOptions,
    MediaLine,
    Msid,
    MsidSemantic,
    Origin,
    Rid,
    Rtcp,
    RtcpFb,
    RtpMap,
    SdpAttribute,
    Setup,
    Simulcast,
    SimulcastRid,
    SimulcastStream,
    Ssrc,
    SsrcGroup,
    parse_ice_pwd,
    parse_ice_ufrag,
    parse_int,
    parse_max_message_size,
    parse_mid,
    parse_sctp_port,
)

__all__ = [
    "MAX_LINES",
    "MAX_LINE_CHARS",
    "MAX_MEDIA_SECTIONS",
    "MAX_SDP_CHARS",
    "Candidate",
    "Connection",
    "Direction",
    "ExtMap",
    "Fingerprint",
    "Fmtp",
    "Group",
    "IceOptions",
    "Line",
    "MediaLine",
    "MediaSection",
    "Msid",
    "MsidSemantic",
    "Origin",
    "Rid",
    "Rtcp",
    "RtcpFb",
    "RtpMap",
    "SdpAttribute",
    "SessionDescription",
    "Setup",
    "Simulcast",
    "SimulcastRid",
    "SimulcastStream",
    "Ssrc",
    "SsrcGroup",
]

#: Largest SDP accepted, in characters. Browser offers are a few KiB per media section.
MAX_SDP_CHARS = 512 * 1024
#: Most lines accepted (a Chromium video section is ~140 lines).
MAX_LINES = 16_384
#: Longest single line accepted.
MAX_LINE_CHARS = 4096
#: Most ``m=`` sections accepted (JSEP peers rarely exceed a few dozen).
MAX_MEDIA_SECTIONS = 256

# Line types allowed before the first m= and inside media sections (RFC 8866 §5). A parser
# must not accept types it does not understand (§5), so anything else is rejected.
_SESSION_TYPES = frozenset("vosiuepcbtrzka")
_MEDIA_TYPES = frozenset("micbka")
_DIRECTIONS = frozenset(d.value for d in Direction)

# Attribute name -> validator run at parse time, so that the typed accessors of a parsed
# description cannot fail later.
_VALIDATORS: dict[str, Callable[[str], object]] = {
    cls.NAME: cls.parse
    for cls in (
        Group,
        IceOptions,
        MsidSemantic,
        Fingerprint,
        Msid,
        RtpMap,
        Fmtp,
        RtcpFb,
        ExtMap,
        Ssrc,
        SsrcGroup,
        Rid,
        Simulcast,
        Candidate,
        Rtcp,
    )
}
_VALIDATORS.update(
    {
        "setup": Setup.parse,
        "mid": parse_mid,
        "ice-ufrag": parse_ice_ufrag,
        "ice-pwd": parse_ice_pwd,
        "sctp-port": parse_sctp_port,
        "max-message-size": parse_max_message_size,
    }
)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Line:
    """One raw SDP line ``<type>=<value>``; for ``a=`` lines, name/value split at the first ':'."""

    type: str
    value: str

    @classmethod
    def attribute(cls, name: str, value: str | None = None) -> Line:
        """An ``a=name`` property line, or ``a=name:value``."""
        return cls("a", name if value is None else f"{name}:{value}")

    @property
    def attr_name(self) -> str | None:
        """Attribute name of an ``a=`` line, else None."""
        return self.value.partition(":")[0] if self.type == "a" else None

    @property
    def attr_value(self) -> str | None:
        """Attribute value (after the first ':'), None for property attributes / non-a= lines."""
        if self.type != "a":
            return None
        _, colon, value = self.value.partition(":")
        return value if colon else None

    def __str__(self) -> str:
        return f"{self.type}={self.value}"


def _check_line_value(line: Line) -> None:
    if "\r" in line.value or "\n" in line.value or "\0" in line.value:
        raise ParseError("SDP line value contains CR, LF or NUL")
    if line.type == "a":
        name = line.attr_name
        if not name or " " in name:
            raise ParseError(f"SDP attribute with bad name: {line.value[:40]!r}")
        value = line.attr_value
        validator = _VALIDATORS.get(name)
        if validator is not None:
            if value is None:
                raise ParseError(f"SDP a={name} needs a value")
            validator(value)


class _Section:
    """Shared attribute access over an ordered list of raw lines."""

    lines: list[Line]
    _ALLOWED_TYPES: ClassVar[frozenset[str]]

    def attribute_values(self, name: str) -> Iterator[str]:
        """Values of every ``a=name:value`` line, in order (property lines are skipped)."""
        for line in self.lines:
            if line.type == "a" and line.attr_name == name:
                value = line.attr_value
                if value is not None:
                    yield value

    def attribute(self, name: str) -> str | None:
        """Value of the first ``a=name:value`` line, or None."""
        return next(self.attribute_values(name), None)

    def has_attribute(self, name: str) -> bool:
        """Whether any ``a=name`` or ``a=name:...`` line is present."""
        return any(line.type == "a" and line.attr_name == name for line in self.lines)

    def _typed(self, name: str, parse: Callable[[str], _T]) -> list[_T]:
        return [parse(v) for v in self.attribute_values(name)]

    def _first(self, name: str, parse: Callable[[str], _T]) -> _T | None:
        value = self.attribute(name)
        return None if value is None else parse(value)

    # -- builders ---------------------------------------------------------------------------

    def add_line(self, line: Line) -> Self:
        """Append a raw line (validated like parsed input) and return self for chaining."""
        if line.type not in self._ALLOWED_TYPES:
            raise ParseError(f"SDP line type {line.type!r} not allowed here")
        _check_line_value(line)
        if line.type == "c":
            Connection.parse(line.value)
        self.lines.append(line)
        return self

    def add_attribute(self, name: str, value: str | None = None) -> Self:
        """Append ``a=name`` (property) or ``a=name:value``."""
        return self.add_line(Line.attribute(name, value))

    def add(self, *attributes: SdpAttribute) -> Self:
        """Append typed attributes, in order."""
        for attr in attributes:
            self.add_attribute(attr.NAME, attr.to_value())
        return self

    def remove_attribute(self, name: str) -> Self:
        """Drop every ``a=name`` line."""
        self.lines[:] = [ln for ln in self.lines if not (ln.type == "a" and ln.attr_name == name)]
        return self

    def set_attribute(self, name: str, value: str | None = None) -> Self:
        """Replace the first ``a=name`` line in place (dropping others), or append one."""
        new = Line.attribute(name, value)
        _check_line_value(new)
        out: list[Line] = []
        replaced = False
        for line in self.lines:
            if line.type == "a" and line.attr_name == name:
                if not replaced:
                    out.append(new)
                    replaced = True
            else:
                out.append(line)
        if not replaced:
            out.append(new)
        self.lines[:] = out
        return self

    # -- accessors shared by session and media level ------------------------------------------

    @property
    def connection(self) -> Connection | None:
        """The ``c=`` line, if any."""
        line = next((ln for ln in self.lines if ln.type == "c"), None)
        return None if line is None else Connection.parse(line.value)

    @property
    def ice_ufrag(self) -> str | None:
        return self._first("ice-ufrag", parse_ice_ufrag)

    @property
    def ice_pwd(self) -> str | None:
        return self._first("ice-pwd", parse_ice_pwd)

    @property
    def ice_options(self) -> tuple[str, ...]:
        return tuple(o for v in self._typed("ice-options", IceOptions.parse) for o in v.options)

    @property
    def fingerprints(self) -> list[Fingerprint]:
        return self._typed("fingerprint", Fingerprint.parse)

    @property
    def setup(self) -> Setup | None:
        return self._first("setup", Setup.parse)

    @property
    def extmaps(self) -> list[ExtMap]:
        return self._typed("extmap", ExtMap.parse)

    @property
    def extmap_allow_mixed(self) -> bool:
        """RFC 8285 §6: one- and two-byte header extensions may be mixed."""
        return self.has_attribute("extmap-allow-mixed")


@dataclass(eq=True)
class MediaSection(_Section):
    """One ``m=`` section: its raw lines (the first is the ``m=`` line) plus typed views."""

    lines: list[Line]
    _ALLOWED_TYPES: ClassVar[frozenset[str]] = _MEDIA_TYPES

    @classmethod
    def create(
        cls,
        kind: str,
        port: int,
        proto: str,
        formats: list[str] | tuple[str, ...],
        connection: Connection | None = None,
    ) -> MediaSection:
        """A new section with just its ``m=`` (and optional ``c=``) line; add attributes next."""
        media = MediaLine(kind, port, proto, tuple(formats))
        section = cls([Line("m", media.to_value())])
        section.lines[0] = _checked_media_line(section.lines[0])
        if connection is not None:
            section.add_line(Line("c", connection.to_value()))
        return section

    @property
    def media(self) -> MediaLine:
        return MediaLine.parse(self.lines[0].value)

    @property
    def kind(self) -> str:
        """audio, video, application, ..."""
        return self.media.kind

    @property
    def port(self) -> int:
        return self.media.port

    @property
    def proto(self) -> str:
        return self.media.proto

    @property
    def formats(self) -> tuple[str, ...]:
        return self.media.formats

    @property
    def mid(self) -> str | None:
        return self._first("mid", parse_mid)

    @property
    def msid(self) -> Msid | None:
        return self._first("msid", Msid.parse)

    @property
    def msids(self) -> list[Msid]:
        return self._typed("msid", Msid.parse)

    @property
    def direction(self) -> Direction:
        """The media direction; sendrecv when none is given (RFC 8866 §6.7)."""
        for line in self.lines:
            if line.type == "a" and line.value in _DIRECTIONS:
                return Direction(line.value)
        return Direction.SENDRECV

    def set_direction(self, direction: Direction) -> Self:
        """Replace the direction attribute in place, or append one."""
        for i, line in enumerate(self.lines):
            if line.type == "a" and line.value in _DIRECTIONS:
                self.lines[i] = Line.attribute(direction.value)
                self.lines[i + 1 :] = [
                    ln
                    for ln in self.lines[i + 1 :]
                    if not (ln.type == "a" and ln.value in _DIRECTIONS)
                ]
                return self
        return self.add_attribute(direction.value)

    @property
    def rtcp_mux(self) -> bool:
        return self.has_attribute("rtcp-mux")

    @property
    def rtcp_rsize(self) -> bool:
        return self.has_attribute("rtcp-rsize")

    @property
    def rtcp(self) -> Rtcp | None:
        return self._first("rtcp", Rtcp.parse)

    @property
    def rtpmaps(self) -> list[RtpMap]:
        return self._typed("rtpmap", RtpMap.parse)

    @property
    def fmtps(self) -> list[Fmtp]:
        return self._typed("fmtp", Fmtp.parse)

    @property
    def rtcp_fbs(self) -> list[RtcpFb]:
        return self._typed("rtcp-fb", RtcpFb.parse)

    def rtpmap(self, payload_type: int) -> RtpMap | None:
        return next((m for m in self.rtpmaps if m.payload_type == payload_type), None)

    def fmtp(self, payload_type: int) -> Fmtp | None:
        return next((f for f in self.fmtps if f.payload_type == payload_type), None)

    def rtcp_fb(self, payload_type: int) -> list[RtcpFb]:
        """Feedback for one payload type, including wildcard (``*``) entries."""
        return [fb for fb in self.rtcp_fbs if fb.payload_type in (payload_type, None)]

    @property
    def ssrcs(self) -> list[Ssrc]:
        return self._typed("ssrc", Ssrc.parse)

    @property
    def ssrc_groups(self) -> list[SsrcGroup]:
        return self._typed("ssrc-group", SsrcGroup.parse)

    @property
    def rids(self) -> list[Rid]:
        return self._typed("rid", Rid.parse)

    @property
    def simulcast(self) -> Simulcast | None:
        return self._first("simulcast", Simulcast.parse)

    @property
    def candidates(self) -> list[Candidate]:
        return self._typed("candidate", Candidate.parse)

    @property
    def end_of_candidates(self) -> bool:
        return self.has_attribute("end-of-candidates")

    @property
    def sctp_port(self) -> int | None:
        return self._first("sctp-port", parse_sctp_port)

    @property
    def max_message_size(self) -> int | None:
        return self._first("max-message-size", parse_max_message_size)

    @property
    def bundle_only(self) -> bool:
        """RFC 8843 §6: section is only usable inside its BUNDLE group."""
        return self.has_attribute("bundle-only")

    def serialize_lines(self) -> list[str]:
        return [str(line) for line in self.lines]


def _checked_media_line(line: Line) -> Line:
    _check_line_value(line)
    MediaLine.parse(line.value)
    return line


@dataclass(eq=True)
class SessionDescription(_Section):
    """A whole SDP: session-level lines, media sections, and the text's line-ending style."""

    lines: list[Line]
    media: list[MediaSection] = field(default_factory=list)
    _ALLOWED_TYPES: ClassVar[frozenset[str]] = _SESSION_TYPES
    #: Line terminator used when serializing: CRLF per RFC 8866 §5, or LF if the input used it.
    line_ending: str = "\r\n"
    #: Whether the text ends with a terminator (it always should; kept for exact round-trips).
    final_line_ending: bool = True

    # -- parse / serialize ------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str) -> SessionDescription:
        """Parse SDP text; raises ParseError on anything malformed or over the MAX_* limits."""
        if not isinstance(text, str):
            raise ParseError("SDP must be text")
        if len(text) > MAX_SDP_CHARS:
            raise ParseError(f"SDP longer than {MAX_SDP_CHARS} characters")
        if text.count("\n") > MAX_LINES:
            raise ParseError(f"SDP has more than {MAX_LINES} lines")
        raw = text.split("\n")
        final_line_ending = raw[-1] == ""
        if final_line_ending:
            raw.pop()
        if not raw:
            raise ParseError("empty SDP")
        # RFC 8866 §5 mandates CRLF but asks parsers to accept a bare LF too. The first line
        # decides which style serialize() reproduces.
        line_ending = "\r\n" if raw[0].endswith("\r") or len(raw) == 1 else "\n"
        session: list[Line] = []
        media: list[MediaSection] = []
        current = session
        for text_line in raw:
            line = _parse_line(text_line)
            if line.type == "m":
                if len(media) >= MAX_MEDIA_SECTIONS:
                    raise ParseError(f"SDP has more than {MAX_MEDIA_SECTIONS} media sections")
                section = MediaSection([_checked_media_line(line)])
                media.append(section)
                current = section.lines
                continue
            allowed = _MEDIA_TYPES if media else _SESSION_TYPES
            if line.type not in allowed:
                where = "media" if media else "session"
                raise ParseError(f"SDP line type {line.type!r} not allowed at {where} level")
            _check_line_value(line)
            if line.type == "c":
                Connection.parse(line.value)
            current.append(line)
        _check_session_lines(session)
        return cls(session, media, line_ending, final_line_ending)

    def serialize(self) -> str:
        """The SDP text: every line in order, each ended with ``line_ending``."""
        out = [str(line) for line in self.lines]
        for section in self.media:
            out.extend(section.serialize_lines())
        text = self.line_ending.join(out)
        return text + self.line_ending if self.final_line_ending else text

    def __str__(self) -> str:
        return self.serialize()

    # -- builders ---------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        origin: Origin,
        session_name: str = "-",
        timing: str = "0 0",
        connection: Connection | None = None,
    ) -> SessionDescription:
        """A new description with the mandatory v=/o=/s=/t= lines (RFC 8866 §5); add session
        attributes with :meth:`add` and media with :meth:`add_media`."""
        sd = cls([])
        sd.add_line(Line("v", "0"))
        sd.add_line(Line("o", origin.to_value()))
        sd.add_line(Line("s", session_name))
        if connection is not None:
            sd.add_line(Line("c", connection.to_value()))
        sd.add_line(Line("t", timing))
        return sd

    def add_media(self, *sections: MediaSection) -> Self:
        self.media.extend(sections)
        return self

    # -- session-level accessors ------------------------------------------------------------

    @property
    def origin(self) -> Origin:
        return Origin.parse(next(ln.value for ln in self.lines if ln.type == "o"))

    @property
    def session_name(self) -> str:
        return next(ln.value for ln in self.lines if ln.type == "s")

    @property
    def groups(self) -> list[Group]:
        return self._typed("group", Group.parse)

    @property
    def bundle(self) -> tuple[str, ...] | None:
        """Mids of the first ``a=group:BUNDLE`` (RFC 9143), or None if not bundled."""
        return next((g.mids for g in self.groups if g.semantics == "BUNDLE"), None)

    @property
    def ice_lite(self) -> bool:
        """RFC 8839 §5.3: the peer is an ICE lite implementation."""
        return self.has_attribute("ice-lite")

    @property
    def msid_semantic(self) -> MsidSemantic | None:
        return self._first("msid-semantic", MsidSemantic.parse)

    def media_by_mid(self, mid: str) -> MediaSection | None:
        return next((m for m in self.media if m.mid == mid), None)

    # Session-level values apply to every media section that does not override them
    # (RFC 8839 §5.4 for ICE credentials, RFC 8122 §5 for fingerprints, RFC 4145 for setup).

    def ice_ufrag_for(self, section: MediaSection) -> str | None:
        return section.ice_ufrag or self.ice_ufrag

    def ice_pwd_for(self, section: MediaSection) -> str | None:
        return section.ice_pwd or self.ice_pwd

    def fingerprints_for(self, section: MediaSection) -> list[Fingerprint]:
        return section.fingerprints or self.fingerprints

    def setup_for(self, section: MediaSection) -> Setup | None:
        return section.setup or self.setup

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary of the typed views (for logs and debugging)."""
        return {
            "origin": self.origin.to_value(),
            "bundle": self.bundle,
            "ice_lite": self.ice_lite,
            "media": [
                {"mid": m.mid, "kind": m.kind, "direction": m.direction.value} for m in self.media
            ],
        }


def _parse_line(text_line: str) -> Line:
    if text_line.endswith("\r"):
        text_line = text_line[:-1]
    if len(text_line) > MAX_LINE_CHARS:
        raise ParseError(f"SDP line longer than {MAX_LINE_CHARS} characters")
    # RFC 8866 §5: exactly one lower-case letter, '=', no whitespace around it.
    if len(text_line) < 2 or text_line[1] != "=" or not ("a" <= text_line[0] <= "z"):
        raise ParseError(f"malformed SDP line {text_line[:40]!r}")
    return Line(text_line[0], text_line[2:])


def _check_session_lines(session: list[Line]) -> None:
    """RFC 8866 §5: v=0 first, then exactly one o= and s=, and at least one t=."""
    if not session or session[0] != Line("v", "0"):
        raise ParseError("SDP must start with v=0")
    counts = {t: sum(1 for ln in session if ln.type == t) for t in "vost"}
    if counts["v"] != 1 or counts["o"] != 1 or counts["s"] != 1 or counts["t"] < 1:
        raise ParseError("SDP needs exactly one v=, o=, s= and at least one t= line")
    Origin.parse(next(ln.value for ln in session if ln.type == "o"))
    for line in session:
        if line.type == "t":
            fields = line.value.split(" ")
            if len(fields) != 2:
                raise ParseError(f"malformed t= line {line.value[:40]!r}")
            for f in fields:
                parse_int(f, 0, 2**64 - 1, "t=")
