"""The meta-gradient: mean post-adaptation query loss over a meta-batch, differentiated.

The whole computation is one pure function of the meta-parameters, batched over tasks with
`torch.func.vmap` and differentiated with `torch.func.grad_and_value`, which lets
`torch.compile` fuse it into a handful of kernels (it is dispatcher-bound in eager mode for the
paper's small networks). The meta-batch is processed in chunks of `chunk_size` tasks: each chunk's
graph is freed before the next, so memory is bounded by the chunk, and the chunk gradients are
summed, which equals the unchunked meta-gradient.

Within a task, `memory="recompute"` bounds memory across inner steps: each inner step is recomputed
in the backward pass instead of keeping its activations (see `mamlrun.maml.adapt`), for the same
meta-gradient. That mode differentiates with `torch.autograd.grad`, in eager mode: `torch.func.grad`
always differentiates with `create_graph=True`, which would keep every step's recomputation alive
(through the cotangents' history) until the end of the backward pass.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from mamlrun.maml.adapt import Adapts, PerStep, TaskLoss, check_memory, task_meta_loss
from mamlrun.maml.alpha import AlphaSchedule
from mamlrun.maml.chunks import num_tasks, task_chunks

log = logging.getLogger(__name__)

MetaParams = dict[str, dict[str, Tensor]]


@dataclass
class MetaGradient:
    """The meta-gradient of one meta-batch and the losses it was computed from."""

    grads: MetaParams
    loss: Tensor  # mean query loss after adaptation (the meta-loss)
    pre_loss: Tensor  # mean support loss before adaptation


def autograd_grad_and_value(fn: Callable[..., tuple[Tensor, Any]], params: Any, *args: Any):
    """`torch.func.grad_and_value(fn, has_aux=True)(params, *args)` by `torch.autograd.grad`, which
    builds no graph of the backward pass (torch.func's does), so a recomputed inner step's
    activations are freed as soon as the backward pass has gone through it."""
    leaves, spec = tree_flatten(params)
    inputs = [t.detach().requires_grad_() for t in leaves]
    with torch.enable_grad():
        value, aux = fn(tree_unflatten(inputs, spec), *args)
        grads = torch.autograd.grad(value, inputs, allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads, strict=True)]
    return tree_unflatten(grads, spec), (value.detach(), aux)


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
        memory: keep (every inner step's activations stay for the backward pass; fastest) or
            recompute (each inner step is recomputed in the backward pass: second-order memory per
            task no longer grows with `steps`; eager mode, `compile` is not used); the same
            meta-gradient either way.
        adapts: the parameters the inner loop moves (ANIL's head, BOIL's body; None: all).
        per_step: per-step parameters (MAML++'s per-step BatchNorm), row k for inner step k.

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
        >>> lean = MetaObjective(task_loss, alpha, steps=1, first_order=False, memory="recompute")
        >>> torch.allclose(lean(meta, support, query).grads["model"]["weight"], result.grads["model"]["weight"])
        True
    """

    def __init__(
        self,
        task_loss: TaskLoss,
        alpha: AlphaSchedule,
        steps: int,
        first_order: bool,
        chunk_size: int | None = None,
        compile: bool = False,
        memory: str = "keep",
        adapts: Adapts = None,
        per_step: PerStep = frozenset(),
    ) -> None:
        self.chunk_size = chunk_size
        self.memory = check_memory(memory)
        one_task = functools.partial(
            task_meta_loss,
            task_loss=task_loss,
            alpha=alpha,
            steps=steps,
            first_order=first_order,
            memory=memory,
            adapts=adapts,
            per_step=per_step,
        )
        batched = torch.func.vmap(one_task, in_dims=(None, 0, 0, None), randomness="different")

        def chunk_loss(meta_params: MetaParams, support: Any, query: Any, weights: Tensor | None, total: int):
            outer, (post, pre) = batched(meta_params, support, query, weights)
            return outer.sum() / total, (post.sum(), pre.sum())

        if self.memory == "recompute":
            if compile:
                log.info("memory=recompute computes the meta-gradient in eager mode, without torch.compile")
            self._eager, compile = functools.partial(autograd_grad_and_value, chunk_loss), False
        else:
            self._eager = torch.func.grad_and_value(chunk_loss, has_aux=True)
        self._fn = torch.compile(self._eager, dynamic=False) if compile else self._eager
        self.compiled = compile

    def _run_chunk(self, *args: Any):
        if self.compiled:
            try:
                return self._fn(*args)
            except Exception as exc:  # a missing compiler or an unsupported op: keep training
                log.warning("torch.compile failed (%s); continuing in eager mode", exc)
                self._fn, self.compiled = self._eager, False
        return self._fn(*args)

    def __call__(
        self,
        meta_params: Mapping[str, Mapping[str, Tensor]],
        support: Any,
        query: Any,
        step_weights: Tensor | None = None,
    ):
        """The meta-gradient w.r.t. `meta_params` = {"model": {...}, "alpha": {...}}; with
        `step_weights` ([steps]) that of MAML++'s multi-step loss (the weighted query losses after
        every inner step). `loss` is the query loss after the last step either way."""
        # Detached: the gradient comes from torch.func, and inputs that require grad would make
        # torch.compile build (and run) an autograd graph around the whole function for nothing.
        params: MetaParams = {
            group: {k: v.detach() for k, v in p.items()} for group, p in meta_params.items()
        }
        total = num_tasks(support)
        grads, loss_sum, pre_sum = None, 0.0, 0.0
        for support_chunk, query_chunk in task_chunks(self.chunk_size, support, query):
            g, (_, (post, pre)) = self._run_chunk(params, support_chunk, query_chunk, step_weights, total)
            grads = g if grads is None else tree_map(torch.add, grads, g)
            loss_sum, pre_sum = loss_sum + post, pre_sum + pre
        return MetaGradient(grads=grads, loss=loss_sum / total, pre_loss=pre_sum / total)
