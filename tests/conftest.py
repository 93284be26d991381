"""Shared test configuration: hypothesis profiles and the kernels the run checks."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The fixtures that hand tests their kernel bundle (shared with bench/conftest.py).
from kernel_selection import compiled_kernels, each_kernels, kernels

import sfu._fastpath

__all__ = ["compiled_kernels", "each_kernels", "kernels"]

# CI machines are small and shared: keep property tests deterministic and free of flaky deadlines.
settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def pytest_report_header() -> str:
    return f"sfu fast path: {sfu._fastpath.IMPLEMENTATION}"
