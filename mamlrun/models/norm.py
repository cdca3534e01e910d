"""BatchNorm with a weight and bias per inner step (MAML++'s BNWB), normalising with the batch's
statistics as every conv net here does.

The module's `weight` and `bias` have shape [steps, channels]. The adaptation core
(`maml.adapt.at_step`) hands each inner step k, and the query after it, row k of them (the last row
for test-time steps past training's), so the module then sees [channels] tensors; called with its own
[steps, channels] parameters (a forward outside the inner loop) it uses row 0, the rates before any
adaptation. The rows are meta-trained by the outer step and never adapted inside the loop.
Running statistics per step (MAML++'s BNRS) are not kept: see README "MAML's variants".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class StepBatchNorm(nn.Module):
    """BatchNorm over `channels` with `steps` rows of affine parameters (one per inner step)."""

    def __init__(self, channels: int, steps: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(max(steps, 1), channels))
        self.bias = nn.Parameter(torch.zeros(max(steps, 1), channels))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight if self.weight.dim() == 1 else self.weight[0]
        bias = self.bias if self.bias.dim() == 1 else self.bias[0]
        return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)


def per_step_names(model: nn.Module) -> frozenset[str]:
    """The names of the model's per-step parameters (those of its `StepBatchNorm` layers)."""
    return frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, StepBatchNorm)
        for name, _ in module.named_parameters(recurse=False)
    )
