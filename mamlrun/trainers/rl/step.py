"""One meta-iteration of MAML-TRPO (the paper's section 5.3, Algorithm 3), top to bottom.

sample meta_batch tasks; rollouts episodes of each with theta; advantages (baseline + GAE)
adapt: inner_steps REINFORCE steps per task (vmapped)
fresh validation episodes with each adapted policy; their advantages
outer step on the surrogate through the inner update: TRPO (or a plain torch optimizer)
"""

from __future__ import annotations

import time

from mamlrun.trainers.recipe import Metrics
from mamlrun.trainers.rl.objective import outer_terms, validation_data
from mamlrun.trainers.rl.parts import RLParts
from mamlrun.trainers.rl.trpo import TRPO, trpo_step


def step(parts: RLParts) -> Metrics:
    """Update theta (and learned alphas) once; returns returns before/after adaptation and the update's figures."""
    cfg, rngs = parts.cfg, parts.rngs
    meta_batch, steps = int(cfg.meta_batch), int(cfg.inner_steps)
    t0 = time.perf_counter()
    tasks = parts.tasks.sample_tasks(meta_batch, rngs.tasks)
    theta = {k: v.detach() for k, v in parts.params().items()}
    train_eps = parts.sampler.sample(tasks, theta, False, rngs.envs, rngs.noise)
    train_data = parts.task_data(train_eps)
    adapted = {k: v.expand(meta_batch, *v.shape) for k, v in theta.items()}
    for k in range(steps):
        adapted = parts.adapt_tasks(adapted, train_data, k)
    valid_eps = parts.sampler.sample(tasks, adapted, True, rngs.envs, rngs.noise)
    valid_data = validation_data(parts, adapted, valid_eps)
    t1 = time.perf_counter()

    terms = outer_terms(parts, steps, bool(cfg.order.first_order), train_data, valid_data)
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

    env_steps = train_eps.env_steps + valid_eps.env_steps
    return {
        "train/return_pre": float(train_eps.returns().mean()),
        "train/return_post": float(valid_eps.returns().mean()),
        **update,
        "perf/sample_s": t1 - t0,
        "perf/update_s": t2 - t1,
        "perf/env_steps_per_s": env_steps / max(t1 - t0, 1e-9),
    }
