"""Which kernels a test run uses, decided in one place (fixtures for tests/ and bench/).

``SFU_NO_EXTENSIONS=1``: the run checks the pure-Python references only, and tests that need
the compiled kernels are skipped. ``SFU_EXPECT_COMPILED=1``: the compiled kernels must load, and
every test that needs them fails (never skips) when they do not. Otherwise the compiled kernels
are used when built and their tests skipped when not (a checkout without a compiler).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from sfu.core.kernels import REFERENCE, Kernels, compiled, default_kernels

__all__ = [
    "EXPECT_COMPILED",
    "NO_EXTENSIONS",
    "compiled_kernels",
    "compiled_or_skip",
    "each_kernels",
    "kernels",
    "load_compiled",
    "selected_kernels",
]

NO_EXTENSIONS = os.environ.get("SFU_NO_EXTENSIONS", "") not in ("", "0")
EXPECT_COMPILED = os.environ.get("SFU_EXPECT_COMPILED") == "1"


def _unavailable(what: str, exc: ImportError) -> None:
    if EXPECT_COMPILED:
        pytest.fail(f"SFU_EXPECT_COMPILED=1 but {what} did not load: {exc}")
    pytest.skip(f"{what} is not built: {exc}")


def load_compiled(module: str) -> ModuleType:
    """Import a compiled module (e.g. ``sfu._fastpath._srtp``), or skip or fail the calling
    test as the run's selection says."""
    if NO_EXTENSIONS:
        pytest.skip("compiled kernels disabled by SFU_NO_EXTENSIONS=1")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        _unavailable(module, exc)
        raise  # not reached: skip and fail raise


def compiled_or_skip() -> Kernels:
    """The compiled bundle, or skip or fail the calling test as the run's selection says."""
    if NO_EXTENSIONS:
        pytest.skip("compiled kernels disabled by SFU_NO_EXTENSIONS=1")
    try:
        return compiled()
    except ImportError as exc:
        _unavailable("the compiled kernels", exc)
        raise  # not reached: skip and fail raise


def selected_kernels() -> Kernels:
    """The bundle the application selects (``default_kernels()``); fails the calling test
    when SFU_EXPECT_COMPILED=1 and that is not the compiled one."""
    selected = default_kernels()
    if EXPECT_COMPILED and selected is REFERENCE:
        pytest.fail("SFU_EXPECT_COMPILED=1 but the application selects the reference kernels")
    return selected


@pytest.fixture(scope="session")
def kernels() -> Kernels:
    """The bundle this run checks (see :func:`selected_kernels`)."""
    return selected_kernels()


@pytest.fixture(scope="session")
def compiled_kernels() -> Kernels:
    """The compiled bundle, for differential tests; skipped only when the run disabled it or
    it is not built and was not expected."""
    return compiled_or_skip()


@pytest.fixture(scope="session", params=["python", "cython"])
def each_kernels(request: pytest.FixtureRequest) -> Kernels:
    """Each bundle in turn: the references, then the compiled kernels (as compiled_kernels)."""
    return REFERENCE if request.param == "python" else compiled_or_skip()
