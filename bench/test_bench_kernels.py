"""Micro-benchmarks of the fast-path kernels, compiled and pure-Python side by side.

Run with `make bench`. Absolute figures depend on the machine; compare the two
implementations (and successive commits) measured in the same run.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from sfu._fastpath import _rewrite as _rewrite_c  # type: ignore[attr-defined,unused-ignore]
from sfu._fastpath import _rewrite_py

# A 1200-byte VP8-like packet with a one-byte extension block (mid, abs-send-time, twcc).
_EXT = bytes([0x10, ord("0"), 0x22, 1, 2, 3, 0x31, 0, 7, 0, 0, 0])
PACKET = (
    struct.pack("!BBHII", 0x90, 96, 1000, 90000, 0x1234)
    + struct.pack("!HH", 0xBEDE, len(_EXT) // 4)
    + _EXT
)
PACKET += bytes(1200 - len(PACKET))

KERNELS = [
    pytest.param(_rewrite_py.rewrite_rtp, id="python"),
    pytest.param(_rewrite_c.rewrite_rtp, id="cython"),
]


@pytest.mark.parametrize("kernel", KERNELS)
def test_rewrite_rtp_1200b(benchmark: BenchmarkFixture, kernel: Callable[..., int]) -> None:
    dst = bytearray(1500)
    result = benchmark(kernel, PACKET, dst, 0xCAFE, 70000, 123456789, 100, -1)
    assert result == len(PACKET)


@pytest.mark.parametrize("kernel", KERNELS)
def test_rewrite_rtp_fanout_10(benchmark: BenchmarkFixture, kernel: Callable[..., int]) -> None:
    """One ingress packet rewritten for ten subscribers, as the forwarder does per packet."""
    buffers = [bytearray(1500) for _ in range(10)]

    def fanout() -> int:
        total = 0
        for i, dst in enumerate(buffers):
            total += kernel(PACKET, dst, 0x1000 + i, 500 + i, 9000 + i, 96, -1)
        return total

    assert benchmark(fanout) == 10 * len(PACKET)
