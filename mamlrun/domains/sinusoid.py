"""Sinusoid regression (the paper's section 5.1): y = A sin(x - phi).

A ~ U[0.1, 5.0], phi ~ U[0, pi], x ~ U[-5, 5]: the task distribution of Finn et al. 2017
(and of their code, which uses sin(x - phase)). There are no splits: meta-training, validation and
meta-test tasks are independent draws, separated by their random generators.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import Tensor

from mamlrun.domains.base import Predict, TaskBatch
from mamlrun.plots import new_figure, save_figure
from mamlrun.runtime.errors import ConfigError


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

    splits = None  # one distribution: validation and meta-test tasks are independent draws

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

    def check(self, shots: int, query: int, split: str, keys: tuple[str, str] = ("", "")) -> None:
        """Any number of points can be drawn from any task: nothing to check."""

    def adaptation_figure(
        self, test_sets: Mapping[int, TaskBatch], predict: Predict, steps: int, path: Path
    ) -> Path:
        """The paper's Figure 2 (`draw_adaptation`), saved to `path`."""
        return save_figure(self.draw_adaptation(test_sets, predict, steps), path)

    def draw_adaptation(self, test_sets: Mapping[int, TaskBatch], predict: Predict, steps: int) -> Figure:
        """The first test task of each K (up to 3): its K points, the true curve and the model's
        predictions before adaptation, after 1 step and after `steps`, one labelled panel per K."""
        x = torch.linspace(self.x_range[0], self.x_range[1], 200)
        labels = {0: "pre-update", 1: "1 grad step", steps: f"{steps} grad steps"}
        shots_list = list(test_sets)[:3]
        fig, axes = new_figure(len(shots_list), 4.2, 3.6)
        for ax, shots in zip(axes, shots_list, strict=True):
            batch = test_sets[shots]
            grid = x.to(batch.support[0].device)[:, None]
            info = {k: v[:1] for k, v in batch.info.items()}
            support = (batch.support[0][0], batch.support[1][0])
            ax.plot(x, self.curve(info, grid[None])[0, :, 0].cpu(), color="red", lw=2, label="ground truth")
            for (k, label), style in zip(labels.items(), ["--", "-", "-"], strict=False):
                ax.plot(x, predict(support, k, grid)[:, 0].cpu(), style, lw=1.5, label=label)
            ax.scatter(
                support[0][:, 0].cpu(),
                support[1][:, 0].cpu(),
                marker="^",
                color="purple",
                zorder=5,
                label="K points",
            )
            ax.set_title(f"sinusoid, K={shots}")
            ax.set_xlabel("x")
            ax.set_ylabel("y = A sin(x - phase)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        return fig
