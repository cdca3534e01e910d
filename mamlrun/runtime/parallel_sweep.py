"""Signals in a `hydra/launcher=local_parallel` sweep: the parent passes them on, every job saves.

Hydra's joblib launcher runs the jobs in loky worker processes. A SIGTERM to the sweep's parent (a
scheduler, `kill PID`) used to end the parent alone, and joblib then killed its workers mid-
iteration or left them training as orphans; a job that ended with SystemExit (every one-line error)
made joblib kill its siblings at once. Here:

- The parent (`SweepRelay`, started by the Hydra callback `SweepSignals` when the launcher is
  joblib's) keeps the first SIGINT/SIGTERM and passes SIGTERM to every worker that handles it, now
  and for the rest of the sweep (a worker that has not yet started a job would die of it, and loky
  then kills the whole pool). A second Ctrl-C aborts at once.
- A worker handles SIGINT/SIGTERM from its first job on (`worker_job`): during a job they stop it
  (the training loop saves last.pt), between jobs they are kept and the next job does not start.
  A job ends with `JobEnded`, an Exception: Hydra records it as that job's failure and joblib lets
  the other jobs finish, as it does not for SystemExit.
- When the sweep has ended, the parent says what each job's run directory holds (`job_states`).

Linux only (the parent reads which workers handle SIGTERM from /proc); elsewhere the parent's
signal ends the sweep as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mamlrun.runtime.errors import Interrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
RELAY_EVERY_S = 0.2  # how often the parent looks for workers that have not yet been told to stop
HYDRA_JOB_LINE = "Error executing job with overrides:"  # Hydra's line for a failed job of a sweep


class JobEnded(Exception):
    """A job of a parallel sweep ended with a one-line report (an error or a stop): an Exception,
    so Hydra records it as the job's failure and joblib lets the other jobs finish."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(exit_code, message)
        self.exit_code = exit_code
        self.message = message

    def __str__(self) -> str:
        return self.message


def is_joblib(launcher_target: str) -> bool:
    return "joblib" in launcher_target.lower()


# ---------------------------------------------------------------------------- the worker's side
_in_job = False
_stopped: int | None = None  # the signal that stopped this worker's sweep (its next jobs do not start)


def _worker_handler(signum: int, frame: FrameType | None) -> None:
    """The first stop signal ends the running job; later ones (Ctrl-C's SIGINT and the parent's
    SIGTERM both arrive) are kept, so that none cuts into the job's one-line report."""
    global _stopped
    first = _stopped is None
    _stopped = signum
    if _in_job and first:
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}")


def in_worker_job() -> bool:
    """A job of a parallel sweep runs in this process (its report becomes `JobEnded`)."""
    return _in_job


def stopped_by(signum: int) -> None:
    """The job ended on `signum`: the worker's later jobs of this sweep do not start."""
    global _stopped
    _stopped = signum


@contextlib.contextmanager
def worker_job() -> Iterator[None]:
    """The block is one job in a joblib worker: SIGINT/SIGTERM stop it (and are this worker's from
    now on, kept between jobs); `raise_if_stopped` ends a job that comes after a stop."""
    global _in_job
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not _worker_handler:
            signal.signal(signum, _worker_handler)
    _in_job = True
    try:
        yield
    except Interrupted as exc:  # a stop that came after the job's report began: still the job's end
        stopped_by(exc.signum)
        raise JobEnded(exc.exit_code, str(exc)) from None
    finally:
        _in_job = False


def raise_if_stopped() -> None:
    """A job that a stop of the sweep came before: it does not start."""
    if _stopped is not None:
        raise Interrupted(_stopped, f"not started: the sweep was stopped by {signal.Signals(_stopped).name}")


