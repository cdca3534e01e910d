"""The `mamlrun` console script (and `python -m mamlrun`): a signal is an exit status at every moment.

SIGINT and SIGTERM that arrive while nothing of the command's own handles them (the imports, Hydra's
composition, building the run) unwind the process, so `finally` blocks release the run's lock and
remove a half-made eval folder, and end it with one line and exit status 128 + the signal (130 for
Ctrl-C), never 0 and never a traceback. The training loop installs its own handlers (it saves a
checkpoint) and restores these after; the meta-test and `mamlrun eval` catch what these raise.
This module imports nothing heavy, so it is in place before torch, Hydra and Typer load.
"""

from __future__ import annotations

import signal

from mamlrun.runtime.errors import Interrupted
from mamlrun.runtime.signals import exit_interrupted, raise_interrupted


def main() -> None:
    """Run the `mamlrun` command with SIGTERM raising like SIGINT, and both ending in 128 + signal."""
    signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        from mamlrun.cli import main as run_command

        run_command()
    except KeyboardInterrupt:
        exit_interrupted(signal.SIGINT)
    except Interrupted as exc:
        exit_interrupted(exc.signum, str(exc))
