"""Figures written into the run directory (and attached to W&B).

- `curve_figure`: the meta-test metric against test-time steps with 95% CI bands, one line per K.
- `regression_figure`: the paper's Figure 2 for 1-D regression: the true curve, the K support
  points, and the model's predictions before adaptation and after a few steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed: figures go to files
import matplotlib.pyplot as plt
from torch import Tensor

from mamlrun.evaluation import CurveResult


def curve_figure(
    results: Sequence[CurveResult], path: Path, title: str, ylabel: str, scale: float = 1.0
) -> Path:
    """Metric vs test-time steps, mean with a shaded 95% CI, one line per shot count."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for r in results:
        mean = [m * scale for m in r.mean]
        ci = [c * scale for c in r.ci95]
        ax.plot(r.steps, mean, marker="o", ms=3, label=f"K={r.shots}")
        low = [m - c for m, c in zip(mean, ci, strict=True)]
        high = [m + c for m, c in zip(mean, ci, strict=True)]
        ax.fill_between(r.steps, low, high, alpha=0.2)
        for step, value in r.paper.items():
            ax.scatter([int(step)], [value], marker="*", s=90, color=ax.lines[-1].get_color(), zorder=5)
    if any(r.paper for r in results):
        ax.scatter([], [], marker="*", s=90, color="gray", label="paper")
    ax.set_xlabel("test-time gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def regression_figure(
    x_grid: Tensor,
    true_y: Tensor,
    support: tuple[Tensor, Tensor],
    predictions: Mapping[str, Tensor],
    path: Path,
    titles: Sequence[str],
) -> Path:
    """One panel per task: true curve, K points, and each labelled prediction curve.

    Shapes: x_grid [n], true_y [tasks, n], support ([tasks, K], [tasks, K]),
    predictions: label -> [tasks, n].
    """
    tasks = true_y.shape[0]
    fig, axes = plt.subplots(1, tasks, figsize=(4.2 * tasks, 3.6), squeeze=False)
    styles = ["--", "-", "-", "-", "-"]
    for t, ax in enumerate(axes[0]):
        ax.plot(x_grid, true_y[t], color="red", lw=2, label="ground truth")
        for (label, y), style in zip(predictions.items(), styles, strict=False):
            ax.plot(x_grid, y[t], style, lw=1.5, label=label)
        ax.scatter(support[0][t], support[1][t], marker="^", color="purple", zorder=5, label="K points")
        ax.set_title(titles[t])
        ax.grid(alpha=0.3)
        if t == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def trajectories_figure(
    episodes_by_label: Mapping[str, object],
    goals: Sequence,
    path: Path,
    tasks: int = 4,
    paths_per_task: int = 5,
) -> Path:
    """2D navigation: a panel per task, the first paths of each labelled batch of episodes, and the goal.

    `episodes_by_label` maps a label to Episodes whose observations are (x, y) positions.
    """
    tasks = min(tasks, len(goals))
    fig, axes = plt.subplots(1, tasks, figsize=(3.6 * tasks, 3.6), squeeze=False)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for t, ax in enumerate(axes[0]):
        for (label, episodes), colour in zip(episodes_by_label.items(), colours, strict=False):
            obs, mask = episodes.obs[t].cpu(), episodes.mask[t].cpu()
            for r in range(min(paths_per_task, obs.shape[1])):
                n = int(mask[:, r].sum())
                xy = obs[:n, r]
                ax.plot(xy[:, 0], xy[:, 1], color=colour, lw=1, alpha=0.8, label=label if r == 0 else None)
        ax.scatter([0], [0], marker="o", color="black", s=20, label="start")
        ax.scatter([goals[t][0]], [goals[t][1]], marker="*", color="red", s=150, zorder=5, label="goal")
        ax.set_xlim(-0.6, 0.6)
        ax.set_ylim(-0.6, 0.6)
        ax.set_aspect("equal")
        ax.grid(alpha=0.3)
        ax.set_title(f"task {t}")
        if t == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
