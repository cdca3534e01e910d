"""Every preset the way a user runs it: the real CLI in a fresh process with `threads=2`, the default a
2-core user gets (the suite's own torch runs on one thread, which hid a crash on two). The `*_smoke`
presets run as they are; every other preset runs under `debug=smoke`. Each run is checked whole: it
replaces the in-process smoke runs of the RL, Omniglot and MiniImageNet presets the suite had."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from mamlrun.runtime import checkpoint as ckpt
from tests.conftest import MINIMAL_PAPER_SPLIT, compose_config, meta_test_results, needs_omniglot, run_cli
from tests.data_factory import write_miniimagenet_pickles
from tests.test_configs import options

PRESETS = options("experiment")


def preset_overrides(preset: str, tmp_path: Path) -> list[str]:
    """What a user types for `preset` on this machine, plus the data the image presets need here."""
    overrides = [f"experiment={preset}", "threads=2"]
    if not preset.endswith("_smoke"):
        overrides.append("debug=smoke")
    if preset.startswith("omniglot") and not preset.startswith("omniglot_minimal"):
        overrides += MINIMAL_PAPER_SPLIT  # the full-Omniglot presets on the minimal sets' 242 characters
    if preset.startswith("miniimagenet"):  # generated pickles in the real format, at 32x32 pixels
        root = write_miniimagenet_pickles(
            tmp_path / "mini", {"train": 6, "val": 5, "test": 5}, images_per_class=20, size=32
        )
        overrides += [
            "domain.image_size=32",
            f"domain.tasks.root={root}",
            f"domain.tasks.cache_dir={tmp_path}",
        ]
    return overrides


needs_metaworld = pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is None,
    reason="Meta-World is not installed (pip install 'mamlrun[metaworld]'; make install has it)",
)


def preset_param(preset: str):
    marks = [needs_omniglot] if preset.startswith("omniglot") else []
    marks += [needs_metaworld] if preset.startswith("ml1") else []
    return pytest.param(preset, marks=marks, id=preset)


def test_the_matrix_covers_every_preset_and_every_smoke_preset_runs_as_it_is(tmp_path):
    smoke = [p for p in PRESETS if p.endswith("_smoke")]
    assert set(smoke) == {
        "nav2d_smoke",
        "halfcheetah_vel_smoke",
        "halfcheetah_dir_smoke",
        "ant_vel_smoke",
        "ant_dir_smoke",
        "ml1_reach_smoke",
        "ml10_smoke",
    }
    assert all("debug=smoke" not in preset_overrides(p, tmp_path) for p in smoke)
    assert len(PRESETS) >= 30


@pytest.mark.parametrize("preset", [preset_param(p) for p in PRESETS])
def test_every_preset_runs_from_the_cli_with_two_threads(tmp_path, preset):
    """The whole run: training, checkpoints, the meta-test and, for meta-RL, its figures and metrics."""
    overrides = preset_overrides(preset, tmp_path)
    run = tmp_path / "run"
    proc = run_cli("train", *overrides, f"hydra.run.dir={run}", cwd=tmp_path, timeout=600, fresh=True)
    assert proc.returncode == 0, f"mamlrun train {' '.join(overrides)}:\n{proc.stderr[-4000:]}"
    assert "torch threads: 2 (threads=2;" in (run / "mamlrun.log").read_text()
    cfg = compose_config(overrides)
    assert ckpt.load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == cfg.meta_iterations
    results = meta_test_results(run)
    assert results and all(len(r["steps"]) == cfg.eval.steps + 1 for r in results)
    assert all(math.isfinite(m) for r in results for m in r["mean"]), results
    if cfg.domain.kind == "classification":
        assert all(r["metric"] == "acc" and r["num_tasks"] == cfg.eval.tasks for r in results)
        assert all(0.0 <= m <= 100.0 for r in results for m in r["mean"])
    if cfg.domain.kind == "rl":
        assert [r["metric"] for r in results] == (
            ["return", "success"] if cfg.domain.name == "metaworld" else ["return"]
        )
        assert (run / "trajectories.png").exists() == preset.startswith("nav2d")
        assert (run / "training_curve.png").stat().st_size > 10_000  # returns before/after adaptation
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [m for m in metrics if "train/return_pre" in m]
        assert [m["step"] for m in train] == list(
            range(cfg.log_every, cfg.meta_iterations + 1, cfg.log_every)
        )
        assert all(
            m["perf/sample_s"] > 0 and m["perf/update_s"] > 0 and m["perf/env_steps_per_s"] > 0 for m in train
        )
