"""Checkpoints are written atomically, loaded safely, and every bad one gets a one-line error."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.errors import CheckpointError
from tests.conftest import run_cli, smoke_overrides


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
