"""The paper's extrapolation experiment (`eval.support_range`): support points from a sub-range of
the sinusoid's inputs, the metric on the whole range and on the unseen part separately."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mamlrun.domains.sinusoid import SinusoidTasks
from mamlrun.run import recipe_for
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.errors import ConfigError
from mamlrun.runtime.seeding import generator
from mamlrun.trainers.supervised.meta_test import eval_tasks
from tests.conftest import (
    compose_config,
    latest_eval,
    meta_test_results,
    needs_omniglot,
    run_cli,
    smoke_overrides,
)

REPO = Path(__file__).resolve().parents[1]


def batch(tasks: SinusoidTasks, shots: int = 5, query: int = 400):
    return tasks.sample(6, shots, query, generator(3, "cpu"))


@pytest.mark.parametrize("support_range", [(0.0, 5.0), (-1.0, 1.0), (-5.0, -2.0)])
def test_support_points_lie_in_the_range_and_unseen_points_outside_it(support_range):
    tasks = SinusoidTasks()
    drawn = batch(tasks)
    whole, unseen = tasks.restrict_support(drawn, support_range, generator(4, "cpu"))
    low, high = support_range
    x_s, y_s = whole.support
    assert ((x_s >= low) & (x_s <= high)).all()
    assert torch.equal(whole.support[0], unseen.support[0])  # one support set, two query sets
    assert torch.equal(whole.query[0], drawn.query[0])  # the whole range's query points, as drawn
    x_u, y_u = unseen.query
    assert ((x_u < low) | (x_u > high)).all() and ((x_u >= -5.0) & (x_u <= 5.0)).all()
    for x, y in ((x_s, y_s), (x_u, y_u)):  # the labels are the same tasks' curves
        torch.testing.assert_close(y, tasks.curve(drawn.info, x))
    if low > -5.0 and high < 5.0:  # both sides of a middle range are drawn, in proportion to their length
        left = (x_u < low).float().mean()
        assert abs(float(left) - (low + 5.0) / (10.0 - (high - low))) < 0.05


@pytest.mark.parametrize(
    ("support_range", "message"),
    [
        ((0.0, 6.0), "need x_range[0] <= low < high <= x_range[1]"),
        ((-5.0, 5.0), "covers all of x_range"),
        ((2.0, 2.0), "need x_range[0] <= low < high"),
        ((3.0, 1.0), "need finite low <= high"),
    ],
)
def test_a_support_range_that_leaves_nothing_unseen_or_leaves_the_inputs_is_refused(support_range, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SinusoidTasks().check_support_range(support_range)


def test_a_short_extrapolation_run_reports_the_unseen_part_from_its_points_only(tmp_path):
    """The preset's meta-test gives mse and mse_unseen per K; mse_unseen before adaptation equals
    the trained network's error on the test tasks' points outside [0, 5], computed here directly."""
    run = tmp_path / "run"
    run_cli("train", *smoke_overrides(run, "experiment=sinusoid_extrapolation"), cwd=tmp_path, check=True)
    results = {(r["metric"], r["shots"]): r for r in meta_test_results(run)}
    assert set(results) == {("mse", 5), ("mse_unseen", 5), ("mse", 10), ("mse_unseen", 10)}
    assert "mse_unseen K=5" in (run / "table.txt").read_text()
    summary = json.loads((run / "eval.json").read_text())
    assert summary["headline"] == results[("mse", 5)]["mean"][-1]

    path = ckpt.find_checkpoint(run)
    state = ckpt.load_checkpoint(path)
    cfg = compose_config(["debug=smoke", "experiment=sinusoid_extrapolation", "device=cpu"])
    parts = recipe_for(cfg).build(cfg)
    parts.load_weights(state, path)
    whole, unseen = eval_tasks(parts, int(cfg.eval.tasks), 5, int(cfg.eval.seed), "test")
    assert (unseen.query[0] < 0).all() and (whole.support[0] >= 0).all()
    with torch.no_grad():
        errors = ((parts.model(unseen.query[0]) - unseen.query[1]) ** 2).mean(dim=(1, 2))
    assert results[("mse_unseen", 5)]["mean"][0] == pytest.approx(float(errors.mean()), rel=1e-5)
    assert results[("mse_unseen", 5)]["mean"][0] != pytest.approx(results[("mse", 5)]["mean"][0], rel=1e-3)


def test_any_sinusoid_run_is_re_evaluated_with_a_support_range_and_the_figure_script_draws_two(tmp_path):
    """`mamlrun eval RUN eval.support_range=[0,5]` on a plain run, and the side-by-side figure of two
    runs (MAML, and the pretrained baseline) from scripts/figure_extrapolation.py."""
    maml, pretrain = tmp_path / "maml", tmp_path / "pretrain"
    run_cli("train", *smoke_overrides(maml), cwd=tmp_path, check=True)
    assert {r["metric"] for r in meta_test_results(maml)} == {"mse"}
    run_cli("eval", str(maml), "eval.support_range=[0,5]", cwd=tmp_path, check=True)
    assert {r["metric"] for r in meta_test_results(latest_eval(maml))} == {"mse", "mse_unseen"}
    run_cli(
        "train",
        *smoke_overrides(pretrain, "experiment=[sinusoid_extrapolation,pretrain]"),
        cwd=tmp_path,
        check=True,
    )
    figure = tmp_path / "extrapolation.png"
    proc = subprocess.run(
        [sys.executable, "scripts/figure_extrapolation.py", str(maml), str(pretrain), "--out", str(figure)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert figure.stat().st_size > 20_000
    assert "pretrained: mse " in proc.stdout and "mse_unseen " in proc.stdout
    assert "MAML: no mse_unseen in eval.json" in proc.stdout  # its own run was trained without the range


@needs_omniglot
def test_a_domain_without_an_input_range_refuses_a_support_range(tmp_path):
    proc = run_cli(
        "train",
        *smoke_overrides(tmp_path / "run", "experiment=omniglot_minimal", "eval.support_range=[0,5]"),
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert (
        "eval.support_range=[0, 5] is invalid: domain omniglot has no input range to restrict" in proc.stderr
    )
