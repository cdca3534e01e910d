"""The MAML inner loop as pure functions over a params dict.

Everything here is domain-agnostic: a task is whatever the `task_loss(params, data)` callable
understands (regression points, images and labels, RL trajectories). Parameters travel as
`dict[str, Tensor]`; inner gradients come from `torch.func.grad`, so the same code serves the
training step (differentiated again by the outer `torch.func.grad`, i.e. second order, unless
`first_order` detaches them) and the meta-test (no outer gradient at all).

    theta'_k+1 = theta'_k - alpha_k * grad L_support(theta'_k),   k = 0..steps-1

`adaptation` is the one inner loop: it yields the parameters after every inner step (and the
support loss before it), and `adapt`, `adaptation_curve`, `task_meta_loss` (with MAML++'s
multi-step loss) and meta-RL's outer terms are uses of it. `adapts` names the parameters the inner
loop moves (ANIL: the head, BOIL: the body; None: all); the others stay as they are inside it, and
their inner gradient is never computed. The update itself is written once, in `stepped`.

Memory (the `memory` setting): second order, the outer backward pass needs every inner step's
activations (and those of its inner backward pass). `memory="keep"` holds them all, so memory per
task grows with the number of inner steps; `memory="recompute"` keeps only each step's input
parameters and recomputes the step when the outer gradient reaches it (activation checkpointing of
the inner step), so memory per task is about one step's whatever the step count, for about one more
forward and backward pass per step (Omniglot 20-way 1-shot, 20 steps: 1/19 of the memory for 1.1-1.3x the
time, scripts/bench_memory.py). Both give the same meta-gradient.

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

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from mamlrun.maml.alpha import AlphaSchedule
from mamlrun.runtime.errors import ConfigError

Params = dict[str, Tensor]
TaskLoss = Callable[[Params, Any], Tensor]
"""`task_loss(params, data) -> scalar`: the loss of ONE task; pure, so vmap can batch it."""

MEMORY_MODES = ("keep", "recompute")
"""What the inner loop holds for the outer backward pass (the `memory` setting): keep = every inner
step's activations (fastest); recompute = each step's input parameters only, the step being
recomputed in the backward pass (second-order memory no longer grows with the inner steps)."""


def check_memory(memory: object) -> str:
    """`memory` when it names one of `MEMORY_MODES`, else a one-line `ConfigError` naming the choices.

    Example:
        >>> check_memory("recompute")
        'recompute'
        >>> check_memory("low")
        Traceback (most recent call last):
        ...
        mamlrun.runtime.errors.ConfigError: memory='low' is invalid: choose keep (...) or recompute (...)
    """
    if not isinstance(memory, str) or memory not in MEMORY_MODES:
        raise ConfigError(
            "memory",
            memory,
            "choose keep (every inner step's activations stay for the backward pass) or recompute "
            "(each inner step is recomputed in the backward pass: less memory, more time)",
        )
    return memory


Adapts = frozenset[str] | None
"""The names of the parameters the inner loop moves (None: every parameter)."""


PerStep = frozenset[str]
"""The names of per-step parameters (MAML++'s per-step BatchNorm): row k of each is inner step k's."""


def split_params(params: Params, adapts: Adapts, per_step: PerStep = frozenset()) -> tuple[Params, Params]:
    """(the parameters the inner loop moves, the ones it keeps), by name; per-step ones never move."""
    if adapts is None and not per_step:
        return params, {}

    def moves(name: str) -> bool:
        return (adapts is None or name in adapts) and name not in per_step

    return {n: p for n, p in params.items() if moves(n)}, {n: p for n, p in params.items() if not moves(n)}


def at_step(params: Params, per_step: PerStep, step: int) -> Params:
    """`params` as inner step `step` (and the query after it) sees them: row `step` of every per-step
    parameter, the last row for steps past its end (test-time steps beyond training's)."""
    if not per_step:
        return params
    return {n: p[min(step, p.shape[0] - 1)] if n in per_step else p for n, p in params.items()}


def stepped(moving: Params, grads: Params, rates: Mapping[str, Tensor | float]) -> Params:
    """The inner update, theta - alpha * grad, of the parameters that move (written once)."""
    return {name: p - rates[name] * grads[name] for name, p in moving.items()}


def in_order(params: Params, new: Params) -> Params:
    """`params` with the entries of `new` replaced, in `params`'s order."""
    return {name: new.get(name, p) for name, p in params.items()}


def inner_step(
    params: Params,
    alpha_params: Mapping[str, Tensor],
    step: int,
    support: Any,
    *,
    task_loss: TaskLoss,
    alpha: AlphaSchedule,
    first_order: bool,
    adapts: Adapts = None,
    per_step: PerStep = frozenset(),
) -> tuple[Params, Tensor]:
    """One gradient step on the support data; returns the adapted params and the loss before it.

    With `first_order=True` the inner gradient is a constant for any outer differentiation
    (FOMAML); learned alphas still receive gradients through `theta - alpha * g`. Only the
    parameters in `adapts` move (all when None), and only their gradient is computed; the loss
    sees row `step` of the `per_step` parameters.

    Example:
        >>> adapted, loss_before = inner_step(theta, {}, 0, support, task_loss=task_loss, alpha=alpha,
        ...                                   first_order=False)
        >>> bool(task_loss(adapted, support) < loss_before)
        True
        >>> head_only, _ = inner_step(theta, {}, 0, support, task_loss=task_loss, alpha=alpha,
        ...                           first_order=False, adapts=frozenset({"bias"}))
        >>> head_only["weight"] is theta["weight"], bool(head_only["bias"] != theta["bias"])
        (True, True)
    """
    moving, kept = split_params(params, adapts, per_step)
    kept = at_step(kept, per_step, step)
    grads, loss = torch.func.grad_and_value(lambda m: task_loss(kept | m, support))(moving)
    if first_order:
        grads = {name: g.detach() for name, g in grads.items()}
    return in_order(params, stepped(moving, grads, alpha.rates(alpha_params, step))), loss


@dataclass(frozen=True, eq=False)
class _Recompute:
    """What `_Recomputed` runs: `fn` maps one task's flat tensor inputs to its outputs, the last of
    which gets no gradient; the first `differentiable` inputs get gradients, the rest (the task's
    data) none. `levels` holds, per vmap level it runs under (innermost first), each input's task
    dimension there: 0, or None where that input is shared by the tasks."""

    fn: Callable[[list[Tensor]], tuple[Tensor, ...]]
    differentiable: int
    levels: tuple[tuple[int | None, ...], ...] = ()

    def batched(self) -> Callable[[list[Tensor]], tuple[Tensor, ...]]:
        """`fn` over the task dimensions of every level (randomness is an error: a recomputation
        must draw what the first computation drew)."""
        fn = self.fn
        for dims in self.levels:
            fn = torch.func.vmap(fn, in_dims=(list(dims),))
        return fn


class _Recomputed(torch.autograd.Function):
    """`plan.fn` whose backward pass recomputes it instead of keeping its activations: only its
    inputs are saved, and the backward pass differentiates a fresh run of it (activation
    checkpointing that composes with torch.func, where `torch.utils.checkpoint` cannot run: its
    saved-tensor hooks are disabled inside `torch.func.grad`).

    Under vmap the task dimension is passed down explicitly (`vmap` below), so the backward pass is
    `vjp(vmap(fn))`, the order in which `memory="keep"` differentiates the same operations
    (`vmap(vjp(...))` of a second-order step fails for BatchNorm under vmap). The backward pass is
    itself differentiable: Hessian-vector products of outer terms (meta-RL's TRPO) go through it.
    """

    @staticmethod
    def forward(plan: _Recompute, *tensors: Tensor) -> tuple[Tensor, ...]:
        return plan.batched()(list(tensors))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        ctx.plan = inputs[0]
        ctx.save_for_backward(*inputs[1:])
        ctx.mark_non_differentiable(output[-1])

    @staticmethod
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        plan: _Recompute = ctx.plan
        saved = list(ctx.saved_tensors)
        k, fn = plan.differentiable, plan.batched()
        _, vjp = torch.func.vjp(lambda *x: fn([*x, *saved[k:]])[:-1], *saved[:k])
        return (None, *vjp(tuple(grad_outputs[:-1])), *([None] * (len(saved) - k)))

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], plan: _Recompute, *tensors: Tensor) -> tuple[Any, Any]:
        moved = [t if d is None else t.movedim(d, 0) for t, d in zip(tensors, in_dims[1:], strict=True)]
        dims = tuple(None if d is None else 0 for d in in_dims[1:])
        out = _Recomputed.apply(replace(plan, levels=(*plan.levels, dims)), *moved)
        return out, (0,) * len(out)


