"""MuJoCo locomotion tasks (the paper's section 5.3) on gymnasium v5 and the official `mujoco` bindings.

The environment is gymnasium's own (`HalfCheetah-v5`, `Ant-v5`) with its reward replaced:

- HalfCheetah velocity: -|v_x - v*| - 0.05 |a|^2, v* ~ U[0, 2]
- HalfCheetah direction: d v_x - 0.05 |a|^2, d = +-1
- Ant velocity: -|v_x - v*| + 1.0 + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2, v* ~ U[0, 3]
- Ant direction: d v_x + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2

Actions are clipped to [-1, 1] before `step`. HalfCheetah never terminates; Ant terminates when
its torso leaves z in [0.2, 1.0] (gymnasium's healthy range). The time limit is set to the
family's horizon (v5's default is 1000). The task lives on the unwrapped environment
(`env.unwrapped.mamlrun_task`), where the reward wrapper reads it, and is set through the vector
env's `set_attr`, so it reaches the right object under any wrapper stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from torch import Tensor

from mamlrun.errors import ConfigError, UserError

TASK_ATTR = "mamlrun_task"
KINDS = ("velocity", "direction")


def locomotion_reward(
    env_id: str,
    kind: str,
    task: float,
    x_velocity: float,
    action: np.ndarray,
    contact_forces: np.ndarray | None,
) -> float:
    """The meta-RL reward of DESIGN.md for one step (pure, so tests can check it by hand)."""
    control = float(np.sum(np.square(action)))
    if env_id.startswith("HalfCheetah"):
        progress = -abs(x_velocity - task) if kind == "velocity" else task * x_velocity
        return progress - 0.05 * control
    contact = (
        5e-4 * float(np.sum(np.square(np.clip(contact_forces, -1.0, 1.0))))
        if contact_forces is not None
        else 0.0
    )
    progress = (-abs(x_velocity - task) + 1.0) if kind == "velocity" else task * x_velocity
    return progress + 0.05 - 0.005 * control - contact


class TaskReward(gym.Wrapper):
    """Clips the action to [-1, 1] and replaces the reward with the task's (read from the unwrapped env)."""

    def __init__(self, env: gym.Env, env_id: str, kind: str) -> None:
        super().__init__(env)
        self.env_id, self.kind = env_id, kind
        setattr(env.unwrapped, TASK_ATTR, 0.0)

    def step(self, action: np.ndarray):
        action = np.clip(action, -1.0, 1.0)
        obs, _, terminated, truncated, info = self.env.step(action)
        base = self.env.unwrapped
        forces = base.data.cfrc_ext if self.env_id.startswith("Ant") else None
        reward = locomotion_reward(
            self.env_id, self.kind, float(getattr(base, TASK_ATTR)), float(info["x_velocity"]), action, forces
        )
        return obs, reward, terminated, truncated, info


class GymVectorEnv:
    """A gymnasium vector env of `num_envs` copies of `make()`; tensors in and out."""

    def __init__(self, make: Callable[[], gym.Env], num_envs: int, vectorization: str = "sync") -> None:
        cls = SyncVectorEnv if vectorization == "sync" else AsyncVectorEnv
        # NEXT_STEP autoreset: the step after an episode ends is a reset "dummy" step; the sampler
        # masks everything after an episode's end, so that step never reaches the data.
        self.envs = cls([make for _ in range(num_envs)], autoreset_mode=AutoresetMode.NEXT_STEP)
        self.num_envs = num_envs

    def set_tasks(self, tasks: list[Any]) -> None:
        self.envs.set_attr(TASK_ATTR, [float(t) for t in tasks])

    def reset(self, seeds: list[int]) -> Tensor:
        obs, _ = self.envs.reset(seed=[int(s) for s in seeds])
        return torch.as_tensor(obs, dtype=torch.float32)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        obs, reward, terminated, truncated, _ = self.envs.step(
            actions.detach().cpu().numpy().astype(np.float64)
        )
        done = torch.as_tensor(np.logical_or(terminated, truncated))
        return (torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(reward, dtype=torch.float32), done)

    def close(self) -> None:
        self.envs.close()


class LocomotionFamily:
    """Velocity or direction tasks for a gymnasium MuJoCo locomotion env.

    Args:
        env_id: gymnasium id, `HalfCheetah-v5` or `Ant-v5` (others of the same kind work if their
            step info reports x_velocity).
        task: velocity | direction.
        velocity_range: [low, high] of the goal velocity (velocity tasks).
        horizon: episode length (the time limit).
        vectorization: sync (one process; faster on few cores) | async (a process per env).
    """

    def __init__(
        self,
        env_id: str,
        task: str = "velocity",
        velocity_range: Sequence[float] = (0.0, 2.0),
        horizon: int = 200,
        vectorization: str = "sync",
    ) -> None:
        if task not in KINDS:
            raise ConfigError("domain.tasks.task", task, f"choose {' or '.join(KINDS)}")
        if vectorization not in ("sync", "async"):
            raise ConfigError("domain.tasks.vectorization", vectorization, "choose sync or async")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ConfigError("domain.horizon", horizon, "the episode horizon must be an integer >= 1")
        low, high = (float(v) for v in velocity_range)
        if not low <= high:
            raise ConfigError("domain.tasks.velocity_range", list(velocity_range), "need low <= high")
        try:
            probe = gym.make(env_id)
        except gym.error.Error as exc:
            known = ", ".join(i for i in ("HalfCheetah-v5", "Ant-v5"))
            raise UserError(
                f"domain.tasks.env_id={env_id!r} is not a gymnasium environment here ({exc}); "
                f"mamlrun's locomotion tasks use {known}"
            ) from None
        self.obs_dim = int(np.prod(probe.observation_space.shape))
        self.act_dim = int(np.prod(probe.action_space.shape))
        probe.close()
        self.env_id, self.kind, self.velocity_range = env_id, task, (low, high)
        self.horizon, self.vectorization = horizon, vectorization
        self.name = f"{env_id} {task}"

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[float]:
        if self.kind == "velocity":
            return [float(v) for v in rng.uniform(*self.velocity_range, size=n)]
        return [float(d) for d in rng.choice([-1.0, 1.0], size=n)]

    def make_one(self) -> gym.Env:
        """One environment: gymnasium's, time-limited to the horizon, with the task's reward."""
        return TaskReward(gym.make(self.env_id, max_episode_steps=self.horizon), self.env_id, self.kind)

    def make_env(self, num_envs: int) -> GymVectorEnv:
        return GymVectorEnv(self.make_one, num_envs, self.vectorization)

    def describe_task(self, task: Any) -> str:
        return f"goal velocity {task:.2f}" if self.kind == "velocity" else f"direction {task:+.0f}"
