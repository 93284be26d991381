"""pytest-benchmark configuration for the micro-benchmarks in bench/."""

from __future__ import annotations

import sfu._fastpath


def pytest_report_header() -> str:
    return f"sfu fast path (selected): {sfu._fastpath.IMPLEMENTATION}"
