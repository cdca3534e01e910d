"""One meta-iteration of supervised MAML, top to bottom (the paper's Algorithm 2).

sample a meta-batch of tasks on the device (support and query sets)
meta-gradient: adapt on each support set (vmapped over tasks, in chunks of chunk_size),
               the query loss of each adapted model, its gradient w.r.t. theta and the alphas
one meta-optimizer step
(model.norm_stats=running: fold each inner step's BatchNorm statistics into its running row)
"""

from __future__ import annotations

from mamlrun.runtime.distributed import world
from mamlrun.trainers.recipe import Metrics
from mamlrun.trainers.supervised.parts import SupervisedParts
from mamlrun.trainers.supervised.statistics import collect_statistics


def step(parts: SupervisedParts, iteration: int) -> Metrics:
    """Update theta (and learned alphas) once, at meta-iteration `iteration` (0-based: what anneals
    follows it); returns the meta-loss and the support loss before adaptation.

    Under torchrun every rank draws the same meta-batch and meta-trains on its slice of the tasks;
    the meta-gradient and the losses are then summed over the ranks' shares of the mean.
    """
    sizes, ranks = parts.sizes, world()
    batch = parts.sample(sizes.meta_batch, sizes.shots, sizes.query, parts.sampler, "train")
    support, query = batch.support, batch.query
    if ranks.distributed:
        mine = ranks.task_slice(sizes.meta_batch)
        support, query = (support[0][mine], support[1][mine]), (query[0][mine], query[1][mine])
    weights = parts.annealing.step_weights(iteration, parts.device) if parts.annealing is not None else None
    result = parts.objective_at(iteration)(parts.meta_params(), support, query, weights)
    if parts.per_step:  # per-step BatchNorm; its running statistics with model.norm_stats=running only
        collect_statistics(parts, batch.support, batch.query)
    grads = {
        p: result.grads[group][name]
        for group, module in parts.groups()
        for name, p in module.named_parameters()
    }
    loss, pre_loss = result.loss, result.pre_loss
    if ranks.distributed:
        loss, pre_loss = ranks.sum_shares(
            list(grads.values()), [loss, pre_loss], len(support[0]) / sizes.meta_batch
        )
    for p, g in grads.items():
        p.grad = g
    parts.optimizer.step()
    if parts.lr_schedule is not None:
        parts.lr_schedule.step()
    return {"train/loss": loss, "train/support_loss_pre": pre_loss}
