"""Validation and the meta-test of a supervised run: the metric after 0..K test-time steps.

Test tasks come from `eval.seed` and validation tasks from `eval.val_seed` (never the training
seed), so every run and every re-evaluation sees the same tasks. Inner steps at test time are
first order: no outer gradient is needed. They step with the trained alpha schedule, or with
`eval.alpha_values` when it is set (a fixed test-time step size per step).

`eval.support_range` (regression, the paper's extrapolation experiment) redraws each test and
validation task's support points from a sub-range of the inputs; the meta-test then reports the
metric on the whole range (`mse`) and on the inputs outside the sub-range only (`mse_unseen`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamlrun.domains.base import Predict, TaskBatch
from mamlrun.evaluation import MetaTestOutcome, paper_numbers, to_result
from mamlrun.maml import adapt, adaptation_curve
from mamlrun.maml.chunks import task_chunks
from mamlrun.runtime.errors import ConfigError
from mamlrun.runtime.seeding import generator
from mamlrun.trainers.supervised.parts import SupervisedParts
from mamlrun.trainers.supervised.statistics import test_time_norm, test_time_params


@torch.no_grad()
def adaptation_curves(parts: SupervisedParts, tasks: TaskBatch, steps: int) -> Tensor:
    """Per-task metric after 0..steps inner steps: a [tasks, steps + 1] tensor on the CPU.

    Tasks are vmapped in chunks of eval.chunk_size.
    """
    frozen, per_step = test_time_params(parts)
    alpha = parts.alpha_at_test()
    alpha_params = {k: v.detach() for k, v in alpha.named_parameters()}

    def one_task(support: Any, query: Any) -> Tensor:
        return adaptation_curve(
            frozen,
            alpha_params,
            support,
            query,
            steps,
            task_loss=parts.task_loss,
            metric=parts.task_metric,
            alpha=alpha,
            adapts=parts.adapts,
            per_step=per_step,
        )

    batched = torch.func.vmap(one_task, randomness="different")
    chunks = task_chunks(int(parts.cfg.eval.chunk_size), tasks.support, tasks.query)
    with test_time_norm(parts):
        return torch.cat([batched(support, query).cpu() for support, query in chunks])


def eval_tasks(parts: SupervisedParts, num_tasks: int, shots: int, seed: int, split: str) -> list[TaskBatch]:
    """Fixed tasks from `seed`: [the batch], or with eval.support_range [the batch with its support
    points from the range, the same with query points outside it]."""
    cfg, g = parts.cfg, generator(seed, parts.device)
    tasks = parts.sample(num_tasks, shots, int(cfg.eval.query), g, split)
    support_range = cfg.eval.get("support_range")
    if support_range is None:
        return [tasks]
    restriction = parts.tasks.support_restriction
    if restriction is None:  # check_fit refuses eval.support_range for such domains before training
        raise ConfigError(
            "eval.support_range", list(support_range), f"domain {cfg.domain.name} has no input range"
        )
    return list(restriction.restrict_support(tasks, support_range, g))


def validate(parts: SupervisedParts) -> float:
    """The metric after eval.steps test-time steps on the fixed validation tasks (the whole range)."""
    cfg = parts.cfg
    val_set = eval_tasks(
        parts, int(cfg.eval.val_tasks), int(cfg.domain.shots), int(cfg.eval.val_seed), "val"
    )[0]
    return float(adaptation_curves(parts, val_set, int(cfg.eval.steps))[:, -1].mean())


def meta_test(parts: SupervisedParts, out_dir: Path) -> MetaTestOutcome:
    """The protocol for every K in eval.shots on eval.tasks fixed test tasks, and the domain's figure."""
    cfg, spec = parts.cfg, parts.kind.spec
    steps = int(cfg.eval.steps)
    results, test_sets = [], {}
    for shots in (int(k) for k in cfg.eval.shots):
        batches = eval_tasks(parts, int(cfg.eval.tasks), shots, int(cfg.eval.seed), "test")
        for batch, name in zip(batches, [spec.name, f"{spec.name}_unseen"], strict=False):
            paper = paper_numbers(cfg, shots) if len(batches) == 1 else {}
            results.append(to_result(adaptation_curves(parts, batch, steps), name, shots, paper))
        test_sets[shots] = batches[0]
    figures = {}
    if parts.tasks.adaptation_figure is not None:
        figures["eval/adaptation"] = parts.tasks.adaptation_figure(
            test_sets, predictor(parts), steps, Path(out_dir) / "adaptation.png"
        )
    return MetaTestOutcome(
        results=results,
        spec=spec,
        title=f"{cfg.domain.name}: meta-test ({spec.name}, 95% CI)",
        description=f"on {cfg.eval.tasks} fixed tasks per K (eval.seed={cfg.eval.seed})"
        + (
            f", support points from {list(cfg.eval.support_range)} only ({spec.name}_unseen: query points outside it)"
            if cfg.eval.get("support_range") is not None
            else ""
        ),
        headline=results[0].final,
        figures=figures,
    )


def predictor(parts: SupervisedParts) -> Predict:
    """`predict(support, steps, x)`: the model adapted `steps` steps on one task's support, at x."""
    params, per_step = test_time_params(parts)
    alpha = parts.alpha_at_test()
    alpha_params = {k: v.detach() for k, v in alpha.named_parameters()}

    def predict(support: tuple[Tensor, Tensor], steps: int, x: Tensor) -> Tensor:
        with test_time_norm(parts):
            return adapted_at(support, steps, x)

    def adapted_at(support: tuple[Tensor, Tensor], steps: int, x: Tensor) -> Tensor:
        adapted, _ = adapt(
            params,
            alpha_params,
            support,
            steps,
            task_loss=parts.task_loss,
            alpha=alpha,
            first_order=True,
            adapts=parts.adapts,
            per_step=per_step,
        )
        with torch.no_grad():
            return torch.func.functional_call(parts.model, adapted, (x,))

    return predict
