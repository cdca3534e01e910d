"""Outer objectives beyond one loss: per-task terms after adaptation, averaged over a meta-batch in
chunks of tasks, with the gradients and Hessian-vector products a trust-region outer step needs.

`MetaObjective` serves the supervised case (one query loss, its gradient, fused by torch.compile).
Meta-RL's MAML-TRPO needs more of the same function: the surrogate loss and the KL of the adapted
policies (two terms of one `query_loss`), the surrogate's gradient, products with the KL's Hessian
for conjugate gradient, and plain values for the line search, each re-running the inner update
from the meta-parameters. `MetaTerms` provides them and, like `MetaObjective`, holds at most
`chunk_size` tasks' graphs at once.

Every result is first computed per task (the meta-parameters enter each task as its own copy, so
their gradients and products come out one per task), then gathered over the tasks and summed in
task order. That makes the numbers bit-for-bit independent of how the tasks were split: into
chunks, or over torchrun's ranks (`gather` collects every rank's tasks). TRPO needs this: its
conjugate gradient on a nearly singular Fisher matrix turns a 1e-7 rounding difference into a
different step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from mamlrun.maml.adapt import Adapts, Params, TaskLoss, adapt, check_memory
from mamlrun.maml.alpha import AlphaSchedule
from mamlrun.maml.chunks import num_tasks, task_chunks

QueryLoss = Callable[[Params, Any], Tensor]
"""`query_loss(adapted_params, query) -> [terms]`: the outer terms of ONE task after adaptation."""

HessianVectorProduct = Callable[[Tensor], Tensor]
QueryOutputs = Callable[[Params, Any], tuple[Tensor, ...]]
"""`outputs(adapted_params, query) -> outputs`: what ONE task's adapted model says of its query data."""
OutputCurvature = Callable[[tuple[Tensor, ...], tuple[Tensor, ...], Any], tuple[Tensor, ...]]
"""`curvature(outputs, tangents, query) -> C tangents`: a curvature matrix of ONE task at its outputs, applied."""
TaskGather = Callable[[Tensor], Tensor]
"""`gather(per_task) -> all_tasks`: this process's per-task rows [t, ...] -> every task's [T, ...], in task order."""


