"""How many CPUs this process may keep busy: the affinity mask and the cgroup (v2 or v1) quota."""

from __future__ import annotations

import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup CPU quota when there is one."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    # Round a fractional quota down (1.5 CPUs -> 1), but never below 1: never more busy threads
    # than the quota, or they are throttled in turn and every one of them runs slower.
    return max(1, min(cpus, int(quota))) if quota else cpus


def _cgroup_cpu_quota() -> float | None:
    """The quota in CPUs (``quota / period``), from cgroup v2's cpu.max or v1's cfs files; None when unlimited."""
    try:
        quota, period = (CGROUP / "cpu.max").read_text().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((CGROUP / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((CGROUP / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None
