"""The run's figures, written into the run directory (and attached to W&B).

`curve_figure` draws the meta-test metric against test-time steps with 95% CI bands, one line per
K; `training_curve_figure` draws the training metrics against meta-iterations. Figures
that belong to one domain (the sinusoid's Figure 2, nav2d's paths) live in that domain's module
and use `new_figure` / `save_figure` from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")  # no display needed: figures go to files
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mamlrun.runtime.errors import naming


class Curve(Protocol):
    """One meta-test curve (mamlrun.evaluation.CurveResult has these fields)."""

    metric: str
    shots: int
    steps: list[int]
    mean: list[float]
    ci95: list[float]
    paper: dict[str, float]


def new_figure(panels: int, width: float, height: float) -> tuple[Figure, list]:
    """A figure with `panels` axes in one row."""
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig: Figure, path: Path) -> Path:
    """Save as PNG (120 dpi) and free the figure."""
    fig.tight_layout()
    with naming(path):
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def draw_curves(results: Sequence[Curve], title: str, ylabel: str, label: str = "K={shots}") -> Figure:
    """Metric vs test-time steps, mean with a shaded 95% CI, one line per curve (`label` may use
    {shots}; prefixed with the metric's name when the curves measure more than one), whole-number
    step ticks, the paper's figures as stars."""
    fig, (ax,) = new_figure(1, 5.5, 4)
    several = len({r.metric for r in results}) > 1
    for r in results:
        name = label.format(shots=r.shots)
        ax.plot(r.steps, r.mean, marker="o", ms=3, label=f"{r.metric}, {name}" if several else name)
        low = [m - c for m, c in zip(r.mean, r.ci95, strict=True)]
        high = [m + c for m, c in zip(r.mean, r.ci95, strict=True)]
        ax.fill_between(r.steps, low, high, alpha=0.2)
        for step, value in r.paper.items():
            ax.scatter([int(step)], [value], marker="*", s=90, color=ax.lines[-1].get_color(), zorder=5)
    if any(r.paper for r in results):
        ax.scatter([], [], marker="*", s=90, color="gray", label="paper")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("test-time gradient steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def curve_figure(
    results: Sequence[Curve], path: Path, title: str, ylabel: str, label: str = "K={shots}"
) -> Path:
    """`draw_curves`, saved to `path`."""
    return save_figure(draw_curves(results, title, ylabel, label), path)


def training_curve_figure(metrics: Path, keys: Sequence[str], path: Path, title: str) -> Path | None:
    """The `keys` recorded in a run's metrics.jsonl against meta-iterations, saved to `path`
    (validation keys as markers); None when none of them was recorded."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    series = {key: [(row["step"], row[key]) for row in rows if row.get(key) is not None] for key in keys}
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    fig, (ax,) = new_figure(1, 6.5, 4)
    for key, points in series.items():
        steps, values = zip(*points, strict=True)
        marker = "o" if key.startswith("val/") else None
        ax.plot(steps, values, marker=marker, ms=4, lw=1.2 if marker is None else 0.8, label=key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("meta-iteration")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
