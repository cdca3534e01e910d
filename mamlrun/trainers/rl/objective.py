"""The MAML-TRPO outer objective: the surrogate loss and KL of the adapted policies, as a function
of the meta-parameters (the inner update is re-run inside it, with a graph, by `maml.MetaTerms`).

Details every port must get right: validation episodes are fresh episodes of the adapted policies;
the surrogate re-adapts from the same inner episodes with a graph, so its probability ratio starts
at 1; the KL is between the adapted policies (the sampling one vs the one re-adapted from a
candidate theta) on the validation observations, re-adapting per candidate.

Under torchrun each rank holds its share of the meta-batch's tasks and the terms gather the
per-task rows of every rank, so the surrogate's gradient, every Hessian-vector product of conjugate
gradient and the line search's loss and KL are the whole meta-batch's on every rank, bit for bit
those of one process, and TRPO moves theta identically everywhere.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mamlrun.domains.rl.sampler import Episodes, policy_distribution
from mamlrun.maml.terms import MetaTerms
from mamlrun.models.policy import gaussian_kl, gaussian_log_prob
from mamlrun.runtime.distributed import World
from mamlrun.trainers.rl.parts import RLParts


def policy_outputs(
    parts: RLParts, adapted: dict[str, Tensor], valid: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """One task's adapted policy on its validation observations: (mean, log_std)."""
    return torch.func.functional_call(parts.policy, adapted, (valid["obs"],))


def mean_kl(outputs: tuple[Tensor, Tensor], valid: dict[str, Tensor]) -> Tensor:
    """One task's masked mean KL(sampling policy || policy with these outputs) over its validation steps."""
    mask = valid["mask"]
    kl = gaussian_kl(valid["old_mean"], valid["old_log_std"], *outputs)
    return (kl * mask).sum() / mask.sum().clamp(min=1.0)


def kl_curvature(
    outputs: tuple[Tensor, Tensor], tangents: tuple[Tensor, Tensor], valid: dict[str, Tensor]
) -> tuple[Tensor, Tensor]:
    """The mean KL's Hessian with respect to one task's outputs, applied to `tangents` (at the sampling
    policy: 1/std^2 for the mean, 2 for log_std, per valid step): TRPO's Fisher through `MetaTerms`."""
    return torch.func.jvp(lambda o: torch.func.grad(mean_kl)(o, valid), (outputs,), (tangents,))[1]


def surrogate_and_kl(parts: RLParts, adapted: dict[str, Tensor], valid: dict[str, Tensor]) -> Tensor:
    """One task's outer terms, [surrogate loss, KL], for its adapted policy on its validation episodes."""
    mean, log_std = policy_outputs(parts, adapted, valid)
    logp = gaussian_log_prob(mean, log_std, valid["actions"])
    mask = valid["mask"]
    n = mask.sum().clamp(min=1.0)
    ratio = torch.exp(logp - valid["old_logp"])
    loss = -(ratio * valid["adv"] * mask).sum() / n
    return torch.stack([loss, mean_kl((mean, log_std), valid)])


def outer_terms(
    parts: RLParts,
    steps: int,
    first_order: bool,
    train: dict[str, Tensor],
    valid: dict[str, Tensor],
    ranks: World | None = None,
) -> MetaTerms:
    """The meta-batch's mean [surrogate, KL] as a function of the meta-parameters (`parts.meta_parameters()`
    order), re-adapting every task from its inner episodes, in chunks of `chunk_size` tasks.
    `train` and `valid` hold this rank's tasks (`ranks`: default one process, all of them)."""
    names = [("model", n) for n, _ in parts.policy.named_parameters()]
    names += [("alpha", n) for n, _ in parts.alpha.named_parameters()]
    return MetaTerms(
        task_loss=parts.inner_loss,
        query_loss=functools.partial(surrogate_and_kl, parts),
        alpha=parts.alpha,
        steps=steps,
        first_order=first_order,
        names=names,
        support=train,
        query=valid,
        chunk_size=parts.cfg.chunk_size,
        memory=parts.cfg.get("memory", "keep"),
        gather=(ranks or World()).gather_tasks,
        adapts=parts.adapts,
        outputs=functools.partial(policy_outputs, parts),
        curvature=kl_curvature,
    )


def validation_data(parts: RLParts, adapted: dict[str, Tensor], episodes: Episodes) -> dict[str, Tensor]:
    """Validation episodes plus what the sampling (adapted) policy said of them, for ratio and KL."""
    data = parts.task_data(episodes)
    with torch.no_grad():
        mean, log_std = policy_distribution(parts.policy, adapted, episodes.obs, batched=True)
    return data | {"old_logp": episodes.log_probs, "old_mean": mean, "old_log_std": log_std}
