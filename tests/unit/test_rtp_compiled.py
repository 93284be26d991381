"""The compiled one-pass RTP parse (``sfu._fastpath._rtp``, the C parse the forwarder reads)
against the reference (``sfu.packet.rtp``).

Hypothesis draws RTP packets (CSRCs, one-byte, two-byte and unknown extension profiles with
padding octets, stop ids and duplicate ids, RTP padding) and mutates them (a flipped bit, a
cut, an inserted or deleted octet), plus random bytes: the compiled ``parse_rtp`` must give the
same RtpView or raise ParseError where the reference does, and its ``find_extension`` (the
forwarder's lookup of the transport-wide CC and audio level elements) must answer the
reference's ``find_extension`` for every id, errors included. Under SFU_NO_EXTENSIONS=1 the
compiled module is not used.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from fixture_files import edited
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_selection import load_compiled

from sfu.packet import rtp as rtp_py
from sfu.packet.errors import ParseError


@pytest.fixture(scope="module")
def compiled_rtp() -> Any:
    """The compiled parse (skipped or failed as the run's kernel selection says)."""
    return load_compiled("sfu._fastpath._rtp")


def outcome(fn: Callable[..., object], *args: object) -> object:
    try:
        return fn(*args)
    except ParseError:
        return ParseError  # messages may differ; the error type may not


@st.composite
def packets(draw: st.DrawFn) -> bytes:
    cc = draw(st.integers(0, 3))
    x = draw(st.booleans())
    pad = draw(st.sampled_from([0, 0, 1, 3, 200]))
    b0 = 0x80 | (0x20 if pad else 0) | (0x10 if x else 0) | cc
    out = struct.pack(
        "!BBHII",
        b0,
        draw(st.integers(0, 255)),
        draw(st.integers(0, 0xFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
        draw(st.integers(0, 0xFFFFFFFF)),
    )
    out += draw(st.binary(min_size=4 * cc, max_size=4 * cc))
    if x:
        profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x1003, 0x0001]))
        body = b""
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(st.sampled_from(["elem", "pad", "raw"]))
            if kind == "pad":
                body += b"\x00"
            elif kind == "raw":
                body += draw(st.binary(min_size=1, max_size=3))
            elif profile == 0xBEDE:
                ext_id = draw(st.integers(1, 15))
                value = draw(st.binary(min_size=1, max_size=16))
                body += bytes([(ext_id << 4) | (len(value) - 1)]) + value
            else:
                ext_id = draw(st.integers(1, 255))
                value = draw(st.binary(max_size=20))
                body += bytes([ext_id, len(value)]) + value
        body += bytes(-len(body) % 4)
        out += struct.pack("!HH", profile, len(body) // 4) + body
    out += draw(st.binary(max_size=30))
    if pad:
        out += bytes(pad - 1) + bytes([pad])
    return out


def _check(_compiled: Any, data: bytes) -> None:
    assert outcome(_compiled.parse_rtp, data) == outcome(rtp_py.parse_rtp, data)
    for ext_id in range(-1, 258):
        assert outcome(_compiled.find_extension, data, ext_id) == outcome(
            rtp_py.find_extension, data, ext_id
        )


@settings(max_examples=400, deadline=None)
@given(packets(), st.data())
def test_compiled_parse_matches_reference(
    compiled_rtp: Any, data: bytes, draw: st.DataObject
) -> None:
    _compiled = compiled_rtp
    _check(_compiled, data)
    _check(_compiled, edited(draw, data))
    view = outcome(_compiled.parse_rtp, data)
    assert outcome(_compiled.parse_rtp, bytearray(data)) == view
    assert outcome(_compiled.parse_rtp, memoryview(data)) == view


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60))
def test_compiled_parse_matches_reference_on_random_bytes(compiled_rtp: Any, data: bytes) -> None:
    _check(compiled_rtp, data)
    _check(compiled_rtp, b"\x90" + data)


def test_compiled_find_extension_takes_any_id(compiled_rtp: Any) -> None:
    _compiled = compiled_rtp
    data = struct.pack("!BBHII", 0x90, 96, 1, 2, 3) + b"\x10\x00\x00\x01\x05\x01\xaa\x00"
    assert _compiled.find_extension(data, 5) == b"\xaa" == rtp_py.find_extension(data, 5)
    assert _compiled.find_extension(data, 1 << 40) is None
    assert _compiled.find_extension(data, 0) is None
