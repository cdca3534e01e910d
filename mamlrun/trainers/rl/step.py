"""One meta-iteration of MAML-TRPO (the paper's section 5.3, Algorithm 3), top to bottom.

sample meta_batch tasks; rollouts episodes of each with theta; advantages (baseline + GAE)
adapt: inner_steps REINFORCE steps per task (vmapped)
fresh validation episodes with each adapted policy; their advantages
outer step on the surrogate through the inner update: TRPO (or a plain torch optimizer)

Under torchrun every rank draws the same tasks, samples and adapts its slice of them, and sums its
outer terms' per-task rows with the other ranks' (`objective.outer_terms`), so all ranks take the
same step.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from mamlrun.domains.rl.base import SUCCESS
from mamlrun.runtime.distributed import World, world
from mamlrun.trainers.recipe import Metrics
from mamlrun.trainers.rl.objective import outer_terms, validation_data
from mamlrun.trainers.rl.parts import RLParts
from mamlrun.trainers.rl.trpo import TRPO, trpo_step


def step(parts: RLParts, iteration: int) -> Metrics:
    """Update theta (and learned alphas) once, at meta-iteration `iteration` (0-based: the order
    annealing follows it); returns returns before/after adaptation and the update's figures."""
    cfg, rngs, ranks = parts.cfg, parts.rngs, world()
    meta_batch, steps = int(cfg.meta_batch), int(cfg.inner_steps)
    t0 = time.perf_counter()
    tasks = parts.tasks.sample_tasks(meta_batch, rngs.tasks)
    mine = ranks.task_slice(meta_batch)
    theta = {k: v.detach() for k, v in parts.params().items()}
    train_eps = parts.sampler.sample(tasks, theta, False, rngs.envs, rngs.noise, part=mine)
    train_data = parts.task_data(train_eps)
    adapted = {k: v.expand(mine.stop - mine.start, *v.shape) for k, v in theta.items()}
    for k in range(steps):
        adapted = parts.adapt_tasks(adapted, train_data, k)
    valid_eps = parts.sampler.sample(tasks, adapted, True, rngs.envs, rngs.noise, part=mine)
    valid_data = validation_data(parts, adapted, valid_eps)
    t1 = time.perf_counter()

    first_order = (
        parts.annealing.first_order_at(iteration) if parts.annealing else bool(cfg.order.first_order)
    )
    terms = outer_terms(parts, steps, first_order, train_data, valid_data, ranks)
    params = [p for m in parts.modules() for p in m.parameters()]
    if isinstance(parts.outer, TRPO):
        info = trpo_step(params, terms, parts.outer)
        update = {
            "train/surrogate_before": info.loss_before,
            "train/surrogate_after": info.loss_after,
            "train/kl": info.kl_after,
            "train/backtracks": float(info.backtracks),
            "train/step_accepted": float(info.accepted),
        }
    else:  # a torch optimizer on the surrogate's gradient
        values, grads = terms.gradient(params, term=0)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        parts.outer.step()
        update = {"train/surrogate_before": float(values[0]), "train/kl": float(values[1])}
    t2 = time.perf_counter()

    return_pre, return_post, env_steps = summed(
        ranks,
        parts.device,
        train_eps.returns().sum() / (meta_batch * train_eps.returns().shape[1]),
        valid_eps.returns().sum() / (meta_batch * valid_eps.returns().shape[1]),
        torch.as_tensor(float(train_eps.env_steps + valid_eps.env_steps)),
    )
    success = {}
    if parts.reports_success:  # the percentage of episodes that succeeded, before and after adaptation
        success_pre, success_post = summed(
            ranks,
            parts.device,
            *(
                100.0 * eps.ever(SUCCESS).sum() / (meta_batch * eps.rewards.shape[2])
                for eps in (train_eps, valid_eps)
            ),
        )
        success = {"train/success_pre": success_pre, "train/success_post": success_post}
    return {
        "train/return_pre": return_pre,
        "train/return_post": return_post,
        **success,
        **update,
        "perf/sample_s": t1 - t0,
        "perf/update_s": t2 - t1,
        "perf/env_steps_per_s": env_steps / max(t1 - t0, 1e-9),  # all ranks' steps
    }


def summed(ranks: World, device: torch.device, *values: Tensor) -> list[float]:
    """Scalars summed over the ranks (each rank's share of a mean, or its count)."""
    flat = torch.stack([v.detach().reshape(()).to(device, torch.float64) for v in values])
    ranks.sum([flat])
    return [float(v) for v in flat]
