"""The MAML inner loop as pure functions over a params dict.

Everything here is domain-agnostic: a task is whatever the `task_loss(params, data)` callable
understands (regression points, images and labels, RL trajectories). Parameters travel as
`dict[str, Tensor]`; inner gradients come from `torch.func.grad`, so the same code serves the
training step (differentiated again by the outer `torch.func.grad`, i.e. second order, unless
`first_order` detaches them) and the meta-test (no outer gradient at all).

    theta'_k+1 = theta'_k - alpha_k * grad L_support(theta'_k),   k = 0..steps-1

The examples below share this set-up (a linear model, one regression task):

    >>> import torch
    >>> from torch import nn
    >>> from mamlrun.maml import ConstantAlpha, adapt, adaptation_curve, inner_step, task_meta_loss
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Linear(1, 1)
    >>> def task_loss(params, data):
    ...     x, y = data
    ...     return ((torch.func.functional_call(model, params, (x,)) - y) ** 2).mean()
    >>> alpha = ConstantAlpha(0.1, {n: p.shape for n, p in model.named_parameters()}, num_steps=1)
    >>> x = torch.linspace(-1, 1, 10)[:, None]
    >>> support, query = (x, 3 * x), (x + 0.05, 3 * (x + 0.05))
    >>> theta = dict(model.named_parameters())
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

    Example:
        >>> adapted, loss_before = inner_step(theta, {}, 0, support, task_loss=task_loss, alpha=alpha,
        ...                                   first_order=False)
        >>> bool(task_loss(adapted, support) < loss_before)
        True
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
    """`steps` inner steps from `params`; returns the adapted params and the support loss at step 0.

    Example:
        >>> adapted, loss_before = adapt(theta, {}, support, 5, task_loss=task_loss, alpha=alpha,
        ...                              first_order=True)
        >>> sorted(adapted), bool(task_loss(adapted, support) < loss_before)
        (['bias', 'weight'], True)
    """
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
    """The query loss of one task after adaptation, and (as aux) its support loss before it.

    Differentiating the query loss w.r.t. `meta_params` is MAML's meta-gradient for one task:

    Example:
        >>> meta = {"model": theta, "alpha": {}}
        >>> grads = torch.func.grad(lambda m: task_meta_loss(m, support, query, task_loss=task_loss,
        ...     alpha=alpha, steps=1, first_order=False)[0])(meta)
        >>> grads["model"]["weight"].shape
        torch.Size([1, 1])
    """
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

    Example:
        >>> curve = adaptation_curve(theta, {}, support, query, 3, task_loss=task_loss,
        ...                          metric=task_loss, alpha=alpha)
        >>> curve.shape, bool(curve[-1] < curve[0])
        (torch.Size([4]), True)
    """
    values = [metric(params, query)]
    for k in range(steps):
        params, _ = inner_step(
            params, alpha_params, k, support, task_loss=task_loss, alpha=alpha, first_order=True
        )
        values.append(metric(params, query))
    return torch.stack(values)
