"""RL sampling throughput: `vectorization=sync` against `async` with W workers, on HalfCheetah-v5
(`--env halfcheetah`, the paper's locomotion) or Meta-World ML1 reach (`--env metaworld`, some 14x
slower per step, where async matters most).

Each contender is mamlrun's EpisodeSampler (the paper's 100x100 Gaussian policy on the CPU, masks,
task rewards, kept step-info signals) on the same tasks and seeds, so every contender samples the very same episodes (the
script checks it). Contenders are interleaved round by round (the machine may be shared), each
first sampling one untimed batch that builds its vector env and starts its workers. The time
spent inside the vector env's step is measured apart from the rest, which gives the model printed
at the end, for W workers on W free cores:

    steps/s(W) ~= n / (t_main + W * t_msg + n * t_env / W)

n environments; t_main the main process's time per vector step outside the vector env (policy,
masks); t_env one environment step (sync's env.step time / n), which the workers share out;
t_msg one worker's message round trip with n environments' worth of data, measured on
environments that do no physics (the fastest of 100 steps, as on a node whose cores are free).
W * t_msg overstates the messages' cost (a worker's share of the data shrinks as W grows), so
the model is a floor; the linear `W x one core's rate` is the ceiling.

    python scripts/bench_sampling.py                          # 40 tasks x 20 episodes x 200 steps
    python scripts/bench_sampling.py --env metaworld          # ml1_reach_cpu's batch: 10 x 10 x 150
    python scripts/bench_sampling.py --workers 1,2,4,8,16     # on a 16-core node
    python scripts/bench_sampling.py --tasks 10 --rounds 3    # smaller, steadier medians
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from mamlrun.domains.rl.locomotion import GymVectorEnv, LocomotionFamily
from mamlrun.domains.rl.metaworld import MetaWorldFamily
from mamlrun.domains.rl.sampler import EpisodeSampler
from mamlrun.models import GaussianPolicy
from mamlrun.runtime.threads import usable_cores


class HollowEnv(gym.Env):
    """An environment's spaces and step info, no physics: what a worker's messages carry, at no cost."""

    def __init__(self, obs_dim: int, act_dim: int, info: dict[str, float]) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (act_dim,), np.float32)
        self.info = info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(self.observation_space.shape), {}

    def step(self, action):
        return np.zeros(self.observation_space.shape), 0.0, False, False, dict(self.info)


@dataclass(frozen=True)
class Workload:
    """What one `--env` samples: its family, its spaces and step info, and its default batch."""

    title: str
    make_family: Callable[..., Any]  # (horizon=, vectorization=, workers=) -> a task family
    obs_dim: int
    act_dim: int
    info: dict[str, float]  # one step's info (the hollow environment returns it)
    batch: tuple[int, int, int]  # default tasks, episodes per task, horizon


WORKLOADS = {
    "halfcheetah": Workload(
        "HalfCheetah-v5 velocity",
        functools.partial(LocomotionFamily, "HalfCheetah-v5"),
        17,
        6,
        {"x_position": 0.0, "x_velocity": 0.1, "reward_forward": 0.1, "reward_ctrl": -0.1},
        (40, 20, 200),  # the paper's batch
    ),
    "metaworld": Workload(
        "Meta-World ML1 reach-v3 (reward v2)",
        functools.partial(MetaWorldFamily, "ML1", "reach-v3"),
        39,
        4,
        dict.fromkeys(("success", "near_object", "grasp_success", "grasp_reward"), 0.0)
        | dict.fromkeys(("in_place_reward", "obj_to_target", "unscaled_reward"), 0.0),
        (10, 10, 150),  # ml1_reach_cpu's batch
    ),
}


def message_cost(workload: Workload, n: int, steps: int = 100) -> float:
    """t_msg: what one async worker adds to a vector step of n environments, over stepping them
    in this process (the fastest of `steps` steps each way: scheduling delays left out)."""
    fastest = {}
    for vectorization in ("sync", "async"):
        make = functools.partial(HollowEnv, workload.obs_dim, workload.act_dim, workload.info)
        env = GymVectorEnv(make, n, vectorization, workers=1)
        try:
            env.reset(list(range(n)))
            actions, samples = torch.zeros(n, workload.act_dim), []
            for _ in range(steps):
                start = time.perf_counter()
                env.step(actions)
                samples.append(time.perf_counter() - start)
        finally:
            env.close()
        fastest[vectorization] = min(samples)
    return max(0.0, fastest["async"] - fastest["sync"])


class StepClock:
    """The wall time this process spends in `GymVectorEnv.step`, added up in `seconds`.

    The method is wrapped on the class, not on a family, so the families stay picklable for the
    async workers; contenders sample one after another, so one total, reset before each, is enough."""

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        step = GymVectorEnv.step

        def timed(env: GymVectorEnv, actions: torch.Tensor):
            start = time.perf_counter()
            try:
                return step(env, actions)
            finally:
                cls.seconds += time.perf_counter() - start

        GymVectorEnv.step = timed  # type: ignore[method-assign]


@dataclass
class Contender:
    """One vectorization setting, its sampler and its timings (one entry per round)."""

    label: str
    vectorization: str
    workers: int | None
    sampler: EpisodeSampler | None = None
    rates: list[float] = field(default_factory=list)  # env steps/s
    in_step: list[float] = field(default_factory=list)  # seconds in env.step per vector step
    outside: list[float] = field(default_factory=list)  # seconds elsewhere per vector step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", choices=sorted(WORKLOADS), default="halfcheetah", help="what to sample")
    parser.add_argument(
        "--tasks", type=int, help="tasks per batch (halfcheetah: 40, the paper's; metaworld: 10)"
    )
    parser.add_argument("--episodes", type=int, help="episodes per task (halfcheetah: 20; metaworld: 10)")
    parser.add_argument("--horizon", type=int, help="episode length (halfcheetah: 200; metaworld: 150)")
    parser.add_argument("--workers", default="1,2", help="async worker counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="timed batches per contender")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the main process (mamlrun's `threads`); 1 by default: OpenMP threads "
        "spinning after each policy call take the cores the workers step on",
    )
    args = parser.parse_args()
    workload = WORKLOADS[args.env]
    for name, default in zip(("tasks", "episodes", "horizon"), workload.batch, strict=True):
        setattr(args, name, getattr(args, name) or default)

    n = args.tasks * args.episodes
    torch.set_num_threads(args.threads)
    print(
        f"{workload.title}: {args.tasks} tasks x {args.episodes} episodes x {args.horizon} steps "
        f"= {n * args.horizon:,} env steps per batch ({n} envs); {usable_cores()} usable cores, "
        f"torch {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    torch.manual_seed(0)
    policy = GaussianPolicy(workload.obs_dim, workload.act_dim, hidden=[100, 100])
    params = {k: v.detach() for k, v in policy.named_parameters()}
    contenders = [Contender("sync", "sync", None)]
    for w in (int(x) for x in args.workers.split(",")):
        contenders.append(Contender(f"async, {w} worker{'s' if w > 1 else ''}", "async", w))
    tasks = workload.make_family().sample_tasks(args.tasks, np.random.default_rng(0))
    reference = None
    StepClock.install()
    try:
        for c in contenders:
            family = workload.make_family(
                horizon=args.horizon, vectorization=c.vectorization, workers=c.workers
            )
            c.sampler = EpisodeSampler(family, policy, args.episodes, torch.device("cpu"))
            c.sampler.sample(tasks, params, False, np.random.default_rng(1), torch.Generator().manual_seed(1))
        for _ in range(args.rounds):
            for c in contenders:
                assert c.sampler is not None
                StepClock.seconds = 0.0
                start = time.perf_counter()
                eps = c.sampler.sample(
                    tasks, params, False, np.random.default_rng(2), torch.Generator().manual_seed(2)
                )
                seconds = time.perf_counter() - start
                vector_steps = int(eps.mask[0, :, 0].sum())  # neither environment ends an episode early
                c.rates.append(eps.env_steps / seconds)
                c.in_step.append(StepClock.seconds / vector_steps)
                c.outside.append((seconds - StepClock.seconds) / vector_steps)
                batch = (eps.obs, eps.actions, eps.rewards, *eps.signals.values())
                reference = reference or batch
                assert all(map(torch.equal, reference, batch)), f"{c.label} sampled other episodes"
    finally:
        for c in contenders:
            if c.sampler is not None:
                c.sampler.close()

    base = statistics.median(contenders[0].rates)
    print(
        f"\n| setting | env steps/s (median of {args.rounds}) | vs sync | ms per vector step in env.step / outside |"
    )
    print("|---|---|---|---|")
    for c in contenders:
        rate = statistics.median(c.rates)
        inside, outside = 1e3 * statistics.median(c.in_step), 1e3 * statistics.median(c.outside)
        print(f"| {c.label} | {rate:,.0f} | {rate / base:.2f}x | {inside:.1f} / {outside:.1f} |")

    t_env = statistics.median(contenders[0].in_step) / n
    t_main = statistics.median(contenders[0].outside)
    t_msg = message_cost(workload, n)
    print(
        f"\nmodel: t_main {1e3 * t_main:.2f} ms, t_msg {1e3 * t_msg:.2f} ms, t_env {1e6 * t_env:.1f} us "
        f"(one core: {1 / t_env:,.0f} env steps/s)"
    )
    print("| workers on free cores | floor: n / (t_main + W t_msg + n t_env / W) | ceiling: W x one core |")
    print("|---|---|---|")
    for w in (1, 2, 4, 8, 16):
        floor = n / (t_main + w * t_msg + n * t_env / w)
        print(f"| {w} | {floor:,.0f} | {w / t_env:,.0f} |")


if __name__ == "__main__":  # needed: async workers start from a fork server, which imports this file
    main()
