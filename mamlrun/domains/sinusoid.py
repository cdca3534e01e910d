"""Sinusoid regression (the paper's section 5.1): y = A sin(x - phi).

A ~ U[0.1, 5.0], phi ~ U[0, pi], x ~ U[-5, 5]: the task distribution of Finn et al. 2017
(and of their code, which uses sin(x - phase)). There are no splits: meta-training, validation and
meta-test tasks are independent draws, separated by their random generators.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mamlrun.domains.base import TaskBatch
from mamlrun.errors import ConfigError


def _range(key: str, value: Sequence[float]) -> tuple[float, float]:
    values = list(value)
    if len(values) != 2:
        raise ConfigError(key, values, "give a [low, high] pair")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(key, values, "need finite low <= high, e.g. [0.1, 5.0]")
    return low, high


class SinusoidTasks:
    """Samples sinusoid regression tasks as tensors on the training device.

    Args:
        amplitude: [low, high] of the uniform amplitude distribution.
        phase: [low, high] of the uniform phase distribution (radians).
        x_range: [low, high] of the uniform input distribution.
    """

    def __init__(
        self,
        amplitude: Sequence[float] = (0.1, 5.0),
        phase: Sequence[float] = (0.0, math.pi),
        x_range: Sequence[float] = (-5.0, 5.0),
    ) -> None:
        self.amplitude = _range("domain.tasks.amplitude", amplitude)
        self.phase = _range("domain.tasks.phase", phase)
        self.x_range = _range("domain.tasks.x_range", x_range)

    @staticmethod
    def _uniform(shape: tuple[int, ...], bounds: tuple[float, float], g: torch.Generator, device) -> Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(shape, generator=g, device=device)

    def curve(self, info: dict[str, Tensor], x: Tensor) -> Tensor:
        """The true function of each task at inputs x [tasks, n, 1]."""
        return info["amplitude"][:, None, None] * torch.sin(x - info["phase"][:, None, None])

    def sample(
        self,
        num_tasks: int,
        shots: int,
        query: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        split: str = "train",
    ) -> TaskBatch:
        """`num_tasks` tasks with `shots` support and `query` query points each (split is ignored)."""
        info = {
            "amplitude": self._uniform((num_tasks,), self.amplitude, generator, device),
            "phase": self._uniform((num_tasks,), self.phase, generator, device),
        }
        x = self._uniform((num_tasks, shots + query, 1), self.x_range, generator, device)
        y = self.curve(info, x)
        return TaskBatch(support=(x[:, :shots], y[:, :shots]), query=(x[:, shots:], y[:, shots:]), info=info)
