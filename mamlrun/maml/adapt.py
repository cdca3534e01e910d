"""The MAML inner loop as pure functions over a params dict.

Everything here is domain-agnostic: a task is whatever the `task_loss(params, data)` callable
understands (regression points, images and labels, RL trajectories). Parameters travel as
`dict[str, Tensor]`; inner gradients come from `torch.func.grad`, so the same code serves the
training step (differentiated again by the outer `torch.func.grad`, i.e. second order, unless
`first_order` detaches them) and the meta-test (no outer gradient at all).

    theta'_k+1 = theta'_k - alpha_k * grad L_support(theta'_k),   k = 0..steps-1
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from mamlrun.maml.alpha import AlphaSchedule

Params = dict[str, Tensor]
TaskLoss = Callable[[Params, Any], Tensor]
"""`task_loss(params, data) -> scalar`: the loss of ONE task; pure, so vmap can batch it."""


def inner_step(
    params: Params,
    alpha_params: Mapping[str, Tensor],
    step: int,
    support: Any,
    *,
    task_loss: TaskLoss,
    alpha: AlphaSchedule,
    first_order: bool,
) -> tuple[Params, Tensor]:
    """One gradient step on the support data; returns the adapted params and the loss before it.

    With `first_order=True` the inner gradient is a constant for any outer differentiation
    (FOMAML); learned alphas still receive gradients through `theta - alpha * g`.
    """
    grads, loss = torch.func.grad_and_value(task_loss)(params, support)
    if first_order:
        grads = {name: g.detach() for name, g in grads.items()}
    rates = alpha.rates(alpha_params, step)
    return {name: p - rates[name] * grads[name] for name, p in params.items()}, loss


def adapt(
    params: Params,
    alpha_params: Mapping[str, Tensor],
    support: Any,
    steps: int,
    *,
    task_loss: TaskLoss,
    alpha: AlphaSchedule,
    first_order: bool,
) -> tuple[Params, Tensor | None]:
    """`steps` inner steps from `params`; returns the adapted params and the support loss at step 0."""
    first_loss = None
    for k in range(steps):
        params, loss = inner_step(
            params, alpha_params, k, support, task_loss=task_loss, alpha=alpha, first_order=first_order
        )
        if k == 0:
            first_loss = loss
    return params, first_loss


def task_meta_loss(
    meta_params: Mapping[str, Mapping[str, Tensor]],
    support: Any,
    query: Any,
    *,
    task_loss: TaskLoss,
    alpha: AlphaSchedule,
    steps: int,
    first_order: bool,
) -> tuple[Tensor, Tensor]:
    """The query loss of one task after adaptation, and (as aux) its support loss before it."""
    adapted, pre_loss = adapt(
        dict(meta_params["model"]),
        meta_params["alpha"],
        support,
        steps,
        task_loss=task_loss,
        alpha=alpha,
        first_order=first_order,
    )
    post_loss = task_loss(adapted, query)
    if pre_loss is None:  # no inner loop (the pretrain baseline): before == after
        pre_loss = post_loss
    return post_loss, pre_loss.detach()


def adaptation_curve(
    params: Params,
    alpha_params: Mapping[str, Tensor],
    support: Any,
    query: Any,
    steps: int,
    *,
    task_loss: TaskLoss,
    metric: Callable[[Params, Any], Tensor],
    alpha: AlphaSchedule,
) -> Tensor:
    """`metric` on the query after 0, 1, ..., `steps` inner steps: a tensor of shape [steps + 1].

    Used by the meta-test, where no outer gradient is needed (inner steps are first order).
    """
    values = [metric(params, query)]
    for k in range(steps):
        params, _ = inner_step(
            params, alpha_params, k, support, task_loss=task_loss, alpha=alpha, first_order=True
        )
        values.append(metric(params, query))
    return torch.stack(values)
