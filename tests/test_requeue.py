"""Timeout and preemption under submitit (Hydra's submitit launchers): the job finishes its
iteration, saves last.pt, is requeued, resumes in the same run directory and W&B run, and ends
equal to a run that was never stopped. Outside submitit, SIGTERM stops the loop as before."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime import signals
from mamlrun.runtime.errors import Interrupted, TrainingDiverged
from mamlrun.runtime.lock import LOCK_FILE
from mamlrun.runtime.signals import GracefulStop
from mamlrun.runtime.tracking import RUN_ID_FILE
from tests.test_training import flat_state

TOTAL = 300
SETTINGS = ["debug=smoke", f"meta_iterations={TOTAL}", "checkpoint.every=0", "eval.every=0", "log_every=5"]
# One thread per process: the job and the straight run share the CPUs without slowing each other down
# much, and both compute in the same order.
ENV = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def mamlrun(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mamlrun", "train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        stdin=subprocess.DEVNULL,
    )


def first_file(folder: Path, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> Path:
    """The first file matching `pattern` under `folder` once it is not empty (fails if `proc` ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in folder.glob(pattern) if p.stat().st_size > 0]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no {pattern} under {folder} after {timeout} s")


def test_a_signalled_submitit_job_saves_requeues_and_ends_like_a_straight_run(tmp_path):
    # The sweep's output directory is Hydra's default (multirun/<date>/<time>, from ${now:}): the
    # requeued job must find the same one, seconds later.
    sweep = mamlrun(
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=5",
        "logger=wandb",
        *SETTINGS,
        cwd=tmp_path,
    )
    straight_dir = tmp_path / "straight"
    straight = mamlrun(*SETTINGS, f"hydra.run.dir={straight_dir}", cwd=tmp_path)
    try:
        # Once the job trains, send it the signal Slurm sends before the time limit and on preemption
        # (submitit's USR2, what the local controller forwards at timeout_min minus signal_delay_s).
        metrics = first_file(tmp_path, "multirun/*/*/0/metrics.jsonl", sweep)
        run = metrics.parent
        pid = int((run / LOCK_FILE).read_text())
        assert pid != sweep.pid  # the submitit job's own process, which holds the run directory
        os.kill(pid, signal.SIGUSR2)
        out, err = sweep.communicate(timeout=240)
        assert sweep.returncode == 0, out + err
        assert straight.wait(timeout=120) == 0, straight.communicate()
    finally:
        for proc in (sweep, straight):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    # One run directory: the requeued job resumed in the one the first attempt used.
    assert [p.parent for p in tmp_path.glob("multirun/*/*/0/metrics.jsonl")] == [run]
    # submitit caught the signal, requeued the job, started it again and it completed.
    (job_log,) = run.parent.glob(".submitit/*/*_0_log.out")
    submitit_log = job_log.read_text()
    assert "Caught signal SIGUSR2" in submitit_log and "Requeued job" in submitit_log, submitit_log
    assert submitit_log.count("Starting with JobEnvironment") == 2, submitit_log
    assert "Job completed successfully" in submitit_log, submitit_log
    # last.pt was saved at the iteration the signal interrupted (checkpoint.every=0: no other save
    # before the end), before submitit requeued the job, and the requeued job went on from there.
    log = (run / "mamlrun.log").read_text()
    stopped = re.search(r"SIGUSR2: stopped by signal 12 at iteration (\d+); checkpoint saved", log)
    assert stopped, log
    at = int(stopped.group(1))
    assert 0 < at < TOTAL
    assert log.index(stopped.group(0)) < log.index("Requeued job")
    assert f"resuming from {run / 'checkpoints' / 'last.pt'} at iteration {at}" in log, log
    assert (run / "eval.json").is_file()
    # Each iteration's record once, as in a straight run.
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == list(range(5, TOTAL + 1, 5))
    # The same W&B run, continued: both attempts wrote offline runs under the one id.
    run_id = (run / RUN_ID_FILE).read_text().strip()
    attempts = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [p.name for p in attempts] == [f"run-{run_id}.wandb"] * 2
    # Bit for bit what the straight run reached.
    it_a, a = flat_state(run / "checkpoints" / ckpt.LAST)
    it_b, b = flat_state(straight_dir / "checkpoints" / ckpt.LAST)
    assert it_a == it_b == TOTAL
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs from the straight run"


# --------------------------------------------------------------------------- GracefulStop alone

CALLS: list[int] = []


