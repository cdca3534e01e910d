"""Parallel RL sampling: `vectorization=async` with `workers` processes gives the episodes `sync` gives.

Real MuJoCo HalfCheetah through the real sampler; a toy env whose episodes end at different steps
checks the merged step info; workers that raise or die end in one-line errors, never a hang.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import time

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from mamlrun.domains.rl.locomotion import (
    GroupedAsyncVectorEnv,
    GymVectorEnv,
    LocomotionFamily,
    WorkerCrashed,
    split_evenly,
)
from mamlrun.domains.rl.sampler import Episodes, EpisodeSampler, RolloutError
from mamlrun.models.policy import GaussianPolicy
from mamlrun.runtime.errors import ConfigError
from mamlrun.runtime.threads import usable_cores
from tests.toys import CountdownEnv, CountdownFamily

CPU = torch.device("cpu")
FIELDS = ("obs", "actions", "rewards", "mask", "log_probs")


def sample_twice(vectorization: str, workers: int | None) -> list[Episodes]:
    """Two batches (3 tasks x 3 episodes of 25 steps: 9 envs, so 2 workers get 5 and 4) from one
    sampler: shared parameters, then one parameter set per task. Same seeds for every call."""
    family = LocomotionFamily(
        "HalfCheetah-v5", "velocity", horizon=25, vectorization=vectorization, workers=workers
    )
    torch.manual_seed(0)
    policy = GaussianPolicy(family.obs_dim, family.act_dim, hidden=[16])
    params = dict(policy.named_parameters())
    per_task = {k: torch.stack([v + 0.1 * i for i in range(3)]) for k, v in params.items()}
    sampler = EpisodeSampler(family, policy, rollouts=3, device=CPU)
    rng, noise = np.random.default_rng(7), torch.Generator().manual_seed(8)
    try:
        tasks = family.sample_tasks(3, rng)
        return [
            sampler.sample(tasks, params, False, rng, noise),
            sampler.sample(tasks, per_task, True, rng, noise),
        ]
    finally:
        sampler.close()


def test_async_sampling_gives_the_same_episodes_as_sync():
    """Bit for bit: observations, actions, rewards, masks and log-probabilities, 1 and 2 workers."""
    want = sample_twice("sync", None)
    assert want[0].env_steps == 9 * 25 and not torch.equal(want[0].obs, want[1].obs)
    for workers in (2, 1):
        got = sample_twice("async", workers)
        for w, g in zip(want, got, strict=True):
            for field in FIELDS:
                assert torch.equal(getattr(w, field), getattr(g, field)), (workers, field)


class RaggedEnv(gym.Env):
    """Episodes of 2-5 steps (set by the reset seed), and info keys only some steps have, so the
    groups of different workers autoreset and report keys at different steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.length = 0, 2 + int(self.np_random.integers(0, 4))
        return self.np_random.normal(size=3), {"started": True}

    def step(self, action):
        self.t += 1
        info = {"speed": float(action.sum()), "label": f"t{self.t}"}
        if self.t % 2:
            info["odd"] = np.full(2, self.t)
        obs = self.np_random.normal(size=3) + action.sum()
        return obs, float(self.t * action[0]), self.t >= self.length, False, info


def test_grouped_steps_and_infos_equal_sync_vector_env():
    """Step by step against gymnasium's SyncVectorEnv on 5 envs in 3 uneven groups (the first of
    one env, so whole groups lack a key): observations, rewards, flags and every info array (a
    missing entry filled as SyncVectorEnv fills it: 0, False, or None for objects)."""
    n, seeds = 5, [11, 12, 13, 14, 15]
    sync = SyncVectorEnv([RaggedEnv] * n, autoreset_mode=AutoresetMode.NEXT_STEP)
    grouped = GroupedAsyncVectorEnv(RaggedEnv, n, workers=3)
    try:
        assert grouped.bounds == [(0, 1), (1, 3), (3, 5)]
        (o1, i1), (o2, i2) = sync.reset(seed=seeds), grouped.reset(seed=seeds)
        np.testing.assert_array_equal(o1, o2)
        assert i1.keys() == i2.keys()
        rng = np.random.default_rng(0)
        for _ in range(20):
            actions = rng.uniform(-1, 1, (n, 2))
            want, got = sync.step(actions), grouped.step(actions)
            for w, g in zip(want[:4], got[:4], strict=True):
                assert w.dtype == g.dtype
                np.testing.assert_array_equal(w, g)
            assert want[4].keys() == got[4].keys()
            for key, value in want[4].items():
                assert value.dtype == got[4][key].dtype, key
                np.testing.assert_array_equal(value, got[4][key])
    finally:
        sync.close()
        grouped.close()


