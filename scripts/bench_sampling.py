"""RL sampling throughput on HalfCheetah-v5: `vectorization=sync` against `async` with W workers.

Each contender is mamlrun's EpisodeSampler (the paper's 100x100 Gaussian policy on the CPU, masks,
task rewards) on the same tasks and seeds, so every contender samples the very same episodes (the
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
    python scripts/bench_sampling.py --workers 1,2,4,8,16     # on a 16-core node
    python scripts/bench_sampling.py --tasks 10 --rounds 3    # smaller, steadier medians
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from mamlrun.domains.rl.locomotion import GymVectorEnv, LocomotionFamily
from mamlrun.domains.rl.sampler import EpisodeSampler
from mamlrun.models import GaussianPolicy
from mamlrun.runtime.threads import usable_cores


class HollowCheetah(gym.Env):
    """HalfCheetah's spaces and step info, no physics: what a worker's messages carry, at no cost."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (17,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(17), {}

    def step(self, action):
        info = {"x_position": 0.0, "x_velocity": 0.1, "reward_forward": 0.1, "reward_ctrl": -0.1}
        return np.zeros(17), 0.0, False, False, info


def message_cost(n: int, steps: int = 100) -> float:
    """t_msg: what one async worker adds to a vector step of n environments, over stepping them
    in this process (the fastest of `steps` steps each way: scheduling delays left out)."""
    fastest = {}
    for vectorization in ("sync", "async"):
        env = GymVectorEnv(HollowCheetah, n, vectorization, workers=1)
        try:
            env.reset(list(range(n)))
            actions, samples = torch.zeros(n, 6), []
            for _ in range(steps):
                start = time.perf_counter()
                env.step(actions)
                samples.append(time.perf_counter() - start)
        finally:
            env.close()
        fastest[vectorization] = min(samples)
    return max(0.0, fastest["async"] - fastest["sync"])


class TimedFamily(LocomotionFamily):
    """The locomotion family whose vector envs add the wall time they spend in `step` to a total."""

    step_seconds = 0.0

    def make_env(self, num_envs: int) -> GymVectorEnv:
        env = super().make_env(num_envs)
        step = env.step

        def timed(actions: torch.Tensor):
            start = time.perf_counter()
            try:
                return step(actions)
            finally:
                self.step_seconds += time.perf_counter() - start

        env.step = timed  # type: ignore[method-assign]
        return env


@dataclass
class Contender:
    """One vectorization setting, its sampler and its timings (one entry per round)."""

    label: str
    vectorization: str
    workers: int | None
    family: TimedFamily | None = None
    sampler: EpisodeSampler | None = None
    rates: list[float] = field(default_factory=list)  # env steps/s
    in_step: list[float] = field(default_factory=list)  # seconds in env.step per vector step
    outside: list[float] = field(default_factory=list)  # seconds elsewhere per vector step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=40, help="tasks per batch (the paper: 40)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task (the paper: 20)")
    parser.add_argument("--horizon", type=int, default=200, help="episode length (the paper: 200)")
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

    n = args.tasks * args.episodes
    torch.set_num_threads(args.threads)
    print(
        f"HalfCheetah-v5 velocity: {args.tasks} tasks x {args.episodes} episodes x {args.horizon} steps "
        f"= {n * args.horizon:,} env steps per batch ({n} envs); {usable_cores()} usable cores, "
        f"torch {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    torch.manual_seed(0)
    policy = GaussianPolicy(17, 6, hidden=[100, 100])
    params = {k: v.detach() for k, v in policy.named_parameters()}
    contenders = [Contender("sync", "sync", None)]
    for w in (int(x) for x in args.workers.split(",")):
        contenders.append(Contender(f"async, {w} worker{'s' if w > 1 else ''}", "async", w))
    tasks = LocomotionFamily("HalfCheetah-v5").sample_tasks(args.tasks, np.random.default_rng(0))
    reference = None
    try:
        for c in contenders:
            c.family = TimedFamily(
                "HalfCheetah-v5", horizon=args.horizon, vectorization=c.vectorization, workers=c.workers
            )
            c.sampler = EpisodeSampler(c.family, policy, args.episodes, torch.device("cpu"))
            c.sampler.sample(tasks, params, False, np.random.default_rng(1), torch.Generator().manual_seed(1))
        for _ in range(args.rounds):
            for c in contenders:
                assert c.family is not None and c.sampler is not None
                c.family.step_seconds = 0.0
                start = time.perf_counter()
                eps = c.sampler.sample(
                    tasks, params, False, np.random.default_rng(2), torch.Generator().manual_seed(2)
                )
                seconds = time.perf_counter() - start
                vector_steps = int(eps.mask[0, :, 0].sum())  # HalfCheetah never ends early
                c.rates.append(eps.env_steps / seconds)
                c.in_step.append(c.family.step_seconds / vector_steps)
                c.outside.append((seconds - c.family.step_seconds) / vector_steps)
                batch = (eps.obs, eps.actions, eps.rewards)
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
    t_msg = message_cost(n)
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
