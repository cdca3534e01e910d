"""`eval.alpha_values`: a test-time step size per step, used by validation and the meta-test only.

The paper's 2D-navigation code meta-trained with alpha 0.5 and adapted at test with 0.25, so one run
must be able to train with one step size and adapt its test tasks with another. Checked against the
other route to the same step sizes (overriding the trained schedule's `alpha.value` at eval).
"""

from __future__ import annotations

import json

import pytest
import torch

from mamlrun.maml import ConstantAlpha, HalvingAlpha, LearnedAlpha, MetaSGDAlpha, alpha_at_test
from mamlrun.runtime.errors import ConfigError
from tests.conftest import latest_eval, run_cli, smoke_overrides

SHAPES = {"net.0.weight": torch.Size([4, 1]), "net.0.bias": torch.Size([4])}


def step_sizes(alpha, steps: int) -> list[float]:
    return [float(alpha.rates(dict(alpha.named_parameters()), k)["net.0.bias"]) for k in range(steps)]


def test_no_list_keeps_the_trained_schedule_and_a_list_replaces_it_step_by_step():
    trained = HalvingAlpha(0.5, SHAPES, 1)
    assert alpha_at_test(trained, None) is trained
    replaced = alpha_at_test(trained, [0.25, 0.125])
    assert step_sizes(replaced, 4) == [0.25, 0.125, 0.125, 0.125]
    assert set(replaced.rates({}, 0)) == set(SHAPES)
    assert step_sizes(trained, 3) == [0.5, 0.25, 0.25]  # the training schedule is untouched


@pytest.mark.parametrize(
    "trained, values, message",
    [
        (ConstantAlpha(0.4, SHAPES, 1), 0.25, "give a list of step sizes > 0"),
        (ConstantAlpha(0.4, SHAPES, 1), "0.25", "give a list of step sizes > 0"),
        (ConstantAlpha(0.4, SHAPES, 1), [], "give at least one step size"),
        (ConstantAlpha(0.4, SHAPES, 1), [0.25, 0.0], "eval.alpha_values[1]=0.0 is invalid"),
        (LearnedAlpha(0.4, SHAPES, 1), [0.25], "LearnedAlpha meta-trains its own step sizes"),
        (MetaSGDAlpha(0.4, SHAPES, 1), [0.25], "MetaSGDAlpha meta-trains its own step sizes"),
    ],
)
def test_bad_test_time_lists_are_config_errors_naming_the_key(trained, values, message):
    with pytest.raises(ConfigError, match=r"eval\.alpha_values") as caught:
        alpha_at_test(trained, values)
    assert message in str(caught.value)


def eval_means(run_dir, *overrides: str, cwd) -> tuple[list[float], str]:
    """`mamlrun eval RUN overrides...`: the first result's means and the step sizes it reports."""
    run_cli("eval", str(run_dir), "logger=none", *overrides, cwd=cwd, check=True)
    record = json.loads((latest_eval(run_dir) / "eval.json").read_text())
    return record["results"][0]["mean"], record["test_alpha"]


def test_rl_meta_test_adapts_with_the_list_as_the_schedule_with_those_values_would(tmp_path):
    """nav2d (alpha=halving, trained with 0.1): [0.2, 0.1] == halving from 0.2; [0.2] differs from step 2."""
    run_dir = tmp_path / "nav"
    run_cli(
        "train", "experiment=nav2d_smoke", "logger=none", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=True
    )
    halving, halving_alpha = eval_means(run_dir, "alpha.value=0.2", cwd=tmp_path)
    listed, listed_alpha = eval_means(run_dir, "eval.alpha_values=[0.2,0.1]", cwd=tmp_path)
    constant, _ = eval_means(run_dir, "eval.alpha_values=[0.2]", cwd=tmp_path)
    trained, trained_alpha = eval_means(run_dir, cwd=tmp_path)
    assert listed == halving
    assert constant[:2] == halving[:2] and constant[2:] != halving[2:]  # step 2 on: 0.2 instead of 0.1
    assert trained[0] == listed[0] and trained[1] != listed[1]  # the trained 0.1 at the first step
    assert listed_alpha == "per-step alpha=0.2,0.1 (last repeats)" and halving_alpha != trained_alpha


def test_supervised_meta_test_adapts_with_the_list(tmp_path):
    """A sinusoid run (constant alpha): the list [a] adapts as alpha.value=a does."""
    run_dir = tmp_path / "sin"
    run_cli("train", *smoke_overrides(run_dir, "logger=none"), cwd=tmp_path, check=True)
    listed, listed_alpha = eval_means(run_dir, "eval.alpha_values=[0.03]", cwd=tmp_path)
    constant, _ = eval_means(run_dir, "alpha.value=0.03", cwd=tmp_path)
    trained, _ = eval_means(run_dir, cwd=tmp_path)
    assert listed == constant and listed[1:] != trained[1:] and listed[0] == trained[0]
    assert listed_alpha.startswith("per-step alpha=0.03")


def test_training_is_unchanged_and_validation_adapts_with_the_list(tmp_path):
    """Two nav2d runs that differ only in eval.alpha_values train identically and validate differently."""
    runs = {}
    for name, extra in (("trained", []), ("listed", ["eval.alpha_values=[0.3]"])):
        run_dir = tmp_path / name
        run_cli(
            "train", "experiment=nav2d_smoke", "logger=none", f"hydra.run.dir={run_dir}", *extra,
            cwd=tmp_path, check=True,
        )  # fmt: skip
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (
            [{k: v for k, v in r.items() if k.startswith("train/")} for r in rows],
            [r["val/return_step1"] for r in rows if "val/return_step1" in r],
        )
    (train_a, val_a), (train_b, val_b) = runs["trained"], runs["listed"]
    assert train_a == train_b and any(train_a)
    assert val_a and len(val_a) == len(val_b) and val_a != val_b
