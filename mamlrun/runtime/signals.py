"""SIGINT/SIGTERM as a flag the training loop checks between iterations.

The loop saves a checkpoint and ends cleanly when the flag is set (this is how a Slurm job that is
preempted or requeued keeps its progress). A second Ctrl-C while stopping aborts at once.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class GracefulStop:
    """Context manager: `stop.requested` holds the signal number once SIGINT/SIGTERM arrives."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
