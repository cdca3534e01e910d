"""SIGINT/SIGTERM, and the scheduler's notice under submitit, as a flag the training loop checks
between iterations.

The loop saves a checkpoint and ends cleanly when the flag is set (this is how a Slurm job that is
preempted or requeued keeps its progress). A second Ctrl-C while stopping aborts at once.

Under submitit (Hydra's submitit_slurm/submitit_local launchers) the scheduler warns a job before
its time limit and on preemption with a signal (USR2, or `SUBMITIT_PREEMPT_SIGNAL`), and submitit's
handler for it requeues the job and exits at once, mid-iteration. `GracefulStop` takes that signal
over while the loop runs: the loop finishes its iteration and saves last.pt, and on the way out of
the block submitit's own handler runs, as if the signal had just come: it requeues the job (which
resumes from last.pt in the same run directory) and exits. SIGTERM stays with submitit there (it
ignores it: Slurm sends it around preemption and requeue, the signal above is the one to act on).

In a job of several tasks (`hydra/launcher=slurm_ddp`) the ranks agree on the signal (`agree`), so
rank 0 requeues even when only another rank got it; the other ranks do not exit first (a task
that fails could make Slurm kill rank 0 before it requeues): they wait for the requeue to end them.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import NoReturn

from mamlrun.runtime.errors import Interrupted

log = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], object]
REQUEUE_WAIT_S = 120.0  # how long a rank > 0 waits for rank 0's requeue to end it before it exits


def raise_interrupted(signum: int, frame: FrameType | None) -> None:
    """A signal handler: end what runs now with `Interrupted`, as Ctrl-C does with KeyboardInterrupt."""
    raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}")


def exit_interrupted(signum: int, message: str | None = None) -> NoReturn:
    """The one line and the exit status (128 + signal) of a command a signal ended."""
    print(f"mamlrun: stopped: {message or f'interrupted by {signal.Signals(signum).name}'}", file=sys.stderr)
    raise SystemExit(128 + signum)


def submitit_signal() -> tuple[int, Handler] | None:
    """In a submitit job: its preemption/timeout signal and the handler submitit set on it (None
    elsewhere). submitit names the signal as JobEnvironment does: SUBMITIT_PREEMPT_SIGNAL, USR2 by
    default; a process that merely inherited submitit's environment has no handler there."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    signum = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    if not isinstance(signum, signal.Signals):
        return None
    handler = signal.getsignal(signum)
    return (signum, handler) if callable(handler) else None


class GracefulStop:
    """Context manager: `stop.requested` holds the signal number once SIGINT/SIGTERM arrives (in a
    submitit job: SIGINT or submitit's signal; `stop.requeue` tells the latter apart).

    When submitit's signal came, leaving the block without an error (the loop raises `Interrupted`
    after saving last.pt, or it was done) hands the signal to submitit's handler, which requeues
    the job and exits (SystemExit), or raises when the job may not be requeued any more.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, requeues: bool = True) -> None:
        self.requested: int | None = None
        self.requeues = requeues  # False on ranks > 0: rank 0 requeues the job for all of them
        self._previous: dict[int, object] = {}
        self._submitit: tuple[int, Handler] | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def agree(self, signum: int | None) -> None:
        """The signal all ranks agreed to stop on (it may have reached another rank only)."""
        if signum is not None:
            self.requested = signum

    @property
    def requeue(self) -> bool:
        """The stop is submitit's (the last signal was its notice): submitit requeues after the block."""
        return self._submitit is not None and self.requested == self._submitit[0]

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            self._submitit = submitit_signal()
            signals: tuple[int, ...] = self.SIGNALS
            if self._submitit is not None:  # submitit keeps SIGTERM; we take its notice
                signals = (signal.SIGINT, self._submitit[0])
            for sig in signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self.requeue and self._submitit is not None and (kind is None or issubclass(kind, Interrupted)):
            signum, handler = self._submitit
            self._submitit = None
            if not self.requeues:
                log.info("rank 0 requeues the job; waiting for that to end this task")
                time.sleep(REQUEUE_WAIT_S)
                return
            done = str(exc).split("; resume with:")[0] if exc is not None else "training had ended"
            log.warning(
                "%s: %s; submitit requeues the job, which resumes from there",
                signal.Signals(signum).name,
                done,
            )
            handler(signum, None)  # submitit: requeue and exit (SystemExit), or raise why not
