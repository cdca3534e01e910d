"""One meta-iteration of supervised MAML, top to bottom (the paper's Algorithm 2).

sample a meta-batch of tasks on the device (support and query sets)
meta-gradient: adapt on each support set (vmapped over tasks, in chunks of chunk_size),
               the query loss of each adapted model, its gradient w.r.t. theta and the alphas
one meta-optimizer step
"""

from __future__ import annotations

from mamlrun.trainers.recipe import Metrics
from mamlrun.trainers.supervised.parts import SupervisedParts


def step(parts: SupervisedParts) -> Metrics:
    """Update theta (and learned alphas) once; returns the meta-loss and the support loss before adaptation."""
    sizes = parts.sizes
    batch = parts.sample(sizes.meta_batch, sizes.shots, sizes.query, parts.sampler, "train")
    result = parts.objective(parts.meta_params(), batch.support, batch.query)
    for group, module in (("model", parts.model), ("alpha", parts.alpha)):
        for name, p in module.named_parameters():
            p.grad = result.grads[group][name]
    parts.optimizer.step()
    return {"train/loss": result.loss, "train/support_loss_pre": result.pre_loss}
