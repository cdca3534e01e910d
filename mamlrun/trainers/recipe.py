"""What a kind (supervised, RL) supplies to the one training loop: its parts and its recipe.

A recipe is a table of plain functions: `check_config`, `build(cfg) -> parts`, `step(parts,
iteration) -> metrics` (one meta-iteration, 0-based, which annealed settings follow: the algorithm
and nothing else), `validate(parts) -> metric` and
`meta_test(parts, out_dir) -> outcome`. The loop (`trainers/loop.py`) owns everything around them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mamlrun.evaluation import MetaTestOutcome
from mamlrun.maml import AlphaSchedule

Metrics = Mapping[str, Tensor | float]
"""A step's metrics: Python floats are checked for NaN every iteration, tensors at log steps only
(reading a tensor's value waits for the device)."""


class Parts(Protocol):
    """Everything a run is made of, as the loop sees it.

    Attributes:
        device: where the meta-parameters live.
        validation_key: the metric validation logs (e.g. `val/acc_step3`), None when there is none.
        higher_is_better: the direction of the validation metric (picks best.pt).
        save_on_step_failure: keep a copy of the state at the start of every iteration, so a step
            that raises `StepFailed` (an environment failure) leaves a checkpoint that repeats it.
        curve_keys: the training metrics the run's learning-curve figure shows (training_curve.png).
    """

    device: torch.device
    validation_key: str | None
    higher_is_better: bool
    save_on_step_failure: bool
    curve_keys: tuple[str, ...]

    def state_dict(self) -> dict[str, Any]:
        """Meta-parameters, alphas, optimizer and every RNG: what exact resume needs (weights_only-safe)."""
        ...

    def load_state_dict(self, state: Mapping[str, Any], path: Path) -> None:
        """Restore `state_dict()`'s output, read from the checkpoint at `path` (for error messages)."""
        ...

    def load_weights(self, state: Mapping[str, Any], path: Path) -> None:
        """Restore only the meta-parameters and alphas (the meta-test of a checkpoint)."""
        ...

    def all_finite(self) -> bool:
        """Whether every meta-parameter is finite (the loop's divergence check)."""
        ...

    def alpha_at_test(self) -> AlphaSchedule:
        """The alpha schedule validation and the meta-test adapt with (eval.alpha_values or the trained one)."""
        ...

    def describe(self) -> str:
        """One line for the start banner: the model, its size, alpha, order, steps, batch sizes."""
        ...

    def close(self) -> None:
        """Release what the parts hold (environments); called once, also on error."""
        ...


def all_finite(modules: Iterable[nn.Module]) -> bool:
    """Whether every parameter of `modules` is finite: what each kind's `Parts.all_finite` checks."""
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


@dataclass(frozen=True)
class Recipe:
    """One kind's functions; `run.RECIPES` maps `domain.kind` to one of these."""

    check_config: Callable[[DictConfig], None]
    build: Callable[[DictConfig], Any]
    step: Callable[[Any, int], Metrics]
    validate: Callable[[Any], float]
    meta_test: Callable[[Any, Path], MetaTestOutcome]
