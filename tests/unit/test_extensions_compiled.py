"""The compiled header-extension rewriter (``sfu._fastpath._extensions``) against the reference.

Hypothesis draws publisher / subscriber id->URI mappings (hidden URIs, abs-send-time, ids up to
255 and beyond) and RTP packets with one-byte, two-byte and unknown extension profiles, well
formed, truncated or random, and a ``length`` that may disagree with the buffer: both
``ExtensionRewriter`` classes must agree on ``identity``, on every byte after ``apply`` and on
every exception. Examples run against both. Under SFU_NO_EXTENSIONS=1 the compiled class is not
used.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.core import header_extensions as ext_py
from sfu.core.kernels import Kernels
from sfu.packet.extensions import (
    ABS_SEND_TIME_URI,
    AUDIO_LEVEL_URI,
    MID_URI,
    REPAIRED_RID_URI,
    RID_URI,
    TOFFSET_URI,
    TRANSPORT_CC_URI,
)


@pytest.fixture(scope="module")
def cls(each_kernels: Kernels) -> type[Any]:
    """Each implementation in turn: the reference, then the compiled class."""
    return each_kernels.ExtensionRewriter


@pytest.fixture(scope="module")
def compiled_cls(compiled_kernels: Kernels) -> type[Any]:
    """The compiled class (skipped or failed as the run's kernel selection says)."""
    return compiled_kernels.ExtensionRewriter


PUBLISHER = {1: AUDIO_LEVEL_URI, 2: ABS_SEND_TIME_URI, 3: TRANSPORT_CC_URI, 4: MID_URI}
SUBSCRIBER = {5: AUDIO_LEVEL_URI, 6: ABS_SEND_TIME_URI, 7: MID_URI, 8: TRANSPORT_CC_URI}


def rtp(profile: int, body: bytes, *, words: int | None = None, csrcs: int = 0) -> bytearray:
    """An RTP packet with header extension ``profile`` / ``body`` and a 2-byte payload."""
    n = len(body) // 4 if words is None else words
    head = bytes([0x90 | csrcs, 96, 0, 1]) + bytes(8) + bytes(4 * csrcs)
    return bytearray(head + profile.to_bytes(2, "big") + n.to_bytes(2, "big") + body + b"pp")


def outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    """A call's result or its exception's type and message."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # the exception itself is what is compared
        return ("raised", type(exc), str(exc))


# -- examples, both implementations --------------------------------------------------------


def test_one_byte_ids_hidden_and_abs_send_time_restamped(cls: Any) -> None:
    rw = cls(PUBLISHER, SUBSCRIBER)
    assert rw.identity is False
    # audio level (id 1, 1 byte), abs-send-time (id 2, 3 bytes), mid (id 4, 1 byte), padding.
    buf = rtp(0xBEDE, bytes([0x10, 0x7F, 0x22, 0, 0, 1, 0x40, 0x61, 0, 0, 0, 0]))
    rw.apply(buf, len(buf), 0xABCDEF)
    # 1 -> 5; 2 -> 6 with our send time; mid -> 1, the lowest id the subscriber lacks.
    assert buf[16:28] == bytes([0x50, 0x7F, 0x62, 0xAB, 0xCD, 0xEF, 0x10, 0x61, 0, 0, 0, 0])


def test_two_byte_form(cls: Any) -> None:
    rw = cls(PUBLISHER, SUBSCRIBER)
    buf = rtp(0x1000, bytes([2, 3, 0, 0, 1, 0, 3, 1, 0x55, 0, 0, 0]))
    rw.apply(buf, len(buf), 0x010203)
    assert buf[16:28] == bytes([6, 3, 1, 2, 3, 0, 1, 1, 0x55, 0, 0, 0])


def test_identity_leaves_packets_alone(cls: Any) -> None:
    same = {1: AUDIO_LEVEL_URI, 3: TOFFSET_URI}
    rw = cls(same, same)
    assert rw.identity is True
    buf = rtp(0xBEDE, bytes([0x10, 0x7F, 0x32, 1, 2, 3, 0, 0]))
    before = bytes(buf)
    rw.apply(buf, len(buf), 0xFFFFFF)
    assert buf == before


def test_truncated_header_raises_index_error(cls: Any) -> None:
    rw = cls(PUBLISHER, SUBSCRIBER)
    buf = bytearray(b"\x90\x60" + bytes(11))  # X bit set, no room for the extension header
    with pytest.raises(IndexError):
        rw.apply(buf, len(buf), 0)


def test_read_only_buffers_behave_as_in_the_reference(compiled_cls: type[Any]) -> None:
    buf: Any = bytes(rtp(0xBEDE, bytes([0x10, 0x7F, 0, 0])))
    no_x: Any = b"\x80" + bytes(11)
    for cls in (ext_py.ExtensionRewriter, compiled_cls):
        with pytest.raises(TypeError, match="does not support item assignment"):
            cls(PUBLISHER, SUBSCRIBER).apply(buf, len(buf), 0)
        cls(PUBLISHER, SUBSCRIBER).apply(no_x, 12, 0)  # no X bit: no write


def test_transport_cc_stamped_with_the_subscriber_id_and_sequence(cls: Any) -> None:
    rw = cls(PUBLISHER, SUBSCRIBER)
    # transport-cc (publisher id 3, 2 bytes 0xAAAA), then audio level (id 1).
    body = bytes([0x31, 0xAA, 0xAA, 0x10, 0x7F, 0, 0, 0])
    buf = rtp(0xBEDE, body)
    assert rw.apply(buf, len(buf), 0, 0x1234) is True
    assert buf[16:21] == bytes([0x81, 0x12, 0x34, 0x50, 0x7F])
    # Without a sequence number the publisher's element is hidden, as before.
    buf = rtp(0xBEDE, body)
    assert rw.apply(buf, len(buf), 0) is False
    assert buf[16] >> 4 not in SUBSCRIBER and buf[17:19] == b"\xaa\xaa"
    # Two-byte form.
    buf = rtp(0x1000, bytes([3, 2, 0xAA, 0xAA]))
    assert rw.apply(buf, len(buf), 0, 7) is True
    assert buf[16:20] == bytes([8, 2, 0, 7])
    # A subscriber that did not negotiate transport-cc gets no stamp.
    plain = cls(PUBLISHER, {5: AUDIO_LEVEL_URI})
    buf = rtp(0xBEDE, body)
    assert plain.apply(buf, len(buf), 0, 9) is False


# -- differential --------------------------------------------------------------------------

_URIS = [
    AUDIO_LEVEL_URI,
    ABS_SEND_TIME_URI,
    TRANSPORT_CC_URI,
    MID_URI,
    RID_URI,
    REPAIRED_RID_URI,
    TOFFSET_URI,
    "urn:example:other",
]
_ids = st.one_of(st.integers(1, 16), st.integers(1, 255), st.sampled_from([0, 256, 300]))
_maps = st.dictionaries(_ids, st.sampled_from(_URIS), max_size=9)


@st.composite
def one_byte_body(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            out += bytes(draw(st.integers(1, 2)))  # padding
        ext_id = draw(st.integers(1, 15))
        data = draw(st.binary(min_size=1, max_size=16))
        out.append(ext_id << 4 | (len(data) - 1))
        out += data
    return bytes(out + bytes(-len(out) % 4))


@st.composite
def two_byte_body(draw: st.DrawFn) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            out.append(0)
        ext_id = draw(st.integers(1, 255))
        data = draw(st.binary(max_size=8))
        out += bytes([ext_id, len(data)]) + data
    return bytes(out + bytes(-len(out) % 4))


@st.composite
def packets(draw: st.DrawFn) -> bytearray:
    profile = draw(st.sampled_from([0xBEDE, 0x1000, 0x100F, 0x2000, 0xBEDF]))
    if profile == 0xBEDE:
        body = draw(st.one_of(one_byte_body(), st.binary(max_size=24)))
    else:
        body = draw(st.one_of(two_byte_body(), st.binary(max_size=24)))
    words = draw(st.one_of(st.none(), st.integers(0, 8)))
    buf = rtp(profile, body, words=words, csrcs=draw(st.integers(0, 2)))
    if draw(st.booleans()):
        buf[0] &= 0xEF  # no extension
    cut = draw(st.integers(0, len(buf)))
    return buf if draw(st.booleans()) else buf[:cut]


@settings(max_examples=300, deadline=None)
@given(
    source=_maps,
    dest=_maps,
    buf=packets(),
    length_delta=st.integers(-30, 8),
    exact_length=st.booleans(),
    abs_send_time=st.one_of(st.integers(0, 0xFFFFFF), st.integers(-(2**40), 2**40)),
    twcc_seq=st.one_of(st.just(-1), st.integers(0, 0xFFFF), st.integers(-(2**20), 2**20)),
)
def test_apply_matches_the_reference(
    compiled_cls: type[Any],
    source: dict[int, str],
    dest: dict[int, str],
    buf: bytearray,
    length_delta: int,
    exact_length: bool,
    abs_send_time: int,
    twcc_seq: int,
) -> None:
    ref = outcome(ext_py.ExtensionRewriter, source, dest)
    got = outcome(compiled_cls, source, dest)
    assert got[0] == ref[0]
    if ref[0] == "raised":
        assert got[1:] == ref[1:]
        return
    ref_rw, got_rw = ref[1], got[1]
    assert got_rw.identity == ref_rw.identity
    length = len(buf) if exact_length else len(buf) + length_delta
    ref_buf, got_buf = bytearray(buf), bytearray(buf)
    ref_out = outcome(ref_rw.apply, ref_buf, length, abs_send_time, twcc_seq)
    got_out = outcome(got_rw.apply, got_buf, length, abs_send_time, twcc_seq)
    assert got_out == ref_out
    assert got_buf == ref_buf
