"""Trust-region policy optimisation of the meta-parameters (the paper's outer loop for RL).

Given a surrogate loss L(theta) and the mean KL(theta) between the adapted policies that sampled the
validation episodes and those re-adapted from theta (`maml.MetaTerms`, which re-runs the inner
update, in chunks of tasks), one
step solves H s = g by conjugate gradient with Hessian-vector products of the KL (plus damping),
scales s to the KL bound, and backtracks until the surrogate improves and the KL is within bound;
if no candidate passes, theta stays. `conjugate_gradient` is also used on its own in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mamlrun.maml.terms import MetaTerms, flatten
from mamlrun.runtime.errors import ConfigError, require_int

CURVATURES = ("fisher", "hessian")
"""How conjugate gradient multiplies by the KL's Hessian at theta (the same matrix, since the KL's
gradient there is zero): fisher = J^T M J v through the adapted policies' outputs, hessian = a double
backward pass of the KL. In float64 the two natural gradients agree to 1e-7; in float32 either is
rounding-dominated (15-45 % from float64's on small batches), and fisher measured 0.96-1.04x
hessian's time on a 2-core CPU (scripts/bench.py --suite rl), so hessian stays the default.
memory="recompute" always uses hessian (its recomputed step has no forward mode)."""


@dataclass
class TRPO:
    """TRPO settings (`optimizer=trpo`): the paper's max KL 0.01, 10 CG steps, damping 1e-5, 15 x 0.8
    backtracking; `curvature` one of `CURVATURES`."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8
    curvature: str = "hessian"

    def __post_init__(self) -> None:
        if self.curvature not in CURVATURES:
            raise ConfigError(
                "optimizer.curvature",
                self.curvature,
                "choose fisher (J^T M J v: one forward-mode and one reverse pass per product) or hessian "
                "(the KL differentiated twice)",
            )
        if not self.max_kl > 0:
            raise ConfigError("optimizer.max_kl", self.max_kl, "the KL bound must be > 0")
        if not self.cg_damping >= 0:
            raise ConfigError("optimizer.cg_damping", self.cg_damping, "must be >= 0")
        for key in ("cg_iters", "ls_max_steps"):
            value = getattr(self, key)
            require_int(f"optimizer.{key}", value, 1, key)
        if not 0 < self.ls_backtrack_ratio < 1:
            raise ConfigError("optimizer.ls_backtrack_ratio", self.ls_backtrack_ratio, "must be in (0, 1)")


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10
) -> Tensor:
    """Approximately solve A x = b for symmetric positive-definite A given only x -> A x."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if rr < tol:
            break
        ap = matvec(p)
        step = rr / p.dot(ap)
        x = x + step * p
        r = r - step * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class StepInfo:
    """What one TRPO step did (logged as train/*)."""

    loss_before: float
    loss_after: float
    kl_after: float
    backtracks: int  # line-search steps taken; -1 when no candidate was accepted
    accepted: bool


def natural_gradient(params: list[Tensor], terms: MetaTerms, settings: TRPO) -> tuple[float, Tensor, Tensor]:
    """The surrogate before the step, s = (H + damping I)^-1 g by conjugate gradient (H the Hessian
    of the KL, as `settings.curvature` forms its products) and s^T (H + damping I) s / 2. The graph
    is freed when this returns."""
    if settings.curvature == "fisher" and terms.has_gauss_newton:
        values, grads = terms.gradient(params, term=0)
        g, kl_hvp = flatten(grads), terms.gauss_newton_product(params)
    else:
        values, g, kl_hvp = terms.grad_and_hvp(params, grad_term=0, hvp_term=1)

    def fisher_vector(v: Tensor) -> Tensor:
        return kl_hvp(v) + settings.cg_damping * v

    direction = conjugate_gradient(fisher_vector, g, settings.cg_iters)
    return float(values[0]), direction, 0.5 * direction.dot(fisher_vector(direction))


def trpo_step(params: list[Tensor], terms: MetaTerms, settings: TRPO) -> StepInfo:
    """One TRPO update of `params` (in place); `terms` gives [surrogate loss, mean KL] of `params`.

    `params` must be leaf tensors that require grad; the terms re-run the inner adaptation from
    them, with a graph, so they can be differentiated twice.
    """
    loss_before, direction, shs = natural_gradient(params, terms, settings)
    if not (shs > 0 and torch.isfinite(shs)):
        return StepInfo(loss_before, loss_before, 0.0, -1, False)
    full_step = direction * math.sqrt(settings.max_kl / float(shs))
    old = [p.detach().clone() for p in params]

    def set_params(scale: float) -> None:
        offset = 0
        with torch.no_grad():
            for p, p0 in zip(params, old, strict=True):
                n = p.numel()
                p.copy_(p0 - scale * full_step[offset : offset + n].view_as(p))
                offset += n

    scale = 1.0
    for backtrack in range(settings.ls_max_steps):
        set_params(scale)
        new_loss, new_kl = (float(v) for v in terms.values(params))
        if new_loss < loss_before and new_kl < settings.max_kl:
            return StepInfo(loss_before, new_loss, new_kl, backtrack, True)
        scale *= settings.ls_backtrack_ratio
    set_params(0.0)
    return StepInfo(loss_before, loss_before, 0.0, -1, False)
