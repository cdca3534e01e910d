"""One run on several processes (torchrun, gloo on the CPU): the result does not depend on the
number of processes, rank 0 alone writes, and a killed rank's run resumes as if never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from mamlrun.runtime import checkpoint as ckpt
from tests.conftest import needs_omniglot, run_cli, smoke_overrides

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
SINUSOID = [
    "alpha=learned",
    "meta_batch=5",
    "meta_iterations=6",
    "log_every=1",
    "eval.every=3",
    "checkpoint.every=2",
]


def torchrun(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m mamlrun train ...`, as a user types it."""
    return run_cli("train", *args, cwd=cwd, timeout=timeout, env={"OMP_NUM_THREADS": "1"}, launcher=TORCHRUN)


def tensors(path: Path) -> dict[str, torch.Tensor]:
    state = ckpt.load_checkpoint(path)
    flat = {f"model.{k}": v for k, v in state["model"].items()}
    flat |= {f"alpha.{k}": v for k, v in state["alpha"].items()}
    for idx, s in state["optimizer"].get("state", {}).items():  # TRPO keeps none
        flat |= {f"adam.{idx}.{k}": v for k, v in s.items() if torch.is_tensor(v) and v.is_floating_point()}
    return flat


def assert_same_run(one: Path, two: Path, atol: float = 1e-6) -> None:
    """Two runs' last.pt hold the same iteration and the same tensors (to `atol`)."""
    assert (
        ckpt.load_checkpoint(one / "checkpoints/last.pt")["iteration"]
        == ckpt.load_checkpoint(two / "checkpoints/last.pt")["iteration"]
    )
    a, b = tensors(one / "checkpoints/last.pt"), tensors(two / "checkpoints/last.pt")
    assert a.keys() == b.keys() and len(a) > 6
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (
            f"{name}: {(a[name] - b[name]).abs().max()}"
        )


def logged(run_dir: Path, key: str) -> list[float]:
    """Every value of `key` in the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[key] for row in rows if key in row]


def train_losses(run_dir: Path) -> list[float]:
    return logged(run_dir, "train/loss")


def test_two_processes_train_the_sinusoid_as_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *smoke_overrides(one, *SINUSOID), cwd=tmp_path, check=True)
    scratch_before = set(Path(tempfile.gettempdir()).glob("mamlrun-rank1-*"))
    proc = torchrun(*smoke_overrides(two, *SINUSOID), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(one, two)
    assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-6)  # one metrics.jsonl, rank 0's
    assert len(train_losses(two)) == 6
    assert "world size 2 (torch.distributed, cpu per rank)" in (two / "mamlrun.log").read_text()
    assert json.loads((two / "eval.json").read_text())["world_size"] == 2
    assert json.loads((one / "eval.json").read_text())["world_size"] == 1
    left = set(Path(tempfile.gettempdir()).glob("mamlrun-rank1-*")) - scratch_before
    assert not left, f"rank 1's scratch directory is left behind: {left}"


@pytest.mark.slow
@needs_omniglot
def test_two_processes_train_omniglot_as_one(tmp_path):
    common = [
        "experiment=omniglot_minimal",
        "meta_batch=4",
        "meta_iterations=3",
        "eval.every=0",
        "eval.tasks=4",
    ]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *smoke_overrides(one, *common), cwd=tmp_path, check=True)
    proc = torchrun(*smoke_overrides(two, *common), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(one, two, atol=1e-5)  # a conv net's reductions split over two processes


def test_two_processes_train_nav2d_with_trpo_as_one(tmp_path):
    """Each rank samples and adapts its own tasks; TRPO's gradient, every conjugate-gradient
    product and the line search's loss and KL are summed over the ranks. 5 tasks: 3 and 2."""
    nav = ["experiment=nav2d_smoke", "meta_batch=5", "meta_iterations=3", "eval.every=0"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *smoke_overrides(one, *nav), cwd=tmp_path, check=True)
    proc = torchrun(*smoke_overrides(two, *nav), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(one, two)
    for key in ("train/return_pre", "train/return_post", "train/surrogate_after", "train/kl"):
        assert logged(two, key) == pytest.approx(logged(one, key), rel=1e-5, abs=1e-7), key
    assert len(logged(two, "train/return_post")) >= 2  # logged every log_every iterations
    assert "world size 2 (torch.distributed, cpu per rank)" in (two / "mamlrun.log").read_text()


def rank_process(rank: int, run_dir: Path) -> int | None:
    """The PID of the torchrun worker of `rank` training in `run_dir` (read from /proc)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"hydra.run.dir={run_dir}".encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(proc.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_and_a_restarted_torchrun_end_as_one_uninterrupted_run(tmp_path):
    """SIGKILL rank 1 mid-run: torchrun stops the other rank; the same torchrun command again
    resumes every rank from rank 0's last.pt and ends equal to an uninterrupted torchrun run (over
    300 Adam steps one and two processes drift apart by float rounding, ~1e-6, so the reference is
    a two-process run too)."""
    total = 300
    long = ["alpha=learned", "meta_batch=4", "inner_steps=3", f"meta_iterations={total}", "log_every=1"]
    long += ["eval.every=0", "checkpoint.every=5"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    first = torchrun(*smoke_overrides(straight, *long), cwd=tmp_path)  # uninterrupted, also on 2 processes
    assert first.returncode == 0, first.stderr[-3000:]

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [*TORCHRUN, "-m", "mamlrun", "train", *smoke_overrides(killed, *long)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.is_file() or metrics.read_text().count("train/loss") < 12):
        time.sleep(0.02)
    rank1 = rank_process(1, killed)
    assert rank1 is not None, "rank 1 not found (did the run end already?)"
    os.kill(rank1, signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0
    stopped = ckpt.load_checkpoint(killed / "checkpoints/last.pt")["iteration"]
    assert 0 < stopped < total

    again = torchrun(*smoke_overrides(killed, *long), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    log_text = (killed / "mamlrun.log").read_text()
    assert f"resuming from {killed / 'checkpoints' / 'last.pt'} at iteration {stopped}" in log_text
    assert_same_run(straight, killed, atol=0.0)  # bit for bit: the same processes redo the same sums
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if "train/loss" in line]
    assert steps == list(range(1, total + 1))
