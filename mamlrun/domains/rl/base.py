"""What a meta-RL task family gives the sampler: tasks, and vectorised environments that run them.

A family samples tasks from its own RNG (a NumPy Generator the trainer owns and checkpoints) and
builds a `VectorEnv`: `num_envs` environments stepped together, each set to a task. Observations,
rewards and done flags come back as tensors. Every batch of episodes starts with `reset(seeds)`,
so an environment's state is a function of the seeds the sampler draws: resuming needs no
environment state, only the RNGs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import Tensor

SUCCESS = "success"  # the signal of families scored by success rate (Meta-World's info["success"])


class VectorEnv(Protocol):
    num_envs: int

    def set_tasks(self, tasks: list[Any]) -> None:
        """One task per environment (on the unwrapped env, where the reward reads it)."""

    def reset(self, seeds: list[int]) -> Tensor:
        """Reset every environment; observations [num_envs, obs_dim] (float32, CPU)."""

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(observations, rewards, done) after one step; done = terminated or truncated."""

    def close(self) -> None: ...


EpisodeFigure = Callable[[Mapping[str, Any], Sequence[Any], Path], Path]
"""`figure(episodes by label, tasks, path) -> path`: a family's picture of its episodes."""


class TaskFamily(Protocol):
    """The interface the RL trainer and the sampler rely on.

    Attributes:
        episode_figure: draws episodes before and after adaptation at meta-test, or None.
        signals: per-step info keys the sampler keeps in `Episodes.signals` (Meta-World's
            "success"; empty for the paper's families); an episode's signal counts if it was
            positive at any step.
        held_out: whether `split="test"` draws other tasks than `split="train"` (False: the
            paper's families draw both from one distribution and ignore the split).
    """

    name: str
    obs_dim: int
    act_dim: int
    horizon: int
    episode_figure: EpisodeFigure | None
    signals: tuple[str, ...]
    held_out: bool

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Any]:
        """`n` tasks from `rng`: of the train split (meta-training, validation) or the test split (the meta-test)."""

    def make_env(self, num_envs: int) -> VectorEnv: ...
