"""The meta-gradient: mean post-adaptation query loss over a meta-batch, differentiated.

The whole computation is one pure function of the meta-parameters, batched over tasks with
`torch.func.vmap` and differentiated with `torch.func.grad_and_value`, which lets
`torch.compile` fuse it into a handful of kernels (it is dispatcher-bound in eager mode for the
paper's small networks). The meta-batch is processed in chunks of `chunk_size` tasks: each chunk's
graph is freed before the next, so memory is bounded by the chunk, and the chunk gradients are
summed, which equals the unchunked meta-gradient.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from mamlrun.maml.adapt import TaskLoss, task_meta_loss
from mamlrun.maml.alpha import AlphaSchedule

log = logging.getLogger(__name__)

MetaParams = dict[str, dict[str, Tensor]]


@dataclass
class MetaGradient:
    """The meta-gradient of one meta-batch and the losses it was computed from."""

    grads: MetaParams
    loss: Tensor  # mean query loss after adaptation (the meta-loss)
    pre_loss: Tensor  # mean support loss before adaptation


def num_tasks(data: Any) -> int:
    """The task dimension (leading size) of a batch pytree."""
    return int(torch.utils._pytree.tree_leaves(data)[0].shape[0])


def task_slice(data: Any, start: int, stop: int) -> Any:
    """Tasks start..stop-1 of a batch pytree."""
    return tree_map(lambda t: t[start:stop], data)


class MetaObjective:
    """Computes `MetaGradient`s for a fixed task loss, alpha schedule, step count and order.

    Args:
        task_loss: the loss of one task, `task_loss(params, data) -> scalar`.
        alpha: the inner step-size schedule.
        steps: inner steps at meta-training time (0 = no inner loop: the pretrain baseline).
        first_order: FOMAML (inner gradients treated as constants).
        chunk_size: tasks per vmapped chunk (None: the whole meta-batch at once).
        compile: fuse the chunk computation with `torch.compile`; falls back to eager mode with a
            warning if compilation fails.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mamlrun.maml import ConstantAlpha, MetaObjective
        >>> model = nn.Linear(1, 1)
        >>> def task_loss(params, data):
        ...     x, y = data
        ...     return ((torch.func.functional_call(model, params, (x,)) - y) ** 2).mean()
        >>> alpha = ConstantAlpha(0.01, {n: p.shape for n, p in model.named_parameters()}, num_steps=1)
        >>> objective = MetaObjective(task_loss, alpha, steps=1, first_order=False, chunk_size=2)
        >>> support = (torch.randn(4, 5, 1), torch.randn(4, 5, 1))  # 4 tasks of 5 points
        >>> query = (torch.randn(4, 5, 1), torch.randn(4, 5, 1))
        >>> meta = {"model": dict(model.named_parameters()), "alpha": dict(alpha.named_parameters())}
        >>> result = objective(meta, support, query)  # two chunks of two tasks, summed
        >>> result.grads["model"]["weight"].shape, result.loss.shape
        (torch.Size([1, 1]), torch.Size([]))
    """

    def __init__(
        self,
        task_loss: TaskLoss,
        alpha: AlphaSchedule,
        steps: int,
        first_order: bool,
        chunk_size: int | None = None,
        compile: bool = False,
    ) -> None:
        self.chunk_size = chunk_size
        one_task = functools.partial(
            task_meta_loss, task_loss=task_loss, alpha=alpha, steps=steps, first_order=first_order
        )
        batched = torch.func.vmap(one_task, in_dims=(None, 0, 0), randomness="different")

        def chunk_loss(meta_params: MetaParams, support: Any, query: Any, total: int):
            post, pre = batched(meta_params, support, query)
            return post.sum() / total, (post.detach().sum(), pre.sum())

        self._eager = torch.func.grad_and_value(chunk_loss, has_aux=True)
        self._fn = torch.compile(self._eager, dynamic=False) if compile else self._eager
        self.compiled = compile

    def _run_chunk(self, meta_params: MetaParams, support: Any, query: Any, total: int):
        if self.compiled:
            try:
                return self._fn(meta_params, support, query, total)
            except Exception as exc:  # a missing compiler or an unsupported op: keep training
                log.warning("torch.compile failed (%s); continuing in eager mode", exc)
                self._fn, self.compiled = self._eager, False
        return self._fn(meta_params, support, query, total)

    def __call__(self, meta_params: Mapping[str, Mapping[str, Tensor]], support: Any, query: Any):
        """The meta-gradient w.r.t. `meta_params` = {"model": {...}, "alpha": {...}}."""
        # Detached: the gradient comes from torch.func, and inputs that require grad would make
        # torch.compile build (and run) an autograd graph around the whole function for nothing.
        params: MetaParams = {
            group: {k: v.detach() for k, v in p.items()} for group, p in meta_params.items()
        }
        total = num_tasks(support)
        chunk = self.chunk_size or total
        grads, loss_sum, pre_sum = None, 0.0, 0.0
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            if chunk < total:
                support_chunk, query_chunk = task_slice(support, start, stop), task_slice(query, start, stop)
            else:
                support_chunk, query_chunk = support, query
            g, (_, (post, pre)) = self._run_chunk(params, support_chunk, query_chunk, total)
            grads = g if grads is None else tree_map(torch.add, grads, g)
            loss_sum, pre_sum = loss_sum + post, pre_sum + pre
        return MetaGradient(grads=grads, loss=loss_sum / total, pre_loss=pre_sum / total)
