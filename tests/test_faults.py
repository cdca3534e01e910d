"""Faults from outside the run: a signal at any moment (Ctrl-C, SIGTERM) and a file system that
refuses a write. Each ends with one line and an exit status that tells the truth (128 + signal for
a signal, 2 for the file system), and leaves nothing half-made.

Real processes (`python -m mamlrun`, the console script's entry point), real signals sent at moments
the test observes (torch's library being mapped, the run or eval folder appearing, training under
way, the final meta-test), and a real file-size limit (RLIMIT_FSIZE fails a write as a full disk
does, with EFBIG instead of ENOSPC).
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mamlrun.runtime import checkpoint as ckpt
from tests.conftest import file_hashes, run_cli, smoke_overrides

Moment = Callable[[subprocess.Popen, Path], bool]  # (process, its run directory) -> is it now?
LONG_TRAINING = ("meta_iterations=1000000", "checkpoint.every=0")
LONG_META_TEST = ("eval.tasks=1000000",)


def importing_torch(proc: subprocess.Popen, run_dir: Path) -> bool:
    """torch's library is mapped: the process is in its imports (mamlrun's own code has not run)."""
    try:
        return "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    except OSError:
        return False


def folder_exists(proc: subprocess.Popen, run_dir: Path) -> bool:
    """Hydra made the run directory (training), or the eval folder exists (`mamlrun eval`)."""
    return run_dir.is_dir() and (run_dir.name != "eval" or any(run_dir.iterdir()))


def training(proc: subprocess.Popen, run_dir: Path) -> bool:
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 500


def final_meta_test(proc: subprocess.Popen, run_dir: Path) -> bool:
    """Training ended (its curve is drawn) and the meta-test of the checkpoint runs."""
    return (run_dir / "training_curve.png").is_file()


def meta_test_of_eval(proc: subprocess.Popen, eval_parent: Path) -> bool:
    logs = list(eval_parent.glob("*/eval.log")) if eval_parent.is_dir() else []
    return bool(logs) and "evaluating" in logs[0].read_text()


def both_jobs_training(proc: subprocess.Popen, sweep_dir: Path) -> bool:
    return all(training(proc, sweep_dir / job) for job in ("0", "1"))


def interrupt(
    args: list[str], cwd: Path, watch: Path, moment: Moment, signum: int, to_group: bool = False
) -> subprocess.CompletedProcess:
    """Start `python -m mamlrun ARGS` in a session of its own, send `signum` once `moment` holds (to
    its whole process group with `to_group`, as a terminal's Ctrl-C does), let it end, and check
    that no process of its session outlives it by more than 10 s."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mamlrun", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline"},
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not moment(proc, watch):
        assert proc.poll() is None, f"the command ended before the moment came: {proc.communicate()}"
        assert time.monotonic() < deadline, "the moment never came"
        time.sleep(0.005)
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    deadline = time.monotonic() + 10  # no process of the command outlives it (a sweep's workers)
    while living_in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not living_in_session(proc.pid), f"left running: {living_in_session(proc.pid)}\n{err}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def living_in_session(session: int) -> list[str]:
    """The processes of a session that still run (not zombies), as `pid command`."""
    living = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            living.append(f"{stat.parent.name} {command}")
    return living


def assert_stopped(proc: subprocess.CompletedProcess, signum: int) -> str:
    """Exit 128 + signal, a last line saying it stopped, no traceback; returns that line."""
    assert proc.returncode == 128 + signum, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mamlrun: stopped: "), proc.stderr
    return last


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", [importing_torch, folder_exists, training], ids=lambda m: m.__name__)
def test_a_signal_at_any_moment_of_training_ends_with_128_plus_the_signal(tmp_path, moment, signum):
    run_dir = tmp_path / "my runs" / "lr=0.01,seed=1"  # a space for the shell, `=` and `,` for Hydra
    in_run_dir = ["debug=smoke", f"hydra.run.dir='{run_dir}'"]  # quoted for Hydra's grammar
    proc = interrupt(["train", *in_run_dir, *LONG_TRAINING], tmp_path, run_dir, moment, signum)
    last = assert_stopped(proc, signum)
    if moment is training:  # the loop saved where it was, and the run goes on from there
        hint = last.partition("resume with: ")[2]
        assert shlex.split(hint) == ["mamlrun", "resume", str(run_dir)], last  # a command to paste
        stopped_at = ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"]
        assert stopped_at > 0
        run_cli(*shlex.split(hint)[1:], f"meta_iterations={stopped_at + 2}", cwd=tmp_path, check=True)
    else:  # nothing was under way: the run directory takes a new run (no lock, no half-made record)
        run_cli("train", *in_run_dir, cwd=tmp_path, check=True)
    assert (run_dir / "eval.json").is_file()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_in_the_final_meta_test_says_how_to_resume_and_the_resume_finishes(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = interrupt(
        ["train", *smoke_overrides(run_dir, *LONG_META_TEST)], tmp_path, run_dir, final_meta_test, signum
    )
    last = assert_stopped(proc, signum)
    assert "during the final meta-test" in last and last.endswith(f"resume with: mamlrun resume {run_dir}")
    assert not (run_dir / "eval.json").exists()
    run_cli("resume", str(run_dir), "eval.tasks=20", cwd=tmp_path, check=True)
    assert (run_dir / "eval.json").is_file()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    run_cli("train", *smoke_overrides(root / "run"), cwd=root, check=True)
    return root / "run"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("moment", [importing_torch, meta_test_of_eval], ids=lambda m: m.__name__)
def test_an_interrupted_eval_ends_with_128_plus_the_signal_and_leaves_no_folder(finished_run, moment, signum):
    before = file_hashes(finished_run)
    args = ["eval", str(finished_run), *LONG_META_TEST]
    proc = interrupt(args, finished_run.parent, finished_run / "eval", moment, signum)
    last = assert_stopped(proc, signum)
    if moment is meta_test_of_eval:
        assert "evaluation interrupted" in last and "was removed: run it again" in last, last
    assert file_hashes(finished_run) == before and not (finished_run / "eval").exists()


def run_with_file_size_limit(args: list[str], cwd: Path, limit: int) -> subprocess.CompletedProcess:
    """`python -m mamlrun ARGS` where no file may grow past `limit` bytes (as on a full disk)."""

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "mamlrun", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WANDB_MODE": "offline"},
        preexec_fn=small_disk,
    )


def assert_names_the_file(proc: subprocess.CompletedProcess, folder: Path) -> str:
    """Exit 2 and one line naming a file under `folder` and the OS's reason; returns the file."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    prefix = f"mamlrun: error: cannot write {folder}/"
    assert last.startswith(prefix) and "(File too large): free space" in last, last
    return last.removeprefix("mamlrun: error: cannot write ").split(" (")[0]


def test_an_eval_on_a_full_disk_names_the_file_and_removes_its_folder(finished_run):
    before = file_hashes(finished_run)
    proc = run_with_file_size_limit(["eval", str(finished_run)], finished_run.parent, 16 * 1024)
    written = assert_names_the_file(proc, finished_run / "eval")
    assert written.endswith(".png"), written  # the figures are the first files past 16 KB
    assert file_hashes(finished_run) == before and not (finished_run / "eval").exists()


def test_training_on_a_full_disk_names_the_file_and_keeps_the_checkpoints(finished_run, tmp_path):
    """A limit the checkpoints fit under and the meta-test's largest figure does not."""
    sizes = {p.name: p.stat().st_size for p in finished_run.rglob("*") if p.is_file()}
    checkpoint, figure = sizes["last.pt"], max(v for k, v in sizes.items() if k.endswith(".png"))
    assert figure > checkpoint * 1.2, sizes
    run_dir = tmp_path / "run"
    proc = run_with_file_size_limit(
        ["train", *smoke_overrides(run_dir)], tmp_path, (checkpoint + figure) // 2
    )
    written = assert_names_the_file(proc, run_dir)
    assert written.endswith(".png"), written
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 4


PARALLEL_SWEEP = ("-m", "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2", "seed=0,1,2")


@pytest.mark.parametrize(
    ("signum", "to_group"), [(signal.SIGTERM, False), (signal.SIGINT, True)], ids=["SIGTERM-parent", "Ctrl-C"]
)
def test_a_signal_to_a_parallel_sweep_stops_every_job_where_it_is_and_leaves_no_process(
    tmp_path, signum, to_group
):
    """SIGTERM to the parent alone (a scheduler, `kill PID`) or Ctrl-C (the whole process group):
    both running jobs save where they are, the queued third does not start, the parent lists them
    and exits 128 + signal, no worker outlives it, and a stopped job resumes."""
    sweep = tmp_path / "sweep"
    args = ["train", *PARALLEL_SWEEP, "debug=smoke", f"hydra.sweep.dir={sweep}", *LONG_TRAINING]
    proc = interrupt(args, tmp_path, sweep, both_jobs_training, signum, to_group=to_group)
    last = assert_stopped(proc, signum)
    name = signal.Signals(signum).name
    assert (
        last
        == f"mamlrun: stopped: sweep {sweep} interrupted by {name}: 0 job(s) finished, 3 did not (listed above)"
    )
    lines = proc.stderr.strip().splitlines()
    for job in ("0", "1"):
        stopped_at = ckpt.load_checkpoint(sweep / job / "checkpoints" / "last.pt")["iteration"]
        assert stopped_at > 0
        saved = (
            f"mamlrun: job {job}: saved at iteration {stopped_at} of 1000000; mamlrun resume {sweep / job}"
        )
        assert saved in lines, proc.stderr
    assert "mamlrun: job 2: did not start" in lines
    assert [p.name for p in (sweep / "2").iterdir()] == ["mamlrun.log"]  # Hydra's, empty
    assert not (sweep / "2" / "mamlrun.log").read_text()
    run_cli("resume", str(sweep / "0"), f"meta_iterations={stopped_at + 2}", cwd=tmp_path, check=True)
    assert (sweep / "0" / "eval.json").is_file()


def test_a_job_that_fails_in_a_parallel_sweep_lets_the_others_finish(tmp_path):
    """A one-line error in one job (a bad value) is that job's end, not its siblings': joblib
    killed every other job at once when a job ended with SystemExit."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", "hydra/launcher=local_parallel", "optimizer.lr=0.001,inf", "debug=smoke",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "mamlrun: error: optimizer.lr=inf is invalid: the meta learning rate must be a finite number > 0"
    ]
    assert json.loads((sweep / "0" / "eval.json").read_text())["results"], "the good job did not finish"
    assert not (sweep / "1" / ".hydra").exists()