def recomputed_step(
    params: Params,
    alpha_params: Mapping[str, Tensor],
    step: int,
    support: Any,
    *,
    task_loss: TaskLoss,
    alpha: AlphaSchedule,
    first_order: bool,
    adapts: Adapts = None,
    per_step: PerStep = frozenset(),
) -> tuple[Params, Tensor]:
    """`inner_step` with the same values and gradients, keeping none of its activations for an outer
    backward pass: only its input params are kept, and the step is recomputed when the outer gradient
    reaches it (activation checkpointing of one inner step; `memory="recompute"`).

    First order is `inner_step` itself: its inner gradients are constants, so the outer graph holds
    no inner activations to begin with. The task loss must be deterministic (no dropout): it is
    evaluated again in the backward pass. The saving needs an outer `torch.autograd.grad` (as
    `MetaObjective` uses in this mode): `torch.func.grad` differentiates with `create_graph=True`,
    which keeps every recomputation alive until its backward pass ends (the same values, no saving).

    Example:
        >>> def query_loss(step):
        ...     adapted, _ = step(theta, {}, 0, support, task_loss=task_loss, alpha=alpha, first_order=False)
        ...     return task_loss(adapted, query)
        >>> kept = torch.autograd.grad(query_loss(inner_step), list(theta.values()))
        >>> recomputed = torch.autograd.grad(query_loss(recomputed_step), list(theta.values()))
        >>> all(torch.allclose(a, b) for a, b in zip(kept, recomputed))
        True
    """
    if first_order:
        return inner_step(
            params,
            alpha_params,
            step,
            support,
            task_loss=task_loss,
            alpha=alpha,
            first_order=True,
            adapts=adapts,
            per_step=per_step,
        )
    names, rates = list(params), alpha.rates(alpha_params, step)
    moving = list(split_params(params, adapts, per_step)[0])
    learned = [n for n in moving if isinstance(rates[n], Tensor)]  # learned alphas: meta-parameters
    leaves, data_spec = tree_flatten(support)
    data = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]

    def one_step(tensors: list[Tensor]) -> tuple[Tensor, ...]:
        theta = dict(zip(names, tensors, strict=False))
        rate = rates | dict(zip(learned, tensors[len(names) :], strict=False))
        task_leaves = list(leaves)
        for i, t in zip(data, tensors[len(names) + len(learned) :], strict=True):
            task_leaves[i] = t
        adapted, loss = inner_step(
            theta, {}, step, tree_unflatten(task_leaves, data_spec),
            task_loss=task_loss, alpha=_Fixed(rate), first_order=False, adapts=adapts, per_step=per_step,
        )  # fmt: skip
        return (*(adapted[n] for n in moving), loss)

    plan = _Recompute(one_step, len(names) + len(learned))
    tensors = [params[n] for n in names] + [rates[n] for n in learned] + [leaves[i] for i in data]
    *moved, loss = _Recomputed.apply(plan, *tensors)
    return in_order(params, dict(zip(moving, moved, strict=True))), loss


