"""How many CPU threads a job's torch may use: its share of the cores it may run on.

torch takes every core of the machine by default. Two jobs of a parallel sweep (or a Slurm job whose
cgroup grants fewer cores than the node has) then wait on each other's OpenMP threads: the sinusoid
preset ran 466 iterations/s alone on 2 cores and 2.5/s beside two busy processes, and 423/s with one
thread in the same place. So a job uses the cores it may use (its CPU affinity and cgroup quota,
not the node's count) divided by the jobs that share them; `threads=N` overrides, and a domain whose
work is too small to gain from threads sets 1.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from mamlrun.runtime.errors import ConfigError

CGROUP_V2_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def cgroup_cpu_limit(
    v2: Path = CGROUP_V2_MAX, v1: tuple[Path, Path] = (CGROUP_V1_QUOTA, CGROUP_V1_PERIOD)
) -> int | None:
    """The CPU quota of this process's cgroup in whole cores (rounded up), None when unlimited."""
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
        if v1[0].is_file() and v1[1].is_file():
            quota_us, period_us = int(v1[0].read_text()), int(v1[1].read_text())
            return None if quota_us <= 0 else max(1, math.ceil(quota_us / period_us))
    except (OSError, ValueError):
        return None
    return None


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (Slurm's cpuset, taskset), capped by a
    cgroup CPU quota (containers, Slurm's cgroup plugin)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit is not None else cores)


def thread_budget(setting: object, cores: int, parallel_jobs: int) -> int:
    """The threads a job uses: `setting` when it is a number, else (auto) cores / parallel jobs."""
    if setting == "auto":
        return max(1, cores // max(1, parallel_jobs))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise ConfigError("threads", setting, "auto (the job's share of its usable cores) or an integer >= 1")
    return setting


def parallel_jobs_of(launcher: dict | None, cores: int) -> int:
    """How many processes share this machine's cores: joblib's `n_jobs` (-1: one per core, -2: all
    but one, ...; 1 for every other launcher: basic runs jobs one by one, Slurm gives each job its
    own cores), times the processes torchrun starts on this node (LOCAL_WORLD_SIZE)."""
    jobs = 1
    if launcher and "joblib" in str(launcher.get("_target_", "")).lower():
        n_jobs = int(launcher.get("n_jobs") or 1)
        jobs = max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)
    return jobs * max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
