"""2D navigation (the paper's section 5.3): a point agent steers to a goal it must discover.

The agent starts at (0, 0); a task is a goal drawn from U[-0.5, 0.5]^2; an action is a velocity,
clipped to [-0.1, 0.1] per axis; the reward is minus the distance to the goal after the move (the
plain distance, as in the code behind the paper's numbers; its text says squared); an episode ends
within 0.01 of the goal or at the horizon (100). All environments are stepped at once as tensors:
no MuJoCo, no Python loop over environments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlrun.errors import ConfigError


class Nav2DEnvs:
    """`num_envs` point agents stepped together."""

    def __init__(self, num_envs: int, max_action: float, goal_radius: float, horizon: int) -> None:
        self.num_envs, self.max_action, self.goal_radius, self.horizon = (
            num_envs,
            max_action,
            goal_radius,
            horizon,
        )
        self.goals = torch.zeros(num_envs, 2)
        self.state = torch.zeros(num_envs, 2)
        self.t = 0

    def set_tasks(self, tasks: list[Any]) -> None:
        self.goals = torch.as_tensor(np.asarray(tasks), dtype=torch.float32).reshape(self.num_envs, 2)

    def reset(self, seeds: list[int] | None = None) -> Tensor:
        self.state = torch.zeros(self.num_envs, 2)
        self.t = 0
        return self.state.clone()

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        actions = torch.as_tensor(actions, dtype=torch.float32).cpu().clamp(-self.max_action, self.max_action)
        self.state = self.state + actions
        self.t += 1
        distance = torch.linalg.vector_norm(self.state - self.goals, dim=-1)
        done = (distance < self.goal_radius) | (self.t >= self.horizon)
        return self.state.clone(), -distance, done

    def close(self) -> None:
        pass


class Nav2DFamily:
    """Goals U[goal_range]^2; see the module docstring.

    Args:
        goal_range: [low, high] of each goal coordinate.
        max_action: the velocity clip per axis.
        goal_radius: an episode ends this close to the goal.
        horizon: the longest episode.
    """

    name = "nav2d"
    obs_dim = 2
    act_dim = 2
    plots_trajectories = True  # the observation is the position: the meta-test draws the paths

    def __init__(
        self,
        goal_range: Sequence[float] = (-0.5, 0.5),
        max_action: float = 0.1,
        goal_radius: float = 0.01,
        horizon: int = 100,
    ) -> None:
        low, high = (float(v) for v in goal_range)
        if not low <= high:
            raise ConfigError("domain.tasks.goal_range", list(goal_range), "need low <= high")
        if not max_action > 0:
            raise ConfigError("domain.tasks.max_action", max_action, "must be > 0")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ConfigError("domain.horizon", horizon, "the episode horizon must be an integer >= 1")
        self.goal_range, self.max_action, self.goal_radius, self.horizon = (
            (low, high),
            max_action,
            goal_radius,
            horizon,
        )

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        return list(rng.uniform(self.goal_range[0], self.goal_range[1], size=(n, 2)))

    def make_env(self, num_envs: int) -> Nav2DEnvs:
        return Nav2DEnvs(num_envs, self.max_action, self.goal_radius, self.horizon)

    def describe_task(self, task: Any) -> str:
        return f"goal ({task[0]:+.2f}, {task[1]:+.2f})"
