"""Small real gymnasium environments and task families for the meta-RL tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from mamlrun.domains.rl.locomotion import GymVectorEnv


class CountdownEnv(gym.Env):
    """Observation [t, task]; reward 1 per step; terminates after `length` steps (then gymnasium autoresets)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, length: int = 3, fail_at: int | None = None) -> None:
        self.length, self.fail_at, self.t, self.mamlrun_task = length, fail_at, 0, 0.0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.mamlrun_task], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        if self.fail_at is not None and self.t == self.fail_at:
            raise RuntimeError("simulator exploded")
        return self._obs(), 1.0, self.t >= self.length, False, {}


class CountdownFamily:
    """A task family over CountdownEnv (tasks are numbers the observation carries)."""

    name = "countdown"
    obs_dim = 2
    act_dim = 1
    episode_figure = None
    signals: tuple[str, ...] = ()
    held_out = False

    def __init__(self, horizon: int = 6, length: int = 3, fail_at: int | None = None) -> None:
        self.horizon, self.length, self.fail_at = horizon, length, fail_at

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[float]:
        return [float(x) for x in rng.uniform(0, 1, size=n)]

    def make_env(self, num_envs: int) -> GymVectorEnv:
        return GymVectorEnv(lambda: CountdownEnv(self.length, self.fail_at), num_envs)
