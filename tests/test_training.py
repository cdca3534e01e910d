"""Exact resume, clean stop on SIGTERM, and stopping on a diverged loss with the last good checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from mamlrun.run import train_in
from mamlrun.runtime import checkpoint as ckpt
from tests.conftest import run_cli, smoke_overrides

N = 6
COMMON = [
    "meta_batch=4",
    "alpha=learned",
    "inner_steps=2",
    "eval.every=4",
    "checkpoint.every=3",
    "log_every=1",
    "eval.shots=[5]",
    "eval.tasks=4",
]


def flat_state(path):
    state = ckpt.load_checkpoint(path)
    tensors = {f"model.{k}": v for k, v in state["model"].items()}
    tensors |= {f"alpha.{k}": v for k, v in state["alpha"].items()}
    for idx, s in state["optimizer"]["state"].items():
        tensors |= {f"adam.{idx}.{k}": v for k, v in s.items() if torch.is_tensor(v)}
    return state["iteration"], tensors


def test_resumed_run_is_bit_identical_to_a_straight_run(tmp_path, smoke_cfg):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_in(smoke_cfg(*COMMON, f"meta_iterations={2 * N}"), straight)
    train_in(smoke_cfg(*COMMON, f"meta_iterations={N}"), resumed)
    assert flat_state(resumed / "checkpoints" / "last.pt")[0] == N
    train_in(smoke_cfg(*COMMON, f"meta_iterations={2 * N}"), resumed)  # continues from last.pt

    it_a, a = flat_state(straight / "checkpoints" / "last.pt")
    it_b, b = flat_state(resumed / "checkpoints" / "last.pt")
    assert it_a == it_b == 2 * N
    assert a.keys() == b.keys() and len(a) > 6
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"
    # The metric log of the resumed run has each step once, as the straight run does.
    steps = [
        json.loads(line)["step"]
        for line in (resumed / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    assert steps == list(range(1, 2 * N + 1))


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "mamlrun",
        "train",
        *smoke_overrides(run_dir, "meta_iterations=1000000", "checkpoint.every=0", "log_every=1"),
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or metrics.stat().st_size < 2000):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    last_line = err.strip().splitlines()[-1]
    assert "stopped by signal 15" in last_line
    assert last_line.endswith(f"resume with: mamlrun resume {run_dir}"), last_line  # the command that resumes
    stopped_at = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"]
    assert 0 < stopped_at < 1000000

    proc = run_cli("resume", str(run_dir), f"meta_iterations={stopped_at + 4}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"resuming from {run_dir / 'checkpoints' / 'last.pt'} at iteration {stopped_at}"
        in proc.stderr + proc.stdout
    )
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == stopped_at + 4


def test_diverged_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train",
        *smoke_overrides(
            run_dir,
            "meta_iterations=200",
            "optimizer.lr=1e30",
            "log_every=1",
            "checkpoint.every=1",
            "eval.every=0",
        ),
        cwd=tmp_path,
    )
    assert proc.returncode == 3, proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mamlrun: error: training diverged") and "Traceback" not in proc.stderr
    state = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert str(run_dir / "checkpoints" / "last.pt") in last_line
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert state["iteration"] >= 1