# ---------------------------------------------------------------------------- the parent's side
def children_handling(signum: int) -> list[int]:
    """PIDs of this process's loky workers that handle `signum` (/proc's SigCgt mask)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rpartition(")")[2].split()[1]) != me:
                continue
            if b"loky" not in (entry / "cmdline").read_bytes():
                continue
            caught = next(
                line.split()[1]
                for line in (entry / "status").read_text().splitlines()
                if line.startswith("SigCgt:")
            )
        except (OSError, ValueError, IndexError, StopIteration):
            continue  # the process ended meanwhile
        if int(caught, 16) >> (signum - 1) & 1:
            found.append(int(entry.name))
    return found


class SweepRelay:
    """In the sweep's parent: the first SIGINT/SIGTERM is kept and passed to the workers as
    SIGTERM (a second SIGTERM only repeats it; Ctrl-C's SIGINT reaches them from the terminal
    too, and a second SIGINT would abort a saving job); a second Ctrl-C here aborts at once."""

    def __init__(self, sweep_dir: Path) -> None:
        self.sweep_dir = Path(sweep_dir)
        self.requested: int | None = None
        self._told: set[int] = set()
        self._previous: dict[int, Any] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SweepRelay:
        if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def stop(self) -> None:
        self._done.set()
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = signum
        print(
            f"mamlrun: {signal.Signals(signum).name}: stopping the sweep's jobs (each saves its checkpoint; "
            "Ctrl-C again aborts at once)",
            file=sys.stderr,
            flush=True,
        )
        self._thread = threading.Thread(target=self._tell_workers, name="mamlrun-sweep-relay", daemon=True)
        self._thread.start()

    def _tell_workers(self) -> None:
        """SIGTERM to each worker once, as soon as it handles it, until the sweep ends."""
        while not self._done.is_set():
            for pid in children_handling(signal.SIGTERM):
                if pid not in self._told:
                    self._told.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            self._done.wait(RELAY_EVERY_S)


_relay: SweepRelay | None = None


class SweepSignals(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): a parallel sweep's parent passes its
    signals to the jobs. Nothing happens for the other launchers, whose jobs get the signal as
    the process that runs them (basic) or from their scheduler (submitit)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _relay
        if is_joblib(str(config.hydra.launcher.get("_target_", ""))):
            _relay = SweepRelay(Path(config.hydra.sweep.dir)).start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _relay is not None:
            _relay.stop()


def end_relay() -> SweepRelay | None:
    """The command is over: the relay's handlers are put back; returns it (None: no parallel sweep)."""
    global _relay
    relay, _relay = _relay, None
    if relay is not None:
        relay.stop()
    return relay


def job_states(sweep_dir: Path) -> tuple[list[str], int]:
    """One line per job folder of the sweep that did not finish (where its checkpoint stands and
    the command that resumes it), and how many finished."""
    from mamlrun.runtime import checkpoint as ckpt
    from mamlrun.runtime.errors import UserError

    lines, finished = [], 0
    for job in sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (job / "eval.json").is_file():
            finished += 1
            continue
        if not (job / ".hydra").is_dir():  # Hydra made the folder; the job was refused or did not start
            lines.append(f"job {job.name}: did not start")
            continue
        resume = f"mamlrun resume {shlex.quote(str(job))}"
        try:
            where = ckpt.saved_position(ckpt.checkpoint_dir(job) / ckpt.LAST)
        except UserError:
            lines.append(f"job {job.name}: stopped before its first checkpoint; {resume} starts it again")
            continue
        lines.append(f"job {job.name}: {where}; {resume}")
    return lines, finished


class HeldJobLine:
    """sys.stderr's stand-in during a sweep: holds Hydra's "Error executing job with overrides"
    line until it is known whether the job ended with its own one-line report (`JobEnded`, which
    says more) or with something unexpected (the line is then written after all)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.held: list[str] = []

    def write(self, text: str) -> int:
        if text.startswith(HYDRA_JOB_LINE):
            self.held.append(text)
            return len(text)
        return self.stream.write(text)

    def release(self, drop: bool) -> None:
        if not drop:
            for text in self.held:
                self.stream.write(text)
        self.held.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)
