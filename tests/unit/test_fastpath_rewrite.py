"""The RTP rewrite kernel: its contract, and byte-for-byte agreement of compiled and reference."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kernel_selection import EXPECT_COMPILED, NO_EXTENSIONS

import sfu._fastpath

# Imported directly (not via the selector) so the equivalence test always compares the two,
# whichever implementation the rest of this run uses. `make test` always builds it.
from sfu._fastpath import _rewrite as _rewrite_c  # type: ignore[attr-defined,unused-ignore]
from sfu._fastpath import _rewrite_py

KERNELS = [
    pytest.param(_rewrite_py.rewrite_rtp, id="python"),
    pytest.param(_rewrite_c.rewrite_rtp, id="cython"),
]


def test_selected_implementation_matches_environment() -> None:
    """Fails when the compiled build was expected but did not load (or vice versa)."""
    if NO_EXTENSIONS:
        assert sfu._fastpath.IMPLEMENTATION == "python"
        assert sfu._fastpath.rewrite_rtp is _rewrite_py.rewrite_rtp
    elif EXPECT_COMPILED:
        assert sfu._fastpath.IMPLEMENTATION == "cython"
        assert sfu._fastpath.rewrite_rtp is _rewrite_c.rewrite_rtp
    else:
        assert sfu._fastpath.IMPLEMENTATION in ("cython", "python")


def _packet(
    *,
    marker: bool = False,
    pt: int = 96,
    seq: int = 1,
    ts: int = 1000,
    ssrc: int = 0x11223344,
    csrcs: tuple[int, ...] = (),
    ext: bytes | None = None,
    payload: bytes = b"\x90\x80\x00payload",
    padding: int = 0,
) -> bytes:
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if ext is not None else 0) | len(csrcs)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if ext is not None:
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


@pytest.mark.parametrize("kernel", KERNELS)
def test_rewrites_only_the_header_fields(kernel: object) -> None:
    ext = bytes([0x10, 0xAB, 0x00, 0x00])  # one-byte extension id 1, one padding word
    src = _packet(marker=True, csrcs=(7, 8), ext=ext, padding=4)
    dst = bytearray(1500)
    n = kernel(src, dst, 0xDEADBEEF, 0x1_0000_0005, 0x2_0000_0010, 111, -1)  # type: ignore[operator]
    assert n == len(src)
    out = bytes(dst[:n])
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", out)
    assert (b0, b1 & 0x80, b1 & 0x7F, seq, ts, ssrc) == (src[0], 0x80, 111, 5, 0x10, 0xDEADBEEF)
    assert out[12:] == src[12:]  # CSRCs, extensions, payload and padding untouched


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("marker,expected", [(0, 0), (1, 0x80)])
def test_marker_can_be_forced(kernel: object, marker: int, expected: int) -> None:
    src = _packet(marker=not expected)
    dst = bytearray(len(src))
    assert kernel(src, dst, 1, 2, 3, 96, marker) == len(src)  # type: ignore[operator]
    assert dst[1] & 0x80 == expected


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(
    "src",
    [
        b"",
        b"\x80" * 11,  # shorter than the fixed header
        b"\x40" + bytes(15),  # version 1
        bytes([0x8F]) + bytes(20),  # 15 CSRCs announced, 20 bytes present
        bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x05",  # extension longer than the packet
        bytes([0xA0]) + bytes(11) + b"\x00",  # padding count 0
        bytes([0xA0]) + bytes(11) + b"\x10",  # padding longer than the packet
    ],
)
def test_malformed_packets_are_refused(kernel: object, src: bytes) -> None:
    dst = bytearray(1500)
    assert kernel(src, dst, 1, 2, 3, 96, -1) == sfu._fastpath.MALFORMED  # type: ignore[operator]
    assert dst == bytearray(1500)  # nothing written


@pytest.mark.parametrize("kernel", KERNELS)
def test_destination_too_small(kernel: object) -> None:
    src = _packet()
    assert kernel(src, bytearray(len(src) - 1), 1, 2, 3, 96, -1) == sfu._fastpath.NO_ROOM  # type: ignore[operator]


@pytest.mark.parametrize("kernel", KERNELS)
def test_argument_errors_are_identical(kernel: object) -> None:
    src, dst = _packet(), bytearray(1500)
    with pytest.raises(OverflowError):
        kernel(src, dst, -1, 0, 0, 96, -1)  # type: ignore[operator]
    with pytest.raises(OverflowError):
        kernel(src, dst, 0, 1 << 64, 0, 96, -1)  # type: ignore[operator]
    with pytest.raises(ValueError):
        kernel(src, dst, 0, 0, 0, 128, -1)  # type: ignore[operator]
    with pytest.raises(ValueError):
        kernel(src, dst, 0, 0, 0, 96, 2)  # type: ignore[operator]


_u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)


@given(
    src=st.one_of(
        st.binary(max_size=64),
        st.builds(
            _packet,
            marker=st.booleans(),
            pt=st.integers(0, 127),
            seq=st.integers(0, 0xFFFF),
            ts=st.integers(0, 0xFFFFFFFF),
            csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=15).map(tuple),
            ext=st.one_of(st.none(), st.binary(max_size=8).map(lambda b: b + bytes(-len(b) % 4))),
            payload=st.binary(max_size=64),
            padding=st.integers(0, 8),
        ),
    ),
    dst_size=st.integers(0, 200),
    ssrc=_u64,
    seq=_u64,
    ts=_u64,
    pt=st.integers(0, 127),
    marker=st.sampled_from([-1, 0, 1]),
)
def test_compiled_and_reference_agree_byte_for_byte(
    src: bytes, dst_size: int, ssrc: int, seq: int, ts: int, pt: int, marker: int
) -> None:
    fill = bytes(range(256)) * 2
    d_py, d_c = bytearray(fill[:dst_size]), bytearray(fill[:dst_size])
    r_py = _rewrite_py.rewrite_rtp(src, d_py, ssrc, seq, ts, pt, marker)
    r_c = _rewrite_c.rewrite_rtp(src, d_c, ssrc, seq, ts, pt, marker)
    assert r_py == r_c
    assert d_py == d_c
