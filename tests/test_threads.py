"""Each job's torch threads: its share of the cores it may use, so parallel jobs do not collapse."""

from __future__ import annotations

import os

import pytest

from mamlrun.runtime.errors import ConfigError
from mamlrun.runtime.threads import cgroup_cpu_limit, parallel_jobs_of, thread_budget, usable_cores
from tests.conftest import compose_config, run_cli, smoke_overrides

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def test_the_budget_is_the_cores_divided_by_the_parallel_jobs():
    assert thread_budget("auto", 16, 4) == 4
    assert thread_budget("auto", 2, 4) == 1  # never zero
    assert thread_budget(3, 16, 4) == 3  # an explicit setting wins
    for bad in (0, -1, True, "many", 1.5):
        with pytest.raises(ConfigError, match=r"threads=.* is invalid: auto \(the job's share"):
            thread_budget(bad, 2, 1)


def test_parallel_jobs_come_from_joblibs_n_jobs_only():
    assert parallel_jobs_of({"_target_": JOBLIB, "n_jobs": 2}, 16) == 2
    assert parallel_jobs_of({"_target_": JOBLIB, "n_jobs": -1}, 16) == 16  # joblib: one per core
    assert parallel_jobs_of({"_target_": JOBLIB, "n_jobs": -2}, 16) == 15
    assert (
        parallel_jobs_of({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 16) == 1
    )
    assert parallel_jobs_of(None, 16) == 1


def test_a_cgroup_quota_caps_the_cores(tmp_path):
    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    v2.write_text("150000 100000\n")  # 1.5 CPUs
    assert cgroup_cpu_limit(v2, (quota, period)) == 2
    v2.write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, (quota, period)) is None
    v2.unlink()
    quota.write_text("300000\n")
    period.write_text("100000\n")
    assert cgroup_cpu_limit(v2, (quota, period)) == 3
    quota.write_text("-1\n")
    assert cgroup_cpu_limit(v2, (quota, period)) is None


def test_usable_cores_follow_the_cpu_affinity():
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # as taskset or a Slurm cpuset would
        assert usable_cores() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores() == min(len(before), cgroup_cpu_limit() or len(before))


def test_small_domains_pick_one_thread_and_the_rest_auto():
    assert compose_config([]).threads == 1  # sinusoid
    assert compose_config(["experiment=nav2d_smoke"]).threads == 1
    assert compose_config(["experiment=omniglot_minimal"]).threads == "auto"
    assert compose_config(["experiment=halfcheetah_dir_smoke", "threads=3"]).threads == 3


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_parallel_sweep_jobs_get_their_share_of_the_cores(tmp_path, n_jobs):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "hydra/launcher=local_parallel",
        f"hydra.launcher.n_jobs={n_jobs}",
        *smoke_overrides(tmp_path / "unused", "threads=auto", "seed=0,1", f"hydra.sweep.dir={sweep}"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    cores = usable_cores()
    expected = f"torch threads: {max(1, cores // n_jobs)} (threads=auto; {cores} usable cores, {n_jobs} parallel jobs)"
    for job in ("0", "1"):
        assert expected in (sweep / job / "mamlrun.log").read_text()