class _Fixed:
    """The rates of one step, as a schedule `inner_step` can read (the recomputed step's own)."""

    def __init__(self, rates: Mapping[str, Tensor | float]) -> None:
        self._rates = rates

    def rates(self, alpha_params: Mapping[str, Tensor], step: int) -> Mapping[str, Tensor | float]:
        return self._rates


def adaptation(
    params: Params,
    alpha_params: Mapping[str, Tensor],
    support: Any,
    steps: int,
    *,
    task_loss: TaskLoss,
    alpha: AlphaSchedule,
    first_order: bool,
    memory: str = "keep",
    adapts: Adapts = None,
    per_step: PerStep = frozenset(),
) -> Iterator[tuple[Params, Tensor]]:
    """The inner loop: yields (the params after step k + 1, the support loss before it) for k = 0 ..
    steps - 1. Every use of the inner loop goes through here. The yielded params are those the
    query after step k sees (row k of the `per_step` parameters), shaped as the model's own.

    `memory`: keep every step's activations for an outer backward pass, or recompute each step in it
    (`recomputed_step`); the same values and gradients either way.

    Example:
        >>> losses = [float(loss.detach()) for _, loss in adaptation(theta, {}, support, 3, task_loss=task_loss,
        ...                                                  alpha=alpha, first_order=True)]
        >>> len(losses), losses[0] > losses[1] > losses[2]
        (3, True)
    """
    take_step = recomputed_step if check_memory(memory) == "recompute" else inner_step
    for k in range(steps):
        params, loss = take_step(
            params,
            alpha_params,
            k,
            support,
            task_loss=task_loss,
            alpha=alpha,
            first_order=first_order,
            adapts=adapts,
            per_step=per_step,
        )
        yield at_step(params, per_step, k), loss


