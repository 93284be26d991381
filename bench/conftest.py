"""pytest-benchmark configuration for the micro-benchmarks in bench/."""

from __future__ import annotations

# The fixtures that hand benchmarks their kernel bundle (the tests' own, see tests/conftest.py).
from kernel_selection import compiled_kernels, each_kernels, kernels

import sfu._fastpath

__all__ = ["compiled_kernels", "each_kernels", "kernels"]


def pytest_report_header() -> str:
    return f"sfu fast path (selected): {sfu._fastpath.IMPLEMENTATION}"
