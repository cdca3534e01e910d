"""Exceptions that end a run with a one-line message instead of a traceback.

`UserError` covers everything the user can fix (a bad setting, a missing file, a corrupt
checkpoint, a diverged run); the CLI prints its message and exits with `exit_code`.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path


class UserError(Exception):
    """A problem the user can fix; its message is the whole report."""

    exit_code = 2


class ConfigError(UserError):
    """A setting has a value outside its valid range."""

    def __init__(self, key: str, value: object, valid: str) -> None:
        super().__init__(f"{key}={value!r} is invalid: {valid}")
        self.key, self.value, self.valid = key, value, valid

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, object, str]]:
        """Pickled as its three arguments (a worker's error reaches the sweep's process whole)."""
        return (type(self), (self.key, self.value, self.valid))


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the configured run."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class StepFailed(UserError):
    """A meta-iteration failed before it changed any parameter (e.g. an environment raised); the
    loop saves the state from the start of that iteration, so a resumed run repeats it exactly."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived: the training loop saved a checkpoint, or the work a signal cut short
    had nothing to save. A BaseException, as KeyboardInterrupt is: no `except Exception` swallows it."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum

    def __reduce__(self) -> tuple[type[Interrupted], tuple[int, str]]:
        """Pickled as its two arguments: a joblib worker's Interrupted reaches the sweep's process
        (the default pickles only the message, and unpickling then fails: 'a result has failed to
        un-serialize')."""
        return (type(self), (self.signum, str(self)))


def require_int(key: str, value: object, low: int, meaning: str, *, optional: bool = False) -> int | None:
    """`value` as an int >= `low` (None passes when `optional`), else a ConfigError naming `key`.

    The one integer check of the code base: booleans are refused although Python counts them as ints.
    """
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        suffix = " (or null)" if optional else ""
        raise ConfigError(key, value, f"{meaning} must be an integer >= {low}{suffix}")
    return value


RUN_PLACES = "choose a place you can write (hydra.run.dir; hydra.sweep.dir for -m)"


def describe_os_error(exc: OSError, otherwise: str = RUN_PLACES) -> str:
    """One line for a file-system error (a full disk, a size limit, a permission, a file where a
    folder belongs): the file, the OS's reason and what to do (`otherwise`: when space is not it)."""
    where = f" {exc.filename}" if exc.filename is not None else ""
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        advice = "free space, or raise the quota or file-size limit"
    else:
        advice = otherwise
    return f"cannot write{where} ({exc.strerror or exc}): {advice}"


@contextlib.contextmanager
def naming(path: Path | str) -> Iterator[None]:
    """Name `path` in an OSError raised without a file name: a write that fills the disk or passes a
    file-size limit fails with only the OS's reason, and the report should say which file it was."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
