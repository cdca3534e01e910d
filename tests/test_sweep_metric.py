"""What a sweep optimises: `optimized_metric`, returned by every trainer, and Optuna presets for
each kind of domain that optimise a validation metric, never the meta-test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mamlrun.run import train_in
from mamlrun.runtime.errors import ConfigError, UserError
from tests.conftest import needs_omniglot, run_cli


def logged(run_dir: Path, key: str) -> list[float]:
    """Every value of `key` in the run's metrics.jsonl, in order."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    values = [float(r[key]) for r in records if key in r]
    assert values, f"{key} not in {run_dir / 'metrics.jsonl'}"
    return values


def test_train_returns_the_named_metric(tmp_path, smoke_cfg):
    run_dir = tmp_path / "run"
    default = train_in(smoke_cfg(), run_dir)
    validation = logged(run_dir, "val/mse_step2")
    assert len(validation) == 2 and default == min(validation)  # by default: the best validation MSE
    # the same finished run, asked for other metrics: the meta-test's after 2 steps, the last training loss
    eval_json = json.loads((run_dir / "eval.json").read_text())
    k5 = next(r for r in eval_json["results"] if r["shots"] == 5)
    assert train_in(smoke_cfg("optimized_metric=eval/mse_k5_step2"), run_dir) == pytest.approx(k5["mean"][2])
    assert train_in(smoke_cfg("optimized_metric=train/loss"), run_dir) == logged(run_dir, "train/loss")[-1]
    assert train_in(smoke_cfg("optimized_metric=best/val_metric"), run_dir) == default


def test_a_metric_the_run_does_not_log_is_named_with_what_it_logs(tmp_path, smoke_cfg):
    with pytest.raises(
        ConfigError, match=r"optimized_metric='accuracy' is invalid: name a logged metric \(train/"
    ):
        train_in(smoke_cfg("optimized_metric=accuracy"), tmp_path / "a")
    with pytest.raises(
        UserError, match=r"optimized_metric='val/acc_step2' is not a metric this run logged; "
    ):
        train_in(smoke_cfg("optimized_metric=val/acc_step2"), tmp_path / "b")


def sweep_values(sweep: Path) -> list[float]:
    """Each trial's best validation metric, read from its own files."""
    values = []
    for trial in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        key = next(k for k in (trial / "metrics.jsonl").read_text().split('"') if k.startswith("val/"))
        records = [json.loads(line) for line in (trial / "metrics.jsonl").read_text().splitlines()]
        values.append(max(r[key] for r in records if key in r))
    return values


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset",
    [pytest.param("omniglot_minimal_optuna", marks=needs_omniglot), "nav2d_optuna"],
)
def test_optuna_preset_maximises_the_validation_metric_of_each_trial(tmp_path, preset):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        f"hparams_search={preset}",
        "debug=smoke",
        "eval.every=2",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    values = sweep_values(sweep)
    assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert best.best_value == pytest.approx(
        max(values)
    )  # what train() returned: each trial's best validation
