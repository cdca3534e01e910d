"""MuJoCo locomotion tasks (the paper's section 5.3) on gymnasium v5 and the official `mujoco` bindings.

The environment is gymnasium's own (`HalfCheetah-v5`, `Ant-v5`) with its reward replaced:

- HalfCheetah velocity: -|v_x - v*| - 0.05 |a|^2, v* ~ U[0, 2]
- HalfCheetah direction: d v_x - 0.05 |a|^2, d = +-1
- Ant velocity: -|v_x - v*| + 1.0 + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2, v* ~ U[0, 3]
- Ant direction: d v_x + 0.05 - 0.005 |a|^2 - 5e-4 |clip(cfrc_ext, -1, 1)|^2

Actions are clipped to [-1, 1] before `step`. HalfCheetah never terminates; Ant terminates when
its torso leaves z in [0.2, 1.0] (gymnasium's healthy range). The time limit is set to the
family's horizon (v5's default is 1000). The vector env holds each environment's task and
computes the rewards of a whole vector step at once from gymnasium's step info (x_velocity, and
Ant's clipped contact cost), so no Python wrapper runs per environment and per step; the task is
also set on each unwrapped environment (`mamlrun_task`) for code that inspects it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv
from torch import Tensor

from mamlrun.runtime.errors import ConfigError, UserError, require_int

TASK_ATTR = "mamlrun_task"
OBJECTIVES = ("velocity", "direction")


def locomotion_reward(
    env_id: str,
    kind: str,
    tasks: np.ndarray,
    x_velocity: np.ndarray,
    actions: np.ndarray,
    contact_cost: np.ndarray | None,
) -> np.ndarray:
    """The meta-RL rewards of DESIGN.md for a batch of steps, one per environment (pure, so tests
    can check it by hand). `actions` are the clipped actions [n, act_dim]; `contact_cost` is Ant's
    5e-4 |clip(cfrc_ext, -1, 1)|^2 per env (gymnasium reports it as -info["reward_contact"])."""
    control = np.sum(np.square(actions), axis=-1)
    if env_id.startswith("HalfCheetah"):
        progress = -np.abs(x_velocity - tasks) if kind == "velocity" else tasks * x_velocity
        return progress - 0.05 * control
    contact = np.zeros_like(control) if contact_cost is None else contact_cost
    progress = (-np.abs(x_velocity - tasks) + 1.0) if kind == "velocity" else tasks * x_velocity
    return progress + 0.05 - 0.005 * control - contact


def quiet_mujoco_deprecations() -> None:
    """Drop MuJoCo's 'settotalmass is deprecated' warning (gymnasium's own half_cheetah.xml uses
    it, so every env built would print it); any other MuJoCo warning still reaches Python's
    `warnings`. Process-wide, so it is installed in each (async) worker too."""
    import warnings

    import mujoco

    def handler(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=1)

    mujoco.set_mju_user_warning(handler)


#: Vectorised reward: (tasks [n], clipped actions [n, a], the vector env's step info) -> rewards [n].
TaskRewardFn = Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]


class GymVectorEnv:
    """A gymnasium vector env of `num_envs` copies of `make()`; tensors in and out.

    Actions are clipped to the action space's bounds before the step. The tasks are set on every
    unwrapped environment (`mamlrun_task`, through `set_attr`, so they reach the right object under
    any wrapper stack) and kept here as an array: with `task_reward` the rewards of a whole vector
    step are computed from the step's info in one NumPy expression instead of a Python wrapper per
    environment (that wrapper cost the sampler 30% of its time on HalfCheetah).
    """

    def __init__(
        self,
        make: Callable[[], gym.Env],
        num_envs: int,
        vectorization: str = "sync",
        task_reward: TaskRewardFn | None = None,
    ) -> None:
        cls = SyncVectorEnv if vectorization == "sync" else AsyncVectorEnv
        # NEXT_STEP autoreset: the step after an episode ends is a reset "dummy" step; the sampler
        # masks everything after an episode's end, so that step never reaches the data.
        self.envs = cls([make for _ in range(num_envs)], autoreset_mode=AutoresetMode.NEXT_STEP)
        self.num_envs, self.task_reward = num_envs, task_reward
        space = self.envs.single_action_space
        self.low, self.high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        self.tasks = np.zeros(num_envs)

    def set_tasks(self, tasks: list[Any]) -> None:
        self.envs.set_attr(TASK_ATTR, [float(t) for t in tasks])
        self.tasks = np.asarray(tasks, dtype=np.float64)

    def reset(self, seeds: list[int]) -> Tensor:
        obs, _ = self.envs.reset(seed=[int(s) for s in seeds])
        return torch.as_tensor(obs, dtype=torch.float32)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        clipped = np.clip(actions.detach().cpu().numpy().astype(np.float64), self.low, self.high)
        obs, reward, terminated, truncated, info = self.envs.step(clipped)
        if self.task_reward is not None:
            reward = self.task_reward(self.tasks, clipped, info)
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

    episode_figure = None  # paths in 17 or 27 dimensions: the return curve says more

    def __init__(
        self,
        env_id: str,
        task: str = "velocity",
        velocity_range: Sequence[float] = (0.0, 2.0),
        horizon: int = 200,
        vectorization: str = "sync",
    ) -> None:
        if task not in OBJECTIVES:
            raise ConfigError("domain.tasks.task", task, f"choose {' or '.join(OBJECTIVES)}")
        if vectorization not in ("sync", "async"):
            raise ConfigError("domain.tasks.vectorization", vectorization, "choose sync or async")
        require_int("domain.horizon", horizon, 1, "the episode horizon")
        low, high = (float(v) for v in velocity_range)
        if not low <= high:
            raise ConfigError("domain.tasks.velocity_range", list(velocity_range), "need low <= high")
        quiet_mujoco_deprecations()
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
        """One environment: gymnasium's, time-limited to the horizon (its own reward; the vector
        env replaces it with the task's)."""
        quiet_mujoco_deprecations()
        env = gym.make(self.env_id, max_episode_steps=self.horizon)
        setattr(env.unwrapped, TASK_ATTR, 0.0)
        return env

    def task_reward(self, tasks: np.ndarray, actions: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        """The task rewards of one vector step from gymnasium's step info (x_velocity, reward_contact).

        Environments that were resetting this step (the autoreset dummy step) have no x_velocity
        in their info; their reward is 0 and the sampler masks it anyway."""
        zeros = np.zeros(len(tasks))
        contact = -info.get("reward_contact", zeros) if self.env_id.startswith("Ant") else None
        return locomotion_reward(
            self.env_id, self.kind, tasks, info.get("x_velocity", zeros), actions, contact
        )

    def make_env(self, num_envs: int) -> GymVectorEnv:
        return GymVectorEnv(self.make_one, num_envs, self.vectorization, self.task_reward)
