"""The meta learning rate over training (`lr_schedule`): constant, or MAML++'s cosine annealing.

`lr_schedule.name=cosine` anneals a torch optimizer's learning rate from `optimizer.lr` to
`lr_schedule.min_lr` over `meta_iterations` with torch's `CosineAnnealingLR`, stepped once per
meta-iteration. Its state is in every checkpoint, so a resumed run continues the same curve bit for
bit. A resume that changes `optimizer.lr` or `meta_iterations` (both may change) restarts the curve's
remaining part from the new values at the iteration reached (the closed form), and says so.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from omegaconf import DictConfig
from torch.optim.lr_scheduler import CosineAnnealingLR

from mamlrun.runtime.errors import ConfigError

log = logging.getLogger(__name__)

SCHEDULES = ("constant", "cosine")


def read_lr_schedule(cfg: DictConfig, has_lr: bool = True) -> tuple[str, float]:
    """(name, min_lr) of `cfg.lr_schedule`, or a one-line `ConfigError` naming the bad value. `has_lr`:
    the run's outer step anneals a learning rate (meta-RL's does not). Absent from older configs:
    constant."""
    schedule = cfg.get("lr_schedule") or {}
    name, min_lr = schedule.get("name", "constant"), schedule.get("min_lr", 0.0)
    if name not in SCHEDULES:
        raise ConfigError(
            "lr_schedule.name", name, "choose constant or cosine (annealed to lr_schedule.min_lr, MAML++)"
        )
    if name == "constant":
        return name, 0.0
    if not has_lr:
        raise ConfigError(
            "lr_schedule.name",
            name,
            "meta-RL's outer step keeps its step size (TRPO's is its KL bound): use lr_schedule.name=constant",
        )
    lr = cfg.optimizer.get("lr")
    if isinstance(min_lr, bool) or not isinstance(min_lr, int | float) or not 0 <= min_lr < math.inf:
        raise ConfigError("lr_schedule.min_lr", min_lr, "the final learning rate is a finite number >= 0")
    if isinstance(lr, int | float) and min_lr > lr:
        raise ConfigError(
            "lr_schedule.min_lr", min_lr, f"the cosine ends below where it starts (optimizer.lr={lr})"
        )
    return name, float(min_lr)


def describe_lr_schedule(cfg: DictConfig) -> str:
    """For the start banner: empty for a constant rate."""
    name, min_lr = read_lr_schedule(cfg)
    return f" | cosine lr {float(cfg.optimizer.lr):g} -> {min_lr:g}" if name == "cosine" else ""


def build_lr_schedule(cfg: DictConfig, optimizer: torch.optim.Optimizer) -> CosineAnnealingLR | None:
    """The schedule stepped after every meta-update (None: constant)."""
    name, min_lr = read_lr_schedule(cfg)
    if name == "constant":
        return None
    return CosineAnnealingLR(optimizer, T_max=max(int(cfg.meta_iterations), 1), eta_min=min_lr)


def restore_lr_schedule(schedule: CosineAnnealingLR, state: dict[str, Any], cfg: DictConfig) -> None:
    """Load a checkpoint's schedule; a new optimizer.lr or meta_iterations moves the rest of the curve."""
    schedule.load_state_dict(state)
    lr, total = float(cfg.optimizer.lr), max(int(cfg.meta_iterations), 1)
    if schedule.base_lrs == [lr] * len(schedule.base_lrs) and schedule.T_max == total:
        return
    log.info(
        "lr_schedule: cosine from optimizer.lr=%g over %d iterations (the checkpoint's: %s over %d), from iteration %d",
        lr,
        total,
        ", ".join(f"{b:g}" for b in schedule.base_lrs),
        schedule.T_max,
        schedule.last_epoch,
    )
    schedule.base_lrs, schedule.T_max = [lr] * len(schedule.base_lrs), total
    t, low = min(schedule.last_epoch, total), schedule.eta_min
    for group in schedule.optimizer.param_groups:
        group["lr"] = low + (lr - low) * (1 + math.cos(math.pi * t / total)) / 2
    schedule._last_lr = [group["lr"] for group in schedule.optimizer.param_groups]
