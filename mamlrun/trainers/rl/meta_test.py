"""Validation and the meta-RL meta-test: returns after 0, 1, ..., K adaptation steps on fixed tasks.

Each step samples eval.episodes fresh episodes per task with the current (adapted) policies,
records their mean return, and adapts on them with alpha at step k from the trained schedule
(`alpha=halving`: alpha, then alpha / 2), or from `eval.alpha_values` when it is set. The test
tasks and their episodes come from `eval.seed` (validation: `eval.val_seed`), independent of
training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlrun.domains.rl.sampler import Episodes
from mamlrun.evaluation import MetaTestOutcome, MetricSpec, paper_numbers, to_result
from mamlrun.trainers.rl.parts import RLParts

RETURN = MetricSpec(
    "return",
    higher_is_better=True,
    column="return, {shots} episodes/step (n={tasks} tasks)",
    curve="{shots} episodes/step",
)


def returns_after_adaptation(
    parts: RLParts, tasks: list[Any], steps: int, seed: int
) -> tuple[Tensor, list[Episodes]]:
    """Per-task mean return after 0..steps adaptation steps ([tasks, steps + 1]) and the episodes of each step."""
    episodes_per_step = int(parts.cfg.eval.episodes)
    env_rng = np.random.default_rng(seed + 7)
    noise = torch.Generator(device=parts.device).manual_seed(seed + 7)
    theta = {k: v.detach() for k, v in parts.params().items()}
    params = {k: v.expand(len(tasks), *v.shape) for k, v in theta.items()}
    alpha = parts.alpha_at_test()
    columns, kept = [], []
    for k in range(steps + 1):
        episodes = parts.sampler.sample(tasks, params, True, env_rng, noise, episodes_per_step)
        columns.append(episodes.returns().mean(dim=1).cpu())
        kept.append(episodes)
        if k < steps:
            params = parts.adapt_tasks(params, parts.task_data(episodes), k, alpha)
    return torch.stack(columns, dim=1), kept


def fixed_tasks(parts: RLParts, n: int, seed: int) -> list[Any]:
    """`n` tasks from their own seed (the same for every run and re-evaluation)."""
    return parts.tasks.sample_tasks(n, np.random.default_rng(seed))


def validate(parts: RLParts) -> float:
    """The mean return after one adaptation step on the fixed validation tasks."""
    cfg = parts.cfg
    tasks = fixed_tasks(parts, int(cfg.eval.val_tasks), int(cfg.eval.val_seed))
    curve, _ = returns_after_adaptation(parts, tasks, 1, int(cfg.eval.val_seed))
    return float(curve[:, -1].mean())


def meta_test(parts: RLParts, out_dir: Path) -> MetaTestOutcome:
    """Returns after 0..eval.steps steps on eval.tasks fixed tasks, and the family's episode figure."""
    cfg = parts.cfg
    tasks = fixed_tasks(parts, int(cfg.eval.tasks), int(cfg.eval.seed))
    curve, episodes = returns_after_adaptation(parts, tasks, int(cfg.eval.steps), int(cfg.eval.seed))
    per_step = int(cfg.eval.episodes)
    result = to_result(curve, RETURN.name, per_step, paper_numbers(cfg, per_step))
    figures = {}
    if parts.tasks.episode_figure is not None:
        last = len(episodes) - 1
        figures["eval/trajectories"] = parts.tasks.episode_figure(
            {
                "before adaptation": episodes[0],
                f"after {last} step{'s' if last != 1 else ''}": episodes[last],
            },
            tasks,
            Path(out_dir) / "trajectories.png",
        )
    return MetaTestOutcome(
        results=[result],
        spec=RETURN,
        title=f"{parts.tasks.name}: return after adaptation (95% CI)",
        description=f"on {len(tasks)} fixed tasks (eval.seed={cfg.eval.seed}), {per_step} episodes per task and step",
        headline=result.mean[min(1, len(result.mean) - 1)],
        figures=figures,
    )
