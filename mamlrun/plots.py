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
from matplotlib.axes import Axes
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


def draw_curves(
    results: Sequence[Curve], title: str, ylabel: str, label: str = "K={shots}", ax: Axes | None = None
) -> Figure:
    """Metric vs test-time steps, mean with a shaded 95% CI, one line per curve (`label` may use
    {shots}; prefixed with the metric's name when the curves measure more than one), whole-number
    step ticks, the paper's figures as stars. Into `ax` if given, else a figure of its own."""
    if ax is None:
        _, (ax,) = new_figure(1, 5.5, 4)
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
    return ax.figure


def curve_figure(panels: Sequence[tuple[Sequence[Curve], str, str]], path: Path, title: str) -> Path:
    """One `draw_curves` panel per metric, side by side, saved to `path`: `panels` are
    (curves, y-axis label, legend label) triples (the meta-RL meta-test of Meta-World draws return
    and success rate)."""
    fig, axes = new_figure(len(panels), 5.5, 4)
    several = len(panels) > 1  # then the title goes above the panels, each panel named by its metric
    for ax, (results, ylabel, label) in zip(axes, panels, strict=True):
        draw_curves(results, ylabel if several else title, ylabel, label, ax=ax)
    if several:
        fig.suptitle(title)
    return save_figure(fig, path)


RAW_ALPHA = 0.25  # the raw per-record values, faint behind their running mean
SMOOTH_POINTS = 50  # the running mean's window: about 1/50 of the records
LOG_SPAN = 100.0  # a loss whose values span this factor or more is drawn on a log scale


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and up to `window - 1` before it (a trailing window: no future values)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def spans_decades(series: Sequence[Sequence[float]]) -> bool:
    """All values positive and the largest at least LOG_SPAN times the smallest."""
    values = [v for s in series for v in s]
    return bool(values) and min(values) > 0 and max(values) / min(values) >= LOG_SPAN


def draw_training_curve(series: dict[str, list[tuple[int, float]]], title: str) -> Figure:
    """Each training key's raw values (faint) and their running mean against meta-iterations;
    validation keys as markers; a log scale when the losses span decades (a support loss that falls
    from 4 to 0.01 over 70,000 iterations is a band of noise on a linear one)."""
    fig, (ax,) = new_figure(1, 6.5, 4)
    losses = []
    for key, points in series.items():
        steps, values = zip(*points, strict=True)
        if key.startswith("val/"):
            ax.plot(steps, values, marker="o", ms=4, lw=0.8, label=key)
            continue
        window = max(1, len(values) // SMOOTH_POINTS)
        (raw,) = ax.plot(steps, values, lw=0.6, alpha=RAW_ALPHA if window > 1 else 1.0)
        if window > 1:
            smooth = running_mean(values, window)
            ax.plot(steps, smooth, lw=1.4, color=raw.get_color(), label=f"{key} (running mean of {window})")
        else:
            raw.set_label(key)
        if "loss" in key:
            losses.append(values)
    if spans_decades(losses):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("meta-iteration")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def training_curve_figure(metrics: Path, keys: Sequence[str], path: Path, title: str) -> Path | None:
    """The `keys` recorded in a run's metrics.jsonl against meta-iterations (`draw_training_curve`),
    saved to `path`; None when none of them was recorded."""
    rows = [json.loads(line) for line in Path(metrics).read_text().splitlines() if line.strip()]
    series = {key: [(row["step"], row[key]) for row in rows if row.get(key) is not None] for key in keys}
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    return save_figure(draw_training_curve(series, title), path)
