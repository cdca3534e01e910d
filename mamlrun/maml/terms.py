"""Outer objectives beyond one loss: per-task terms after adaptation, averaged over a meta-batch in
chunks of tasks, with the gradients and Hessian-vector products a trust-region outer step needs.

`MetaObjective` serves the supervised case (one query loss, its gradient, fused by torch.compile).
Meta-RL's MAML-TRPO needs more of the same function: the surrogate loss and the KL of the adapted
policies (two terms of one `query_loss`), the surrogate's gradient, products with the KL's Hessian
for conjugate gradient, and plain values for the line search, each re-running the inner update
from the meta-parameters. `MetaTerms` provides them and, like `MetaObjective`, holds at most
`chunk_size` tasks' graphs at once; chunked results equal unchunked ones (the mean is a sum).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mamlrun.maml.adapt import Params, TaskLoss, adapt, check_memory
from mamlrun.maml.alpha import AlphaSchedule
from mamlrun.maml.objective import num_tasks, task_slice

QueryLoss = Callable[[Params, Any], Tensor]
"""`query_loss(adapted_params, query) -> [terms]`: the outer terms of ONE task after adaptation."""

HessianVectorProduct = Callable[[Tensor], Tensor]


def task_outer_terms(
    meta_params: dict[str, dict[str, Tensor]],
    support: Any,
    query: Any,
    *,
    task_loss: TaskLoss,
    query_loss: QueryLoss,
    alpha: AlphaSchedule,
    steps: int,
    first_order: bool,
    memory: str = "keep",
) -> Tensor:
    """Adapt one task on its support data from `meta_params`, then its outer terms on the query data."""
    adapted, _ = adapt(
        dict(meta_params["model"]),
        meta_params["alpha"],
        support,
        steps,
        task_loss=task_loss,
        alpha=alpha,
        first_order=first_order,
        memory=memory,
    )
    return query_loss(adapted, query)


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class MetaTerms:
    """The task-mean of `query_loss`'s terms after adaptation, as a function of the meta-parameters.

    Args:
        task_loss: the inner loss of one task.
        query_loss: the outer terms of one task after adaptation (a vector).
        alpha: the inner step-size schedule.
        steps: inner steps; first_order: FOMAML.
        names: ("model" | "alpha", name) of each meta-parameter, in the order the methods take them.
        support, query: the meta-batch, task dimension first.
        chunk_size: tasks per vmapped chunk (None: the whole meta-batch at once).
        memory: keep (every inner step's activations stay for the backward pass) or recompute (each
            inner step is recomputed in the backward pass); the same values, gradients and products.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mamlrun.maml import ConstantAlpha, MetaTerms
        >>> model = nn.Linear(1, 1)
        >>> def task_loss(params, data):
        ...     x, y = data
        ...     return ((torch.func.functional_call(model, params, (x,)) - y) ** 2).mean()
        >>> def two_terms(params, data):  # e.g. a surrogate loss and a KL
        ...     loss = task_loss(params, data)
        ...     return torch.stack([loss, loss**2])
        >>> alpha = ConstantAlpha(0.1, {n: p.shape for n, p in model.named_parameters()}, num_steps=1)
        >>> data = (torch.randn(4, 5, 1), torch.randn(4, 5, 1))  # 4 tasks of 5 points
        >>> terms = MetaTerms(task_loss=task_loss, query_loss=two_terms, alpha=alpha, steps=1,
        ...                   first_order=False, names=[("model", "weight"), ("model", "bias")],
        ...                   support=data, query=data, chunk_size=2)
        >>> params = [model.weight, model.bias]
        >>> values, grad, hvp = terms.grad_and_hvp(params, grad_term=0, hvp_term=1)
        >>> values.shape, grad.shape, hvp(torch.ones(2)).shape
        (torch.Size([2]), torch.Size([2]), torch.Size([2]))
    """

    def __init__(
        self,
        *,
        task_loss: TaskLoss,
        query_loss: QueryLoss,
        alpha: AlphaSchedule,
        steps: int,
        first_order: bool,
        names: Sequence[tuple[str, str]],
        support: Any,
        query: Any,
        chunk_size: int | None = None,
        memory: str = "keep",
    ) -> None:
        one_task = functools.partial(
            task_outer_terms,
            task_loss=task_loss,
            query_loss=query_loss,
            alpha=alpha,
            steps=steps,
            first_order=first_order,
            memory=check_memory(memory),
        )
        self._batched = torch.func.vmap(one_task, in_dims=(None, 0, 0), randomness="different")
        self.names = list(names)
        self.total = num_tasks(support)
        chunk = chunk_size or self.total
        self.chunks = [
            (
                task_slice(support, start, min(start + chunk, self.total)),
                task_slice(query, start, min(start + chunk, self.total)),
            )
            for start in range(0, self.total, chunk)
        ]

    def _chunk_mean(self, params: Sequence[Tensor], chunk: tuple[Any, Any]) -> Tensor:
        """This chunk's share of the task-mean of the terms (its sum over tasks / all tasks)."""
        meta: dict[str, dict[str, Tensor]] = {"model": {}, "alpha": {}}
        for (group, name), p in zip(self.names, params, strict=True):
            meta[group][name] = p
        return self._batched(meta, *chunk).sum(0) / self.total

    @torch.no_grad()
    def values(self, params: Sequence[Tensor]) -> Tensor:
        """The task-mean of every term (no graph)."""
        return sum(self._chunk_mean(params, chunk) for chunk in self.chunks)

    def gradient(self, params: Sequence[Tensor], term: int = 0) -> tuple[Tensor, list[Tensor]]:
        """The terms' values and the gradient of term `term` w.r.t. `params`, one chunk's graph at a time."""
        values, grads = None, None
        for chunk in self.chunks:
            out = self._chunk_mean(params, chunk)
            g = torch.autograd.grad(out[term], params, allow_unused=True)
            g = [torch.zeros_like(p) if x is None else x for p, x in zip(params, g, strict=True)]
            grads = g if grads is None else [a + b for a, b in zip(grads, g, strict=True)]
            values = out.detach() if values is None else values + out.detach()
        return values, grads

    def grad_and_hvp(
        self, params: Sequence[Tensor], grad_term: int, hvp_term: int
    ) -> tuple[Tensor, Tensor, HessianVectorProduct]:
        """Values, the flat gradient of `grad_term`, and v -> H v with H the Hessian of `hvp_term`.

        One chunk: a single forward pass serves all three and H v reuses the gradient's graph (one
        backward pass per product). Several chunks: each product re-runs every chunk, so memory
        stays bounded by one chunk at the price of recomputation.
        """
        if len(self.chunks) == 1:
            out = self._chunk_mean(params, self.chunks[0])
            grad = flatten(torch.autograd.grad(out[grad_term], params, retain_graph=True))
            hvp_grad = flatten(torch.autograd.grad(out[hvp_term], params, create_graph=True))

            def hvp(v: Tensor) -> Tensor:
                return flatten(torch.autograd.grad(hvp_grad.dot(v), params, retain_graph=True)).detach()

            return out.detach(), grad.detach(), hvp

        values, grads = self.gradient(params, grad_term)

        def chunked_hvp(v: Tensor) -> Tensor:
            total = torch.zeros_like(v)
            for chunk in self.chunks:
                out = self._chunk_mean(params, chunk)
                g = flatten(torch.autograd.grad(out[hvp_term], params, create_graph=True))
                total += flatten(torch.autograd.grad(g.dot(v), params)).detach()
            return total

        return values, flatten(grads), chunked_hvp
