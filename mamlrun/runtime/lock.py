"""One process per run directory: an exclusive `flock` on `RUN/.mamlrun.lock`.

Two processes in one run directory would interleave `metrics.jsonl` and overwrite each other's
checkpoints. The kernel releases a `flock` when its process dies, SIGKILL included, so a stale lock
can never block a resume; the file keeps the holder's PID for the error message. A command that is
rejected after taking the lock puts the file back as it was (or removes it), so it changes nothing.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from mamlrun.runtime.errors import UserError

LOCK_FILE = ".mamlrun.lock"


class RunInUse(UserError):
    """Another live process holds the run directory."""


class RunLock:
    """Context manager: holds the run directory's lock, or raises `RunInUse` naming the holder."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._before: bytes | None = None  # the file's content before we wrote our PID (None: no file)
        self._kept = False

    def keep(self) -> None:
        """The run is accepted: leave our PID in the lock file when we release it."""
        self._kept = True

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUse(
                f"run directory {self.run_dir} is in use by another mamlrun process (PID {holder}); "
                "wait for it to end, or choose another directory with hydra.run.dir=..."
            ) from None
        self._before = os.pread(fd, 4096, 0) if existed else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            if not self._kept:  # a rejected command leaves the directory as it found it
                if self._before is None:
                    self.path.unlink(missing_ok=True)
                else:
                    os.ftruncate(self._fd, 0)
                    os.pwrite(self._fd, self._before, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class NoLock:
    """What ranks other than 0 of a torchrun run hold: rank 0 holds the run directory's lock."""

    def keep(self) -> None:
        pass

    def __enter__(self) -> NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