def task_outer_terms(
    meta_params: dict[str, dict[str, Tensor]],
    support: Any,
    query: Any,
    *,
    query_loss: QueryLoss,
    steps: int,
    **inner: Any,
) -> Tensor:
    """Adapt one task on its support data from `meta_params` (`inner`: `adaptation`'s keyword
    arguments), then its outer terms on the query data."""
    adapted, _ = adapt(dict(meta_params["model"]), meta_params["alpha"], support, steps, **inner)
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
        gather: these tasks' per-task rows -> the whole meta-batch's (under torchrun each rank
            holds a share of the tasks); default: these tasks are the meta-batch.
        outputs, curvature: what one task's adapted model outputs on its query, and a curvature
            matrix there (both or neither): `gauss_newton_product` needs them.

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
        gather: TaskGather | None = None,
        adapts: Adapts = None,
        outputs: QueryOutputs | None = None,
        curvature: OutputCurvature | None = None,
    ) -> None:
        one_task = functools.partial(
            task_outer_terms,
            task_loss=task_loss,
            query_loss=query_loss,
            alpha=alpha,
            steps=steps,
            first_order=first_order,
            memory=check_memory(memory),
            adapts=adapts,
        )
        self._outputs = None
        if outputs is not None and curvature is not None:
            batched_outputs = torch.func.vmap(
                functools.partial(one_task, query_loss=outputs), randomness="different"
            )
            self._outputs = (batched_outputs, torch.func.vmap(curvature))
        self.memory = memory
        self._batched = torch.func.vmap(one_task, randomness="different")
        self.names = list(names)
        self.gather = gather or (lambda rows: rows)
        self.chunks = task_chunks(chunk_size, support, query)

    def _grouped(self, tensors: Sequence[Tensor]) -> dict[str, dict[str, Tensor]]:
        """Tensors in the order of `names` -> {"model": {...}, "alpha": {...}}, as the inner loop takes them."""
        meta: dict[str, dict[str, Tensor]] = {"model": {}, "alpha": {}}
        for (group, name), p in zip(self.names, tensors, strict=True):
            meta[group][name] = p
        return meta

    def _chunk_terms(self, params: Sequence[Tensor], chunk: tuple[Any, Any]) -> tuple[Tensor, list[Tensor]]:
        """This chunk's terms, one row per task, and the per-task copies of `params` they came from."""
        tasks = num_tasks(chunk[0])
        copies = [p.expand(tasks, *p.shape) for p in params]
        return self._batched(self._grouped(copies), *chunk), copies

    def _mean(self, rows: list[Tensor]) -> Tensor:
        """Per-task rows of this process's chunks -> the mean over the whole meta-batch (task order)."""
        every_task = self.gather(torch.cat(rows))
        return every_task.sum(0) / every_task.shape[0]

    @torch.no_grad()
    def values(self, params: Sequence[Tensor]) -> Tensor:
        """The task-mean of every term (no graph)."""
        return self._mean([self._chunk_terms(params, chunk)[0] for chunk in self.chunks])

    def _per_task_grads(self, out: Tensor, copies: list[Tensor], **kwargs: Any) -> Tensor:
        """d out.sum() / d copies, one flat row per task: [tasks, n_params]."""
        if "grad_outputs" in kwargs:  # d <out, grad_outputs> / d copies, out a tuple of outputs
            grads = torch.autograd.grad(out, copies, allow_unused=True, **kwargs)
        else:
            grads = torch.autograd.grad(out.sum(), copies, allow_unused=True, **kwargs)
        return torch.cat(
            [
                (torch.zeros_like(c) if g is None else g).reshape(c.shape[0], -1)
                for c, g in zip(copies, grads, strict=True)
            ],
            dim=1,
        )

    def gradient(self, params: Sequence[Tensor], term: int = 0) -> tuple[Tensor, list[Tensor]]:
        """The terms' values and the gradient of term `term` w.r.t. `params`, one chunk's graph at a time."""
        values, grads = [], []
        for chunk in self.chunks:
            out, copies = self._chunk_terms(params, chunk)
            grads.append(self._per_task_grads(out[:, term], copies))
            values.append(out.detach())
        return self._mean(values), unflatten(self._mean(grads), params)

    def grad_and_hvp(
        self, params: Sequence[Tensor], grad_term: int, hvp_term: int
    ) -> tuple[Tensor, Tensor, HessianVectorProduct]:
        """Values, the flat gradient of `grad_term`, and v -> H v with H the Hessian of `hvp_term`.

        One chunk: a single forward pass serves all three and H v reuses the gradient's graph (one
        backward pass per product). Several chunks: each product re-runs every chunk, so memory
        stays bounded by one chunk at the price of recomputation.
        """
        if len(self.chunks) == 1:
            out, copies = self._chunk_terms(params, self.chunks[0])
            grad = self._per_task_grads(out[:, grad_term], copies, retain_graph=True)
            hvp_grad = self._per_task_grads(out[:, hvp_term], copies, create_graph=True)

            def hvp(v: Tensor) -> Tensor:
                rows = self._per_task_grads(hvp_grad @ v, copies, retain_graph=True)
                return self._mean([rows.detach()])

            return self._mean([out.detach()]), self._mean([grad]), hvp

        values, grads = self.gradient(params, grad_term)

        def chunked_hvp(v: Tensor) -> Tensor:
            rows = []
            for chunk in self.chunks:
                out, copies = self._chunk_terms(params, chunk)
                g = self._per_task_grads(out[:, hvp_term], copies, create_graph=True)
                rows.append(self._per_task_grads(g @ v, copies).detach())
            return self._mean(rows)

        return values, flatten(grads), chunked_hvp

    @property
    def has_gauss_newton(self) -> bool:
        """Whether `gauss_newton_product` can run: outputs and curvature given, and forward-mode
        differentiation through the inner loop (memory="recompute"'s recomputed step has none)."""
        return self._outputs is not None and self.memory == "keep"

    def gauss_newton_product(self, params: Sequence[Tensor]) -> HessianVectorProduct:
        """v -> G v, G = the task-mean of J^T C J: J the Jacobian of one task's adapted `outputs` with
        respect to the meta-parameters (through the inner update), C its `curvature` there.

        For a term that is a function of the outputs with zero gradient there (a KL between the
        sampling policy and the one re-adapted from the same parameters), G is its Hessian: TRPO's
        Fisher matrix. Each product is one forward-mode pass (J v) and one reverse pass (J^T C J v)
        per chunk: the term is never differentiated twice, nor the inner update three times. Rows
        are per task, as everywhere here.
        """
        if not self.has_gauss_newton:
            raise ValueError("gauss_newton_product needs outputs, curvature and memory='keep'")
        batched_outputs, batched_curvature = self._outputs
        kept: dict[int, tuple[tuple[Tensor, ...], list[Tensor]]] = {}  # one chunk: its graph, built once

        def outputs_with_graph(index: int, chunk: tuple[Any, Any]) -> tuple[tuple[Tensor, ...], list[Tensor]]:
            if index in kept:
                return kept[index]
            tasks = num_tasks(chunk[0])
            copies = [p.expand(tasks, *p.shape) for p in params]
            out = (batched_outputs(self._grouped(copies), *chunk), copies)
            if len(self.chunks) == 1:
                kept[index] = out
            return out

        def product(v: Tensor) -> Tensor:
            rows, tangent = [], unflatten(v, params)
            for index, chunk in enumerate(self.chunks):
                out, copies = outputs_with_graph(index, chunk)
                tasks = num_tasks(chunk[0])
                with torch.no_grad():  # forward-mode AD writes into its inputs: per-task copies, not views
                    primals = self._grouped([p.detach().expand(tasks, *p.shape).clone() for p in params])
                    tangents = self._grouped([t.expand(tasks, *t.shape).clone() for t in tangent])
                    _, jv = torch.func.jvp(
                        lambda meta, chunk=chunk: batched_outputs(meta, *chunk), (primals,), (tangents,)
                    )
                    cjv = batched_curvature(tuple(o.detach() for o in out), jv, chunk[1])
                retain = len(self.chunks) == 1
                rows.append(self._per_task_grads(out, copies, grad_outputs=cjv, retain_graph=retain).detach())
            return self._mean(rows)

        return product


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """A flat vector cut into tensors shaped like `like`."""
    out, offset = [], 0
    for p in like:
        out.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    return out
