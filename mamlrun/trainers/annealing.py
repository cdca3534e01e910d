"""What changes with the iteration (MAML++'s annealing): the derivative order and the weights of the
multi-step loss, each a pure function of the iteration, so a resumed run follows the same course
bit for bit without storing anything.

- `order.first_order_iterations=N` (with order=second): first order for iterations 0..N-1, then
  second order (MAML++'s derivative-order annealing: cheap, stable early training).
- `multi_step_loss.enabled=true`: the outer loss is the weighted sum of the query losses after every
  inner step. The weights start uniform (1/S for S steps); over `multi_step_loss.anneal_iterations`
  every step but the last falls linearly to a floor of 0.03/S and the last takes what they give up,
  so the weights always sum to 1 and the loss ends up on the final step, as MAML++ describes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor

from mamlrun.runtime.errors import ConfigError, require_int

FLOOR = 0.03  # a step's weight never falls below FLOOR / steps (MAML++'s setting)


def multi_step_weights(steps: int, iteration: int, anneal_iterations: int) -> list[float]:
    """The weight of the query loss after each of `steps` inner steps at `iteration` (sums to 1).

    Example:
        >>> multi_step_weights(4, 0, 100)
        [0.25, 0.25, 0.25, 0.25]
        >>> [round(w, 4) for w in multi_step_weights(4, 100, 100)]
        [0.0075, 0.0075, 0.0075, 0.9775]
    """
    progress = min(iteration / anneal_iterations, 1.0) if anneal_iterations > 0 else 1.0
    early = (1.0 - (1.0 - FLOOR) * progress) / steps
    return [early] * (steps - 1) + [1.0 - early * (steps - 1)]


@dataclass(frozen=True)
class Annealing:
    """A run's annealing settings, read and checked once."""

    first_order: bool  # order.first_order: FOMAML throughout
    first_order_iterations: int  # second order only from this iteration on (0: from the start)
    multi_step: bool
    anneal_iterations: int
    steps: int  # inner steps at meta-training

    def first_order_at(self, iteration: int) -> bool:
        """Whether iteration `iteration` (0-based) differentiates first order."""
        return self.first_order or iteration < self.first_order_iterations

    def step_weights(self, iteration: int, device: torch.device) -> Tensor | None:
        """The multi-step loss's weights at `iteration` ([steps]), or None without it."""
        if not self.multi_step or self.steps < 1:
            return None
        weights = multi_step_weights(self.steps, iteration, self.anneal_iterations)
        return torch.tensor(weights, dtype=torch.float32, device=device)

    def describe(self) -> str:
        """For the start banner: what anneals (empty when nothing does)."""
        parts = []
        if self.first_order_iterations and not self.first_order:
            parts.append(f"first order until iteration {self.first_order_iterations}")
        if self.multi_step:
            parts.append(f"multi-step loss annealed over {self.anneal_iterations} iterations")
        return "".join(f" | {p}" for p in parts)


def read_annealing(cfg: DictConfig) -> Annealing:
    """The annealing settings of `cfg`, or a one-line `ConfigError` naming the bad one. Configs
    written before these settings existed read as no annealing."""
    first_order_iterations = require_int(
        "order.first_order_iterations",
        cfg.order.get("first_order_iterations", 0),
        0,
        "the iterations trained first order before second order starts",
    )
    msl = cfg.get("multi_step_loss") or {}
    enabled = msl.get("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(
            "multi_step_loss.enabled", enabled, "the multi-step loss is on (true) or off (false)"
        )
    anneal = require_int(
        "multi_step_loss.anneal_iterations",
        msl.get("anneal_iterations", 0),
        0,
        "the iterations over which the step weights move to the last step",
    )
    return Annealing(
        first_order=bool(cfg.order.first_order),
        first_order_iterations=first_order_iterations,
        multi_step=enabled,
        anneal_iterations=anneal,
        steps=int(cfg.inner_steps),
    )
