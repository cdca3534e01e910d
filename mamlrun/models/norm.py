"""BatchNorm with a weight and bias per inner step (MAML++'s BNWB), and optionally running statistics
per inner step (MAML++'s BNRS).

The module's `weight` and `bias` have shape [steps, channels]. The adaptation core
(`maml.adapt.at_step`) hands each inner step k, and the query after it, row k of them (the last row
for test-time steps past training's), so the module then sees [channels] tensors; called with its own
[steps, channels] parameters (a forward outside the inner loop) it uses row 0, the rates before any
adaptation. The rows are meta-trained by the outer step and never adapted inside the loop.

With `running_stats` the module also keeps `running_mean` and `running_var` buffers of shape
[steps, channels], handed out by row the same way (`per_step_buffers` names them). What it normalises
with depends on its mode (`norm_mode`): "batch" (the default, meta-training) the batch's own
statistics, never touching the buffers; "collect" the batch's statistics, folding them into the row it
is given (`collect_statistics`, once per meta-iteration, outside any torch.func transform: an
in-place update cannot happen under vmap or grad); "running" the row's running statistics (validation
and the meta-test), so a query image's prediction no longer depends on the other images of its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("batch", "collect", "running")
NORM_STATS = ("batch", "running")  # model.norm_stats: what validation and the meta-test normalise with


class StepBatchNorm(nn.Module):
    """BatchNorm over `channels` with `steps` rows of affine parameters (one per inner step) and, with
    `running_stats`, `steps` rows of running statistics updated with `momentum` in "collect" mode."""

    def __init__(
        self, channels: int, steps: int, eps: float = 1e-5, running_stats: bool = False, momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.eps, self.momentum, self.mode = eps, momentum, "batch"
        rows = max(steps, 1)
        self.weight = nn.Parameter(torch.ones(rows, channels))
        self.bias = nn.Parameter(torch.zeros(rows, channels))
        self.running_stats = running_stats
        if running_stats:
            self.register_buffer("running_mean", torch.zeros(rows, channels))
            self.register_buffer("running_var", torch.ones(rows, channels))

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = first_row(self.weight), first_row(self.bias)
        if self.mode == "batch" or not self.running_stats:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        mean, var = first_row(self.running_mean), first_row(self.running_var)
        return F.batch_norm(
            x, mean, var, weight, bias, training=self.mode == "collect", momentum=self.momentum, eps=self.eps
        )


def first_row(t: Tensor) -> Tensor:
    """A per-step tensor as a forward outside the inner loop reads it: row 0 ([channels] passes)."""
    return t if t.dim() == 1 else t[0]


def per_step_names(model: nn.Module) -> frozenset[str]:
    """The names of the model's per-step parameters (those of its `StepBatchNorm` layers)."""
    return frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, StepBatchNorm)
        for name, _ in module.named_parameters(recurse=False)
    )


def per_step_buffers(model: nn.Module) -> dict[str, Tensor]:
    """The model's per-step running statistics by name (empty without `running_stats`)."""
    return {
        f"{prefix}.{name}" if prefix else name: buffer
        for prefix, module in model.named_modules()
        if isinstance(module, StepBatchNorm) and module.running_stats
        for name, buffer in module.named_buffers(recurse=False)
    }


@contextmanager
def norm_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """Every `StepBatchNorm` of `model` in `mode` (one of MODES) inside the block, "batch" after it."""
    if mode not in MODES:
        raise ValueError(f"norm mode {mode!r}: choose one of {', '.join(MODES)}")
    layers = [m for m in model.modules() if isinstance(m, StepBatchNorm)]
    for layer in layers:
        layer.mode = mode
    try:
        yield
    finally:
        for layer in layers:
            layer.mode = "batch"
