"""What protects a run directory: one process at a time, stale temporary files cleaned, a finished
run left alone, a new learning rate honoured on resume, and a stop message that names the resume."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from mamlrun.run import train_in
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.lock import RunLock
from tests.conftest import file_hashes, run_cli, smoke_overrides
from tests.test_faults import run_with_file_size_limit


def test_a_second_process_in_a_run_directory_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):  # this test process holds the run, as a live training process would
        proc = run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"mamlrun: error: run directory {run_dir} is in use"), proc.stderr
    assert f"PID {os.getpid()}" in lines[-1] and "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
    # the lock goes with its holder: the same command now runs
    run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path, check=True)
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 4


def test_temporary_files_of_killed_checkpoint_writes_are_removed_on_start(tmp_path, smoke_cfg, caplog):
    train_in(smoke_cfg("meta_iterations=2"), tmp_path)
    folder = tmp_path / "checkpoints"
    stale = [folder / ".last.pt.k1ll3d", folder / ".best.pt.x9q2ab"]  # what mkstemp leaves on SIGKILL
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    with caplog.at_level(logging.INFO):
        train_in(smoke_cfg("meta_iterations=4"), tmp_path)
    assert not any(p.exists() for p in stale)
    assert sorted(p.name for p in folder.iterdir()) == ["best.pt", "last.pt"]
    assert f"removed {stale[0]}" in caplog.text
    assert ckpt.load_checkpoint(folder / "last.pt")["iteration"] == 4


def test_running_a_finished_run_again_says_so_and_changes_nothing(tmp_path, smoke_cfg, caplog):
    first = train_in(smoke_cfg(), tmp_path)
    before = file_hashes(tmp_path)
    assert "eval.json" in before and "checkpoints/last.pt" in before
    with caplog.at_level(logging.INFO):
        again = train_in(smoke_cfg(), tmp_path)
    assert again == first
    assert (
        f"run {tmp_path} is finished (iteration 4 of 4): results in {tmp_path / 'eval.json'}" in caplog.text
    )
    assert file_hashes(tmp_path) == before  # no second meta-test, no new records


def test_a_new_learning_rate_is_applied_on_resume(tmp_path, smoke_cfg, caplog):
    common = ["eval.every=0", "checkpoint.every=2", "log_every=1"]
    train_in(smoke_cfg(*common, "meta_iterations=2"), tmp_path / "resumed")
    with caplog.at_level(logging.INFO):
        train_in(smoke_cfg(*common, "meta_iterations=4", "optimizer.lr=1e-5"), tmp_path / "resumed")
    assert "optimizer.lr=1e-05 replaces the checkpoint's 0.001" in caplog.text
    state = ckpt.load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert [group["lr"] for group in state["optimizer"]["param_groups"]] == [1e-5]
    # and it changed the training: iterations 3-4 at 1e-5 differ from a straight run at 1e-3
    train_in(smoke_cfg(*common, "meta_iterations=4"), tmp_path / "straight")
    straight = ckpt.load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert any(not torch.equal(state["model"][k], straight["model"][k]) for k in state["model"])


def test_dash_h_is_help(tmp_path):
    proc = run_cli("-h", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "resume" in proc.stdout and "Usage" in proc.stdout


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished smoke run, made by the real CLI (so it has Hydra's .hydra/ record and log file)."""
    root = tmp_path_factory.mktemp("finished")
    run_cli("train", *smoke_overrides(root / "run"), cwd=root, check=True)
    return root / "run"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["meta_batch=0"], "meta_batch=0 is invalid"),
        (["seed=5"], "holds a run with other settings (seed=0 in the checkpoint, 5 now)"),
        (
            ["order=first"],
            "(order.first_order=False in the checkpoint, True now; "
            "order.first_order_iterations=0 in the checkpoint, '<absent>' now; order.name='second'",
        ),
        (["optimizer=sgd"], "optimizer._target_='torch.optim.Adam' in the checkpoint, 'torch.optim.SGD' now"),
        (
            ["domain.tasks.amplitude=[5.0,1.0]"],
            "(domain.tasks.amplitude=[0.1, 5.0] in the checkpoint, [5.0, 1.0] now)",
        ),
        (
            ["compile=maybe", "meta_iterations=6"],
            "compile='maybe' is invalid",
        ),  # found while building the parts
        # a finished run: every value is checked before it is called finished
        (
            ["optimizer.lr=inf"],
            "optimizer.lr=inf is invalid: the meta learning rate must be a finite number > 0",
        ),
        (["compile=maybe"], "compile='maybe' is invalid"),
    ],
)
def test_a_rejected_command_leaves_an_existing_run_byte_identical(finished_run, overrides, message):
    before = file_hashes(finished_run)
    assert ".hydra/config.yaml" in before and "mamlrun.log" in before and "eval.json" in before
    proc = run_cli("train", *smoke_overrides(finished_run, *overrides), cwd=finished_run.parent)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mamlrun: error: ") and message in last, last
    assert "Traceback" not in proc.stderr
    assert file_hashes(finished_run) == before  # .hydra/, the log, checkpoints, results: all as they were
    # and the run still resumes with its own settings
    assert "seed: 0" in (finished_run / ".hydra" / "config.yaml").read_text()


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so_in_one_line(tmp_path):
    """A checkpoint write that fails for lack of space (here: a file-size limit, which fails the
    write the same way, with EFBIG instead of ENOSPC) ends with one line and exit 2; last.pt stays."""
    run_dir = tmp_path / "run"
    run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path, check=True)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    limit = len(before) // 2  # the small files (logs, metrics) fit; a checkpoint does not

    proc = run_with_file_size_limit(
        ["resume", str(run_dir), "meta_iterations=8", "eval.every=0"], tmp_path, limit
    )
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert (
        line
        == f"mamlrun: error: could not write checkpoint {last} (File too large); the previous last.pt is intact"
    )
    assert "Traceback" not in proc.stderr
    assert last.read_bytes() == before
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.pt", "last.pt"]  # no temp file left


@pytest.mark.parametrize("name", ["a b/ü", "it's"], ids=["space-and-non-ASCII", "quote"])
def test_resume_works_in_a_run_directory_of_any_name(tmp_path, name):
    run_dir = tmp_path / name
    # Hydra's grammar needs the name quoted on the train command line; resume quotes it itself
    run_cli("train", "debug=smoke", f'hydra.run.dir="{run_dir}"', cwd=tmp_path, check=True)
    proc = run_cli("resume", str(run_dir), "meta_iterations=6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 6


def test_one_job_of_an_override_dirname_sweep_resumes(tmp_path):
    """Job folders named like `optimizer.lr=0.001,seed=1`: the layout many Hydra users sweep with."""
    sweep = tmp_path / "sweep"
    run_cli(
        "train", "-m", "debug=smoke", f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.override_dirname}", "seed=0,1", cwd=tmp_path, check=True,
    )  # fmt: skip
    job = sweep / "debug=smoke,seed=1"
    proc = run_cli("resume", str(job), "meta_iterations=6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ckpt.load_checkpoint(job / "checkpoints" / "last.pt")["iteration"] == 6
