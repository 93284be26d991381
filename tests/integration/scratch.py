"""Scratch directories for the test servers' files (audit records), removed at exit so that
repeated runs leave nothing in the system's temporary directory."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile


def scratch_dir(prefix: str = "sfu-test-audit-") -> str:
    """A new temporary directory that is deleted, with its contents, when the process exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(functools.partial(shutil.rmtree, path, ignore_errors=True))
    return path
