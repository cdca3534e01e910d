"""The Hydra task function `mamlrun train` runs, importable without torch.

Hydra needs the task function before it composes the config; importing `mamlrun.run` for it would
load torch first, so a typo in an override would cost seconds before its one-line error. The
real work is imported when a job starts. Module-level, so every launcher can pickle it.
"""

from __future__ import annotations

from omegaconf import DictConfig


def train(cfg: DictConfig) -> float:
    """Run `mamlrun.run.train` on the composed config (what a sweep optimises is its return value)."""
    from mamlrun.run import train as run_train

    return run_train(cfg)
