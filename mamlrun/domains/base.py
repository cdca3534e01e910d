"""What every supervised task distribution hands the trainer."""

from __future__ import annotations

from dataclasses import dataclass, field
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


class TaskDistribution(Protocol):
    """The interface the supervised trainer relies on."""

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