def fake_submitit_handler(signum: int, frame: object) -> None:
    """What submitit's handler does for the local executor: requeue, i.e. exit with code 144."""
    CALLS.append(signum)
    raise SystemExit(144)


def fake_bypass(signum: int, frame: object) -> None:
    """submitit's SIGTERM handler: ignore it."""


@pytest.fixture
def handlers(monkeypatch) -> Iterator[None]:
    """SIGUSR2 with a stand-in for submitit's handler, SIGTERM with its bypass; restored after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)}
    signal.signal(signal.SIGUSR2, fake_submitit_handler)
    signal.signal(signal.SIGTERM, fake_bypass)
    monkeypatch.delenv("SUBMITIT_PREEMPT_SIGNAL", raising=False)
    CALLS.clear()
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_outside_submitit_sigterm_stops_the_loop_as_before(handlers, monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    with pytest.raises(Interrupted), GracefulStop() as stop:
        assert signal.getsignal(signal.SIGUSR2) is fake_submitit_handler  # not ours to take
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested == signal.SIGTERM and not stop.requeue
        raise Interrupted(stop.requested, "stopped")
    assert CALLS == []
    assert signal.getsignal(signal.SIGTERM) is fake_bypass


def test_in_a_submitit_job_its_signal_is_handed_to_submitit_after_the_block(handlers, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(SystemExit) as exited, GracefulStop() as stop:
        assert signal.getsignal(signal.SIGTERM) is fake_bypass  # submitit keeps SIGTERM
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested is None
        signal.raise_signal(signal.SIGUSR2)
        assert stop.requested == signal.SIGUSR2 and stop.requeue
        assert CALLS == []  # the loop still finishes its iteration and saves
        raise Interrupted(stop.requested, "stopped")
    assert exited.value.code == 144 and CALLS == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) is fake_submitit_handler


def test_rank_0_requeues_on_the_agreed_signal_though_another_rank_got_it(handlers, monkeypatch):
    """slurm_ddp: USR2 reached rank 1 only; the ranks agree on it, and rank 0 requeues the job."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    with pytest.raises(SystemExit) as exited, GracefulStop(requeues=True) as stop:
        assert stop.requested is None and not stop.requeue
        stop.agree(int(signal.SIGUSR2))
        assert stop.requeue
        raise Interrupted(stop.requested, "stopped")
    assert exited.value.code == 144 and CALLS == [signal.SIGUSR2]


def test_a_rank_above_0_waits_for_the_requeue_instead_of_exiting_first(handlers, monkeypatch):
    """A task that exits first could make Slurm kill rank 0 before it requeues: ranks > 0 wait to
    be ended by the requeue (here the wait is recorded, not slept) and never requeue themselves."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    waits: list[float] = []
    monkeypatch.setattr("mamlrun.runtime.signals.time.sleep", waits.append)
    with pytest.raises(Interrupted), GracefulStop(requeues=False) as stop:
        signal.raise_signal(signal.SIGUSR2)
        raise Interrupted(stop.requested, "stopped")
    assert waits == [signals.REQUEUE_WAIT_S] and CALLS == []


def test_in_a_submitit_job_an_error_after_the_signal_is_not_requeued(handlers, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(TrainingDiverged), GracefulStop():
        signal.raise_signal(signal.SIGUSR2)
        raise TrainingDiverged("diverged")
    assert CALLS == []


def test_in_a_submitit_job_a_ctrl_c_after_its_signal_aborts_without_requeue(handlers, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(KeyboardInterrupt), GracefulStop():
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGINT)  # a Ctrl-C while stopping aborts at once, as outside submitit
    assert CALLS == []


def test_interrupted_survives_pickling_from_a_worker() -> None:
    """A joblib worker's Interrupted (and ConfigError) is pickled back to the sweep's process: it
    must arrive whole (before, unpickling failed and the parallel sweep's Ctrl-C ended in a traceback)."""
    import pickle

    from mamlrun.runtime.errors import ConfigError, Interrupted

    error = pickle.loads(pickle.dumps(ConfigError("optimizer.lr", float("inf"), "must be > 0")))
    assert (type(error), error.key, str(error)) == (
        ConfigError,
        "optimizer.lr",
        "optimizer.lr=inf is invalid: must be > 0",
    )

    back = pickle.loads(pickle.dumps(Interrupted(15, "stopped at iteration 7")))
    assert (type(back), back.signum, back.exit_code, str(back)) == (
        Interrupted,
        15,
        143,
        "stopped at iteration 7",
    )
