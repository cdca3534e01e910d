"""What every supervised task distribution hands the trainer: a `TaskBatch`, through the
`TaskDistribution` protocol. Optional capabilities are attributes the protocol names (None when a
distribution lacks them), so the trainer asks the interface, never `hasattr`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TaskBatch:
    """A batch of tasks, task dimension first.

    support: (x, y) with shapes [tasks, shots, ...] (the data the inner loop adapts on).
    query: (x, y) with shapes [tasks, query, ...] (the data the adapted model is judged on).
    info: per-task descriptors (e.g. amplitude and phase), used by figures.
    """

    support: tuple[Tensor, Tensor]
    query: tuple[Tensor, Tensor]
    info: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.support[0].shape[0])


Predict = Callable[[tuple[Tensor, Tensor], int, Tensor], Tensor]
"""`predict(support, steps, x) -> y`: the model adapted `steps` steps on one task's support, at x."""

AdaptationFigure = Callable[[Mapping[int, TaskBatch], Predict, int, Path], Path]
"""`figure(test_sets by K, predict, test steps, path) -> path`: a domain's picture of adaptation."""


class SupportRestriction(Protocol):
    """A distribution whose inputs have a range, so the meta-test can draw support points from part
    of it (`eval.support_range`, the sinusoid's extrapolation test)."""

    def check_support_range(self, support_range: Sequence[float]) -> tuple[float, float]:
        """(low, high), or a ConfigError naming `eval.support_range` and what is valid."""
        ...

    def restrict_support(
        self, batch: TaskBatch, support_range: Sequence[float], generator: torch.Generator
    ) -> tuple[TaskBatch, TaskBatch]:
        """The tasks with support points from the range: (query over the whole range, query outside it)."""
        ...


class TaskDistribution(Protocol):
    """The interface the supervised trainer relies on.

    Attributes:
        splits: split name -> class ids, or None when train/val/test tasks are independent draws of
            one distribution (then validation always has tasks).
        adaptation_figure: draws the domain's picture of adaptation at meta-test, or None.
        support_restriction: restricts the support points to part of the input range
            (`eval.support_range`), or None when the inputs have no range (images).
    """

    splits: Mapping[str, Sequence[int]] | None
    adaptation_figure: AdaptationFigure | None
    support_restriction: SupportRestriction | None

    def sample(
        self,
        num_tasks: int,
        shots: int,
        query: int,
        generator: torch.Generator,
        device: torch.device,
        split: str = "train",
    ) -> TaskBatch:
        """Draw `num_tasks` tasks with `shots` support and `query` query examples each."""
        ...

    def check(self, shots: int, query: int, split: str, keys: tuple[str, str] = ...) -> None:
        """Raise a ConfigError naming `keys` if such tasks cannot be drawn from `split`."""
        ...
