"""MAML++'s per-step BatchNorm running statistics (BNRS, `model.norm_stats=running`): how they are
collected in meta-training and how validation and the meta-test read them.

Meta-training normalises with each batch's statistics, as ever. Once per meta-iteration, at the
parameters the meta-gradient was taken at, every task of the meta-batch (all ranks draw the same
batch, so every rank's statistics stay equal) is adapted as in the meta-test, and each inner step k
folds two batches into row k of every `StepBatchNorm`'s running statistics: the support set at the
parameters step k starts from, and the query set after step k (the two forwards MAML++ normalises
with step k's statistics). Tasks are folded in in order, with the layers' momentum.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from mamlrun.maml import adaptation
from mamlrun.maml.adapt import at_step
from mamlrun.maml.chunks import task_chunks
from mamlrun.models.norm import norm_mode, per_step_buffers
from mamlrun.trainers.supervised.parts import SupervisedParts


def test_time_params(parts: SupervisedParts) -> tuple[dict[str, Tensor], frozenset[str]]:
    """The parameters validation and the meta-test adapt (detached), and the names read by step row:
    with running statistics these include the statistics, so step k normalises with row k."""
    params = {k: v.detach() for k, v in parts.model.named_parameters()}
    stats = per_step_buffers(parts.model)
    return params | stats, parts.per_step | frozenset(stats)


def test_time_norm(parts: SupervisedParts) -> Any:
    """The normalisation validation and the meta-test run under (a context manager)."""
    return norm_mode(parts.model, "running" if per_step_buffers(parts.model) else "batch")


@torch.no_grad()
def collect_statistics(parts: SupervisedParts, support: Any, query: Any) -> None:
    """Fold this meta-batch's per-step BatchNorm statistics into the running rows (see the module)."""
    full, rows = test_time_params(parts)  # the statistics by row, as the meta-test reads them
    if rows == parts.per_step:  # no running statistics
        return
    theta = {n: p for n, p in full.items() if n not in rows or n in parts.per_step}
    alpha_params = {k: v.detach() for k, v in parts.alpha.named_parameters()}
    steps = int(parts.cfg.inner_steps)

    def trajectory(task_support: Any) -> list[dict[str, Tensor]]:
        return [
            after
            for after, _ in adaptation(
                theta,
                alpha_params,
                task_support,
                steps,
                task_loss=parts.task_loss,
                alpha=parts.alpha,
                first_order=True,
                adapts=parts.adapts,
                per_step=parts.per_step,
            )
        ]

    batched, done = torch.func.vmap(trajectory), 0
    for (chunk,) in task_chunks(parts.cfg.chunk_size, support):
        adapted = batched(chunk)
        for t in range(len(chunk[0])):
            steps_of_task = [{n: p[t] for n, p in after.items()} for after in adapted]
            fold(parts, full, rows, steps_of_task, chunk[0][t], query[0][done + t])
        done += len(chunk[0])


def fold(
    parts: SupervisedParts,
    full: Mapping[str, Tensor],
    rows: frozenset[str],
    adapted: list[dict[str, Tensor]],
    support_x: Tensor,
    query_x: Tensor,
) -> None:
    """One task's forwards in "collect" mode: step k's support images at the parameters before it
    and the query images after it, each with row k of the per-step tensors (the statistics' rows
    are views, so the layers' in-place update reaches the buffers). `adapted`: the parameters after
    each step; `rows`: the names read by step row."""
    before = dict(full)
    with norm_mode(parts.model, "collect"):
        for k, after in enumerate(adapted):
            torch.func.functional_call(parts.model, at_step(before, rows, k), (support_x,))
            before = {n: p if n in rows else after[n] for n, p in before.items()}
            torch.func.functional_call(parts.model, at_step(before, rows, k), (query_x,))
