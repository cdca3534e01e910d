"""Checkpoints are written atomically, loaded safely, and every bad one gets a one-line error."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.errors import CheckpointError
from tests.conftest import needs_omniglot, run_cli, smoke_overrides


class RunsCode:
    """An object whose unpickling would run a shell command (the classic pickle exploit)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "version": ckpt.VERSION, "model": RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match=r"refusing to load .*could run code"):
        ckpt.load_checkpoint(evil)
    assert not marker.exists()

    proc = run_cli("eval", str(evil), cwd=tmp_path)
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]  # one line
    assert "refusing to load" in proc.stderr and "Traceback" not in proc.stderr


def test_truncated_and_foreign_files_are_named_errors(tmp_path):
    good = tmp_path / "good.pt"
    ckpt.save_checkpoint(good, {"iteration": 3, "model": {"w": torch.ones(3)}})
    assert ckpt.load_checkpoint(good)["iteration"] == 3
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        ckpt.load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"w": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a mamlrun checkpoint"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_failed_save_leaves_the_previous_checkpoint_and_no_temp_files(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"iteration": 1})
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled: the write fails midway
        ckpt.save_checkpoint(path, {"iteration": 2, "bad": lambda: None})
    assert ckpt.load_checkpoint(path)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_rng_state_round_trips():
    g = torch.Generator().manual_seed(5)
    state = ckpt.capture_rng({"sampler": g})
    expected = (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(1)),
        float(torch.rand(1, generator=g)),
    )
    random.seed(0), np.random.seed(0), torch.manual_seed(0), g.manual_seed(0)
    ckpt.restore_rng(state, {"sampler": g})
    assert (
        random.random(),
        float(np.random.rand()),
        float(torch.rand(1)),
        float(torch.rand(1, generator=g)),
    ) == expected


def test_resume_from_a_corrupt_checkpoint_stops_without_touching_it(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    corrupt = run_dir / "checkpoints" / "last.pt"
    corrupt.write_bytes(b"not a zip file at all")
    proc = run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("mamlrun: error: checkpoint")
    assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert corrupt.read_bytes() == b"not a zip file at all"


def test_checkpoint_of_another_model_is_a_named_mismatch(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path, check=True)
    proc = run_cli("train", *smoke_overrides(run_dir, "model.hidden=[8]", "meta_iterations=8"), cwd=tmp_path)
    assert proc.returncode == 2
    # resuming: refused before loading, naming the setting that differs
    assert "(model.hidden=[40, 40] in the checkpoint, [8] now)" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    # evaluating under another model: the model comes from the checkpoint, so the override is refused
    proc = run_cli("eval", str(run_dir), "model.hidden=[8]", cwd=tmp_path)
    assert proc.returncode == 2
    assert "'model.hidden=[8]' cannot take effect in mamlrun eval" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and not (run_dir / "eval").exists()


def drop_from_saved_config(run_dir, dotted: str) -> None:
    """Make `run_dir` look written before setting `dotted` existed: remove it from last.pt's config
    and from .hydra/config.yaml (what an older mamlrun wrote)."""
    import yaml

    *parents, leaf = dotted.split(".")
    last = run_dir / "checkpoints" / "last.pt"

    def without(text: str) -> str:
        settings = yaml.safe_load(text)
        node = settings
        for part in parents:
            node = node[part]
        del node[leaf]
        return yaml.safe_dump(settings)

    state = ckpt.load_checkpoint(last)
    state["config"] = without(state["config"])  # the run's config, as YAML text
    ckpt.save_checkpoint(last, state)
    record = run_dir / ".hydra" / "config.yaml"
    record.write_text(without(record.read_text()))


def test_a_nav2d_run_from_before_goal_region_resumes_only_with_the_circle_it_used(tmp_path):
    """Before domain.tasks.goal_region, episodes ended within a circle: resuming such a run under
    the box default is refused naming both, and it resumes with goal_region=circle."""
    nav = tmp_path / "nav"
    run_cli(
        "train", "experiment=nav2d_smoke", "logger=none", "meta_iterations=2", "eval.every=0",
        "checkpoint.every=1", f"hydra.run.dir={nav}", cwd=tmp_path, check=True,
    )  # fmt: skip
    drop_from_saved_config(nav, "domain.tasks.goal_region")
    refused = run_cli("resume", str(nav), "meta_iterations=3", cwd=tmp_path)
    assert refused.returncode == 2
    assert "domain.tasks.goal_region='circle' in the checkpoint, 'box' now" in refused.stderr, refused.stderr
    resumed = run_cli(
        "resume", str(nav), "meta_iterations=3", "domain.tasks.goal_region=circle", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ckpt.load_checkpoint(nav / "checkpoints" / "last.pt")["iteration"] == 3


@needs_omniglot
def test_a_conv_run_from_before_zero_head_resumes_and_evaluates(tmp_path):
    """Before model.zero_head, conv nets meta-trained their head (false): such a run resumes and
    `mamlrun eval` takes it."""
    conv = tmp_path / "conv"
    run_cli(
        "train", "experiment=omniglot_minimal", "debug=smoke", "logger=none", "meta_iterations=2",
        "eval.every=0", "checkpoint.every=1", f"hydra.run.dir={conv}", cwd=tmp_path, check=True,
    )  # fmt: skip
    drop_from_saved_config(conv, "model.zero_head")
    resumed = run_cli("resume", str(conv), "meta_iterations=3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ckpt.load_checkpoint(conv / "checkpoints" / "last.pt")["iteration"] == 3
    drop_from_saved_config(conv, "model.zero_head")
    evaluated = run_cli("eval", str(conv), "logger=none", "eval.tasks=4", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
