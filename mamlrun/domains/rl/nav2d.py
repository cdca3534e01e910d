"""2D navigation (the paper's section 5.3): a point agent steers to a goal it must discover.

The agent starts at (0, 0); a task is a goal drawn from U[-0.5, 0.5]^2; an action is a velocity,
scaled by `action_scale` and clipped to [-0.1, 0.1] per axis; the reward is minus the distance to
the goal after the move (the plain distance, as in the code behind the paper's numbers; its text
says squared); an episode ends at the goal or at the horizon (100). "At the goal" is the paper's
code's test, |dx| < 0.01 and |dy| < 0.01 (`goal_region=box`), or the distance < 0.01 (`circle`).

`action_scale`: the paper's code runs the point env under rllab's `normalize`, which maps policy
actions in [-1, 1] onto the velocity range, so a unit-variance initial policy explores at the
scale of a step (action_scale=0.1, the default); pytorch-maml-rl feeds raw actions
(action_scale=1), where almost every early action saturates the clip.

All environments are stepped at once as tensors: no MuJoCo, no Python loop over environments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlrun.plots import new_figure, save_figure
from mamlrun.runtime.errors import ConfigError, require_int


class Nav2DEnvs:
    """`num_envs` point agents stepped together."""

    def __init__(
        self,
        num_envs: int,
        max_action: float,
        goal_radius: float,
        horizon: int,
        action_scale: float = 1.0,
        goal_region: str = "box",
    ) -> None:
        self.num_envs, self.horizon = num_envs, horizon
        self.max_action, self.goal_radius, self.action_scale = max_action, goal_radius, action_scale
        self.goal_region = goal_region
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
        velocity = torch.as_tensor(actions, dtype=torch.float32).cpu() * self.action_scale
        self.state = self.state + velocity.clamp(-self.max_action, self.max_action)
        self.t += 1
        offset = self.state - self.goals
        distance = torch.linalg.vector_norm(offset, dim=-1)
        near = offset.abs().amax(dim=-1) if self.goal_region == "box" else distance
        done = (near < self.goal_radius) | (self.t >= self.horizon)
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
        action_scale: velocity = clip(action_scale * action, +-max_action).
        goal_region: box (each coordinate within goal_radius: the paper's code) or circle (the
            distance within goal_radius).
    """

    name = "nav2d"
    obs_dim = 2
    act_dim = 2
    signals: tuple[str, ...] = ()  # scored by return alone
    held_out = False  # train and test goals from one distribution

    def __init__(
        self,
        goal_range: Sequence[float] = (-0.5, 0.5),
        max_action: float = 0.1,
        goal_radius: float = 0.01,
        horizon: int = 100,
        action_scale: float = 0.1,
        goal_region: str = "box",
    ) -> None:
        low, high = (float(v) for v in goal_range)
        if goal_region not in ("box", "circle"):
            raise ConfigError("domain.tasks.goal_region", goal_region, "choose box or circle")
        if not low <= high:
            raise ConfigError("domain.tasks.goal_range", list(goal_range), "need low <= high")
        for key, value in (("max_action", max_action), ("action_scale", action_scale)):
            if not value > 0:
                raise ConfigError(f"domain.tasks.{key}", value, "must be > 0")
        require_int("domain.horizon", horizon, 1, "the episode horizon")
        self.goal_range, self.max_action, self.goal_radius = (low, high), max_action, goal_radius
        self.horizon, self.action_scale, self.goal_region = horizon, action_scale, goal_region

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[np.ndarray]:
        """Goals U[goal_range]^2; train and test tasks come from this one distribution (the split is ignored)."""
        return list(rng.uniform(self.goal_range[0], self.goal_range[1], size=(n, 2)))

    def make_env(self, num_envs: int) -> Nav2DEnvs:
        return Nav2DEnvs(
            num_envs, self.max_action, self.goal_radius, self.horizon, self.action_scale, self.goal_region
        )

    def episode_figure(self, episodes_by_label: Mapping[str, Any], goals: Sequence[Any], path: Path) -> Path:
        """The first paths of each labelled batch of episodes on the first 4 tasks, with the goal.

        `episodes_by_label` maps a label to Episodes; nav2d's observations are (x, y) positions.
        """
        tasks, paths_per_task = min(4, len(goals)), 5
        fig, axes = new_figure(tasks, 3.6, 3.6)
        colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
        low, high = self.goal_range[0] - 0.1, self.goal_range[1] + 0.1
        for t, ax in enumerate(axes):
            for (label, episodes), colour in zip(episodes_by_label.items(), colours, strict=False):
                obs, mask = episodes.obs[t].cpu(), episodes.mask[t].cpu()
                for r in range(min(paths_per_task, obs.shape[1])):
                    xy = obs[: int(mask[:, r].sum()), r]
                    ax.plot(
                        xy[:, 0], xy[:, 1], color=colour, lw=1, alpha=0.8, label=label if r == 0 else None
                    )
            ax.scatter([0], [0], marker="o", color="black", s=20, label="start")
            ax.scatter([goals[t][0]], [goals[t][1]], marker="*", color="red", s=150, zorder=5, label="goal")
            ax.set_xlim(low, high)
            ax.set_ylim(low, high)
            ax.set_aspect("equal")
            ax.grid(alpha=0.3)
            ax.set_title(f"task {t}")
        axes[0].legend(fontsize=7, loc="lower left")
        return save_figure(fig, path)
