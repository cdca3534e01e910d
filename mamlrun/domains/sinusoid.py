"""Sinusoid regression (the paper's section 5.1): y = A sin(x - phi).

A ~ U[0.1, 5.0], phi ~ U[0, pi], x ~ U[-5, 5]: the task distribution of Finn et al. 2017
(and of their code, which uses sin(x - phase)). There are no splits: meta-training, validation and
meta-test tasks are independent draws, separated by their random generators.

The paper's extrapolation experiment (`eval.support_range`, `experiment=sinusoid_extrapolation`)
redraws the test tasks' K support points from a sub-range, e.g. [0, 5]: the query points stay over
the whole range, and a second query set lies only where no support point can be (`restrict_support`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from mamlrun.domains.base import Predict, TaskBatch
from mamlrun.plots import new_figure, save_figure
from mamlrun.runtime.errors import ConfigError


def _range(key: str, value: Sequence[float], example: str = "[0.1, 5.0]") -> tuple[float, float]:
    values = list(value)
    if len(values) != 2:
        raise ConfigError(key, values, f"give a [low, high] pair, e.g. {example}")
    low, high = float(values[0]), float(values[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ConfigError(key, values, f"need finite low <= high, e.g. {example}")
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

    @property
    def support_restriction(self) -> SinusoidTasks:
        """The sinusoid's inputs have a range (x_range): `eval.support_range` restricts it itself."""
        return self

    def check_support_range(self, support_range: Sequence[float]) -> tuple[float, float]:
        """`eval.support_range` as (low, high): inside x_range, and leaving part of it unseen."""
        low, high = _range("eval.support_range", support_range, "[0, 5]")
        x_low, x_high = self.x_range
        if low < x_low or high > x_high or low >= high:
            raise ConfigError(
                "eval.support_range",
                [low, high],
                f"need x_range[0] <= low < high <= x_range[1] (domain.tasks.x_range={[x_low, x_high]})",
            )
        if low == x_low and high == x_high:
            raise ConfigError(
                "eval.support_range", [low, high], "covers all of x_range: no input would be unseen"
            )
        return low, high

    def restrict_support(
        self, batch: TaskBatch, support_range: Sequence[float], generator: torch.Generator
    ) -> tuple[TaskBatch, TaskBatch]:
        """The same tasks with their support points redrawn from `support_range`, twice: with the
        query points over the whole range (as drawn), and with query points drawn from the rest of
        the range only (the inputs no support point can be near)."""
        low, high = self.check_support_range(support_range)
        (x_s, _), (x_q, y_q) = batch.support, batch.query
        tasks, shots, query, device = x_s.shape[0], x_s.shape[1], x_q.shape[1], x_s.device
        x_support = self._uniform((tasks, shots, 1), (low, high), generator, device)
        x_unseen = self._outside((tasks, query, 1), (low, high), generator, device)
        info = batch.info | {"support_range": torch.tensor([low, high], device=device).expand(tasks, 2)}
        support = (x_support, self.curve(info, x_support))
        whole = TaskBatch(support=support, query=(x_q, y_q), info=info)
        unseen = TaskBatch(support=support, query=(x_unseen, self.curve(info, x_unseen)), info=info)
        return whole, unseen

    def _outside(
        self, shape: tuple[int, ...], inside: tuple[float, float], g: torch.Generator, device
    ) -> Tensor:
        """Uniform over x_range minus `inside` (one or two intervals)."""
        (x_low, x_high), (low, high) = self.x_range, inside
        left = low - x_low  # length of [x_low, low]
        u = self._uniform(shape, (0.0, left + (x_high - high)), g, device)
        return torch.where(u < left, x_low + u, high + (u - left))

    def adaptation_figure(
        self, test_sets: Mapping[int, TaskBatch], predict: Predict, steps: int, path: Path
    ) -> Path:
        """The paper's Figure 2 (`draw_adaptation`), saved to `path`."""
        return save_figure(self.draw_adaptation(test_sets, predict, steps), path)

    def draw_adaptation(self, test_sets: Mapping[int, TaskBatch], predict: Predict, steps: int) -> Figure:
        """The first test task of each K (up to 3): its K points, the true curve and the model's
        predictions before adaptation, after 1 step and after `steps`, one labelled panel per K."""
        shots_list = list(test_sets)[:3]
        fig, axes = new_figure(len(shots_list), 4.2, 3.6)
        for ax, shots in zip(axes, shots_list, strict=True):
            self.draw_task(ax, test_sets[shots], predict, steps, f"sinusoid, K={shots}")
        return fig

    def draw_task(self, ax: Axes, batch: TaskBatch, predict: Predict, steps: int, title: str) -> None:
        """One panel of the paper's Figure 2: `batch`'s first task, its K points, the true curve,
        the predictions after 0, 1 and `steps` steps; inputs no support point came from are shaded."""
        x = torch.linspace(self.x_range[0], self.x_range[1], 200)
        grid = x.to(batch.support[0].device)[:, None]
        info = {k: v[:1] for k, v in batch.info.items()}
        support = (batch.support[0][0], batch.support[1][0])
        if "support_range" in info:  # the extrapolation experiment
            low, high = (float(v) for v in info["support_range"][0])
            spans = [(a, b) for a, b in ((self.x_range[0], low), (high, self.x_range[1])) if b > a]
            for i, (a, b) in enumerate(spans):
                ax.axvspan(a, b, color="gray", alpha=0.12, lw=0, label=None if i else "no support points")
        ax.plot(x, self.curve(info, grid[None])[0, :, 0].cpu(), color="red", lw=2, label="ground truth")
        labels = {0: "pre-update", 1: "1 grad step", steps: f"{steps} grad steps"}
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
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("y = A sin(x - phase)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
