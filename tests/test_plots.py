"""The figures say what they show: labelled axes and legends on every panel, whole-number step
ticks, and legend entries in the kind's own words (episodes per step for meta-RL, not K)."""

from __future__ import annotations

import torch

from mamlrun.domains.sinusoid import SinusoidTasks
from mamlrun.evaluation import to_result
from mamlrun.plots import draw_curves
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
