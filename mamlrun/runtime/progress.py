"""A tqdm progress bar that suits both terminals and batch logs (Slurm, CI)."""

from __future__ import annotations

import sys

from omegaconf import DictConfig
from tqdm import tqdm

from mamlrun.runtime.distributed import world


def progress_bar(cfg: DictConfig, total: int, initial: int = 0, desc: str = "meta-train") -> tqdm:
    """Live in a terminal; in a log file, one line every 30 s instead of a redraw per update."""
    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="it",
        dynamic_ncols=True,
        disable=not cfg.progress or world().rank != 0,  # one bar for a torchrun run: rank 0's
        mininterval=0.2 if interactive else 30.0,
        file=sys.stderr,
    )