class SleepyEnv(gym.Env):
    """Each step waits 2 ms without using the CPU: parallel workers overlap however busy the CPU."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float64)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(3), {}

    def step(self, action):
        time.sleep(0.002)
        return np.zeros(3), 0.0, False, False, {}


def test_workers_step_their_groups_at_the_same_time():
    """8 envs x 2 ms a step: 16 ms a vector step in one process, about 4 ms with 4 workers."""

    def seconds_per_step(vectorization: str, workers: int) -> float:
        env = GymVectorEnv(SleepyEnv, 8, vectorization, workers=workers)
        try:
            env.reset(list(range(8)))
            start = time.perf_counter()
            for _ in range(10):
                env.step(torch.zeros(8, 1))
            return (time.perf_counter() - start) / 10
        finally:
            env.close()

    sync, grouped = seconds_per_step("sync", 1), seconds_per_step("async", 4)
    assert sync > 0.016 and grouped < 0.6 * sync, (sync, grouped)


def test_split_evenly():
    assert split_evenly(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert split_evenly(3, 8) == [(0, 1), (1, 2), (2, 3)]  # never an empty group
    assert split_evenly(5, 1) == [(0, 5)]


@pytest.mark.parametrize(
    "vectorization,workers,message",
    [
        (
            "async",
            0,
            "domain.tasks.workers=0 is invalid: the number of sampling processes must be an integer >= 1",
        ),
        ("async", "two", "domain.tasks.workers='two' is invalid"),
        ("async", True, "domain.tasks.workers=True is invalid"),
        ("async", 2.5, "domain.tasks.workers=2.5 is invalid"),
        ("sync", 4, "domain.tasks.workers=4 is invalid: sync uses 1 process; set vectorization=async"),
    ],
)
def test_bad_workers_is_a_one_line_config_error(vectorization, workers, message):
    with pytest.raises(ConfigError) as info:
        LocomotionFamily("HalfCheetah-v5", vectorization=vectorization, workers=workers)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_workers_default_to_the_usable_cores():
    assert LocomotionFamily("HalfCheetah-v5", vectorization="async").workers == usable_cores()
    assert LocomotionFamily("HalfCheetah-v5", vectorization="sync").workers == 1
    assert LocomotionFamily("HalfCheetah-v5", vectorization="sync", workers=1).workers == 1


class AsyncCountdown(CountdownFamily):
    """The toy family of test_rl, its environments on 2 worker processes."""

    def make_env(self, num_envs: int) -> GymVectorEnv:
        make = functools.partial(CountdownEnv, self.length, self.fail_at)
        return GymVectorEnv(make, num_envs, "async", workers=2)


def test_an_exception_in_a_worker_reads_as_it_does_with_sync():
    policy = GaussianPolicy(2, 1, hidden=[4])
    sampler = EpisodeSampler(AsyncCountdown(fail_at=3), policy, rollouts=2, device=CPU)
    with pytest.raises(
        RolloutError,
        match=r"^environment countdown raised during a rollout: RuntimeError: simulator exploded$",
    ):
        sampler.sample(
            [0.1, 0.2], dict(policy.named_parameters()), False, np.random.default_rng(0), torch.Generator()
        )
    processes = [p for env in sampler._envs.values() for p in env.envs._processes]
    sampler.close()
    assert len(processes) == 2 and not any(p.is_alive() for p in processes)


def test_a_dead_worker_is_a_one_line_error_not_a_hang():
    """SIGKILL one worker between steps, then between batches: the next call fails at once, names
    the worker, and close() still stops the rest."""
    family = LocomotionFamily("HalfCheetah-v5", horizon=10, vectorization="async", workers=2)
    vec = family.make_env(4)
    vec.set_tasks([0.5] * 4)
    vec.reset([1, 2, 3, 4])
    first, second = vec.envs._processes
    os.kill(second.pid, signal.SIGKILL)
    second.join()  # dead before the call: sending to it fails
    start = time.monotonic()
    with pytest.raises(
        WorkerCrashed, match=r"^sampling worker 1 of 2 \(environments 2-3\) stopped with exit code -9$"
    ):
        vec.step(torch.zeros(4, family.act_dim))
    with pytest.raises(WorkerCrashed, match="sampling worker 1 of 2"):  # and it stays failed
        vec.reset([1, 2, 3, 4])
    vec.close()
    vec.close()  # closing twice is fine
    assert time.monotonic() - start < 10 and not first.is_alive()

    policy = GaussianPolicy(family.obs_dim, family.act_dim, hidden=[4])
    sampler = EpisodeSampler(family, policy, rollouts=2, device=CPU)
    params, rng, noise = dict(policy.named_parameters()), np.random.default_rng(0), torch.Generator()
    sampler.sample([0.3, 1.2], params, False, rng, noise)
    os.kill(sampler._envs[4].envs._processes[0].pid, signal.SIGKILL)  # dying while the call waits
    message = (
        r"^environment HalfCheetah-v5 velocity raised during a rollout: WorkerCrashed: sampling worker 0 of 2"
    )
    with pytest.raises(RolloutError, match=message):
        sampler.sample([0.3, 1.2], params, False, rng, noise)
    sampler.close()


def test_async_needs_a_factory_that_pickles():
    with pytest.raises(TypeError, match="vectorization=async needs an environment factory that pickles"):
        GymVectorEnv(lambda: CountdownEnv(3), 2, "async", workers=2)


def test_workers_stop_when_the_vector_env_is_collected():
    vec = GymVectorEnv(functools.partial(CountdownEnv, 3), 3, "async", workers=3)
    processes = list(vec.envs._processes)
    assert all(p.is_alive() for p in processes)
    del vec
    gc.collect()
    assert not any(p.is_alive() for p in processes)
