"""How many CPUs this process may really use: its affinity mask, capped by a cgroup quota.

``os.cpu_count()`` counts the host's CPUs; a container limited to two CPUs (cgroup v2
``cpu.max``, v1 ``cpu.cfs_quota_us``) or a process pinned with ``taskset`` must size its
worker pool by what it is granted, or workers would time-share a core and add latency.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

__all__ = ["cgroup_quota_cpus", "parse_cpu_max", "parse_cpu_quota_v1", "usable_cpus"]

#: Where the cgroup v2 unified hierarchy and the v1 cpu controller are mounted.
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a cgroup v2 ``cpu.max`` (``"$MAX $PERIOD"``; ``max`` = unlimited)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def parse_cpu_quota_v1(quota_text: str, period_text: str) -> float | None:
    """CPUs granted by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1 = none)."""
    try:
        quota, period = int(quota_text.strip()), int(period_text.strip())
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _own_cgroup_v2(proc_cgroup: str) -> str | None:
    """This process's cgroup v2 path from ``/proc/self/cgroup`` (the ``0::/path`` line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_quota_cpus(root: Path = CGROUP_ROOT, proc_cgroup: str | None = None) -> float | None:
    """The tightest CPU quota of this process's cgroup and its ancestors (v2), or of the
    v1 cpu controller; None when there is none or it cannot be read."""
    if proc_cgroup is None:
        proc_cgroup = _read(Path("/proc/self/cgroup")) or ""
    tightest: float | None = None
    own = _own_cgroup_v2(proc_cgroup)
    if own is not None:
        path = Path(own.lstrip("/"))
        # A limit set on any ancestor applies as well; walk up to the root.
        while True:
            text = _read(root / path / "cpu.max")
            quota = parse_cpu_max(text) if text is not None else None
            if quota is not None:
                tightest = quota if tightest is None else min(tightest, quota)
            if path == Path(".") or str(path) == "":
                break
            path = path.parent
    if tightest is None:
        for controller in ("cpu", "cpu,cpuacct"):
            quota_text = _read(root / controller / "cpu.cfs_quota_us")
            period_text = _read(root / controller / "cpu.cfs_period_us")
            if quota_text is not None and period_text is not None:
                tightest = parse_cpu_quota_v1(quota_text, period_text)
                break
    return tightest


def usable_cpus(affinity: int | None = None, quota: float | None = None) -> int:
    """CPUs for workers: the affinity mask's size, capped by the quota rounded up (a quota
    of 1.5 CPUs still lets two workers each use part of a core), and at least one."""
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            affinity = os.cpu_count() or 1
    count = affinity
    if quota is not None:
        count = min(count, max(1, math.ceil(quota - 1e-9)))
    return max(1, count)