def adapt(
    params: Params, alpha_params: Mapping[str, Tensor], support: Any, steps: int, **inner: Any
) -> tuple[Params, Tensor | None]:
    """`steps` inner steps from `params` (`inner`: `adaptation`'s keyword arguments); returns the
    adapted params and the support loss at step 0.

    Example:
        >>> adapted, loss_before = adapt(theta, {}, support, 5, task_loss=task_loss, alpha=alpha,
        ...                              first_order=True)
        >>> sorted(adapted), bool(task_loss(adapted, support) < loss_before)
        (['bias', 'weight'], True)
    """
    adapted, first_loss = params, None
    for k, (after, loss) in enumerate(adaptation(params, alpha_params, support, steps, **inner)):
        adapted = after
        if k == 0:
            first_loss = loss
    return adapted, first_loss


def task_meta_loss(
    meta_params: Mapping[str, Mapping[str, Tensor]],
    support: Any,
    query: Any,
    step_weights: Tensor | None = None,
    *,
    steps: int,
    **inner: Any,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """The outer loss of one task, and (as aux) its query loss after the last step and its support
    loss before the first.

    The outer loss is the query loss after adaptation, or with `step_weights` ([steps], MAML++'s
    multi-step loss) the weighted sum of the query losses after every inner step. `inner`:
    `adaptation`'s keyword arguments. Differentiating it
    w.r.t. `meta_params` is MAML's meta-gradient for one task:

    Example:
        >>> meta = {"model": theta, "alpha": {}}
        >>> grads = torch.func.grad(lambda m: task_meta_loss(m, support, query, task_loss=task_loss,
        ...     alpha=alpha, steps=1, first_order=False)[0])(meta)
        >>> grads["model"]["weight"].shape
        torch.Size([1, 1])
    """
    theta = dict(meta_params["model"])
    adapted, pre, weighted, task_loss = theta, None, [], inner["task_loss"]
    for k, (adapted, loss) in enumerate(adaptation(theta, meta_params["alpha"], support, steps, **inner)):
        if k == 0:
            pre = loss
        if step_weights is not None and k < steps - 1:
            weighted.append(step_weights[k] * task_loss(adapted, query))
    post = task_loss(adapted, query)  # no steps: per-step layers read their row 0 themselves
    outer = post if step_weights is None or steps == 0 else sum(weighted, step_weights[steps - 1] * post)
    if pre is None:  # no inner loop (the pretrain baseline): before == after
        pre = post
    return outer, (post.detach(), pre.detach())


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
    adapts: Adapts = None,
    per_step: PerStep = frozenset(),
) -> Tensor:
    """`metric` on the query after 0, 1, ..., `steps` inner steps: a tensor of shape [steps + 1].

    Used by the meta-test, where no outer gradient is needed (inner steps are first order).

    Example:
        >>> curve = adaptation_curve(theta, {}, support, query, 3, task_loss=task_loss,
        ...                          metric=task_loss, alpha=alpha)
        >>> curve.shape, bool(curve[-1] < curve[0])
        (torch.Size([4]), True)
    """
    values = [metric(params, query)]  # before adaptation: per-step layers read their row 0 themselves
    for adapted, _ in adaptation(
        params,
        alpha_params,
        support,
        steps,
        task_loss=task_loss,
        alpha=alpha,
        first_order=True,
        adapts=adapts,
        per_step=per_step,
    ):
        values.append(metric(adapted, query))
    return torch.stack(values)
