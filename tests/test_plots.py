"""The figures say what they show: labelled axes and legends on every panel, whole-number step
ticks, and legend entries in the kind's own words (episodes per step for meta-RL, not K)."""

from __future__ import annotations

import json

import matplotlib.image
import numpy as np
import torch

from mamlrun.domains.sinusoid import SinusoidTasks
from mamlrun.evaluation import to_result
from mamlrun.plots import draw_curves, draw_training_curve, training_curve_figure
from mamlrun.runtime.seeding import generator
from mamlrun.trainers.rl.meta_test import RETURN


def test_meta_test_curves_have_whole_step_ticks_and_the_kinds_legend():
    values = torch.arange(40.0).reshape(10, 4)  # 10 tasks, steps 0..3
    result = to_result(values, RETURN.name, 20, paper={1: 5.0})
    fig = draw_curves([result], "nav2d", RETURN.axis_label, RETURN.curve)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert all(float(t).is_integer() for t in ax.get_xticks()), ax.get_xticks()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["20 episodes/step", "paper"]
    assert ax.get_xlabel() == "test-time gradient steps" and ax.get_ylabel() == "return"


def test_sinusoid_figure_labels_every_panel():
    tasks = SinusoidTasks()
    test_sets = {k: tasks.sample(2, k, 5, generator(0)) for k in (5, 10, 20)}

    def predict(support, steps, x):  # a stand-in model: the support mean everywhere
        return support[1].mean() * torch.ones_like(x)

    fig = tasks.draw_adaptation(test_sets, predict, 10)
    assert len(fig.axes) == 3
    for ax, k in zip(fig.axes, (5, 10, 20), strict=True):
        assert ax.get_title() == f"sinusoid, K={k}"
        assert ax.get_xlabel() and ax.get_ylabel()
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels == ["ground truth", "pre-update", "1 grad step", "10 grad steps", "K points"]


def test_curves_of_two_metrics_say_which_is_which():
    """The extrapolation meta-test draws mse and mse_unseen for each K: the legend names the metric."""
    values = torch.rand(10, 3)
    results = [to_result(values, name, 5) for name in ("mse", "mse_unseen")]
    fig = draw_curves(results, "sinusoid", "mse")
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == ["mse, K=5", "mse_unseen, K=5"]


def test_the_training_curve_draws_the_recorded_keys_against_iterations(tmp_path):
    rows = [{"step": s, "train/return_pre": -s, "train/return_post": -s / 2} for s in (10, 20, 30)]
    rows.append({"step": 30, "val/return_step1": -5.0})
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    keys = ("train/return_pre", "train/return_post", "val/return_step1", "train/never_recorded")
    path = training_curve_figure(metrics, keys, tmp_path / "curve.png", "nav2d")
    assert matplotlib.image.imread(path).shape[0] > 300
    assert training_curve_figure(metrics, ("train/loss",), tmp_path / "none.png", "x") is None
    assert not (tmp_path / "none.png").exists()


def test_a_long_noisy_loss_is_drawn_as_a_running_mean_over_faint_raw_values_on_a_log_scale():
    rng = np.random.default_rng(0)
    steps = list(range(0, 70_000, 10))  # 7000 records
    trend = np.geomspace(4.0, 0.01, len(steps))
    noisy = (trend * rng.lognormal(0.0, 0.8, len(steps))).tolist()
    series = {
        "train/support_loss_pre": list(zip(steps, noisy, strict=True)),
        "val/mse_step1": [(69_990, 0.02)],
    }
    fig = draw_training_curve(series, "sinusoid")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"  # 4 -> 0.01 spans decades
    raw, smooth, val = ax.lines
    assert raw.get_alpha() is not None and raw.get_alpha() < 0.5 and smooth.get_alpha() in (None, 1.0)
    window = len(steps) // 50
    expected = np.convolve(noisy, np.ones(window), "full")[: len(noisy)] / np.minimum(
        np.arange(1, len(noisy) + 1), window
    )
    assert np.allclose(smooth.get_ydata(), expected)
    # the running mean is far steadier than the raw values around the trend
    assert np.std(np.log(np.asarray(smooth.get_ydata()[window:]) / trend[window:])) < 0.3 * np.std(
        np.log(np.asarray(noisy) / trend)
    )
    assert list(val.get_xdata()) == [69_990] and val.get_marker() == "o"
    # a short run keeps its raw line and a linear scale
    fig = draw_training_curve({"train/loss": [(1, 1.0), (2, 0.5), (3, 0.4)]}, "short")
    assert fig.axes[0].get_yscale() == "linear" and len(fig.axes[0].lines) == 1
