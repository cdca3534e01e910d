"""Validation and the meta-RL meta-test: returns (and success rates) after 0, 1, ..., K adaptation steps on fixed tasks.

Each step samples eval.episodes fresh episodes per task with the current (adapted) policies,
records their mean return (and, for families that report success, the percentage of episodes that
succeeded), and adapts on them with alpha at step k from the trained schedule (`alpha=halving`:
alpha, then alpha / 2), or from `eval.alpha_values` when it is set. The test tasks and their
episodes come from `eval.seed` (validation: `eval.val_seed`), independent of training; validation
draws the family's train tasks and the meta-test its test tasks (Meta-World's held-out goals or
environments; the paper's families have one distribution).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mamlrun.domains.rl.sampler import Episodes
from mamlrun.evaluation import MetaTestOutcome, MetricSpec, paper_numbers, to_result
from mamlrun.trainers.rl.parts import SUCCESS, RLParts

RETURN = MetricSpec(
    "return",
    higher_is_better=True,
    column="return, {shots} episodes/step (n={tasks} tasks)",
    curve="{shots} episodes/step",
)
SUCCESS_RATE = MetricSpec(
    SUCCESS,
    higher_is_better=True,
    unit="%",
    digits=1,
    column="success, {shots} episodes/step (n={tasks} tasks)",
    curve="{shots} episodes/step",
)


def per_task(episodes: Episodes, metric: str) -> Tensor:
    """Each task's mean over its episodes: of the return, or of success (in %)."""
    if metric == SUCCESS:
        return 100.0 * episodes.ever(SUCCESS).mean(dim=1).cpu()
    return episodes.returns().mean(dim=1).cpu()


def after_adaptation(
    parts: RLParts, tasks: list[Any], steps: int, seed: int
) -> tuple[dict[str, Tensor], list[Episodes]]:
    """Per-task metrics after 0..steps adaptation steps (name -> [tasks, steps + 1]: the return,
    and success where the family reports it) and the episodes of each step."""
    episodes_per_step = int(parts.cfg.eval.episodes)
    env_rng = np.random.default_rng(seed + 7)
    noise = torch.Generator(device=parts.device).manual_seed(seed + 7)
    theta = {k: v.detach() for k, v in parts.params().items()}
    params = {k: v.expand(len(tasks), *v.shape) for k, v in theta.items()}
    alpha = parts.alpha_at_test()
    metrics = (RETURN.name, SUCCESS) if parts.reports_success else (RETURN.name,)
    columns: dict[str, list[Tensor]] = {name: [] for name in metrics}
    kept = []
    for k in range(steps + 1):
        episodes = parts.sampler.sample(tasks, params, True, env_rng, noise, episodes_per_step)
        for name in metrics:
            columns[name].append(per_task(episodes, name))
        kept.append(episodes)
        if k < steps:
            params = parts.adapt_tasks(params, parts.task_data(episodes), k, alpha)
    return {name: torch.stack(values, dim=1) for name, values in columns.items()}, kept


def fixed_tasks(parts: RLParts, n: int, seed: int, split: str) -> list[Any]:
    """`n` tasks of `split` from their own seed (the same for every run and re-evaluation)."""
    return parts.tasks.sample_tasks(n, np.random.default_rng(seed), split=split)


def validate(parts: RLParts) -> float:
    """The metric `eval.select_by` (mean return, or success in %) after one adaptation step on the
    fixed validation tasks (the family's train tasks)."""
    cfg = parts.cfg
    tasks = fixed_tasks(parts, int(cfg.eval.val_tasks), int(cfg.eval.val_seed), "train")
    curves, _ = after_adaptation(parts, tasks, 1, int(cfg.eval.val_seed))
    return float(curves[parts.select_by][:, -1].mean())


def meta_test(parts: RLParts, out_dir: Path) -> MetaTestOutcome:
    """Returns (and success rates) after 0..eval.steps steps on eval.tasks fixed test tasks, and
    the family's episode figure."""
    cfg = parts.cfg
    tasks = fixed_tasks(parts, int(cfg.eval.tasks), int(cfg.eval.seed), "test")
    curves, episodes = after_adaptation(parts, tasks, int(cfg.eval.steps), int(cfg.eval.seed))
    per_step = int(cfg.eval.episodes)
    result = to_result(curves[RETURN.name], RETURN.name, per_step, paper_numbers(cfg, per_step))
    more = []
    if SUCCESS in curves:
        more.append((SUCCESS_RATE, [to_result(curves[SUCCESS], SUCCESS, per_step, unit=SUCCESS_RATE.unit)]))
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
    headline = (more[0][1][0] if more and parts.select_by == SUCCESS else result).mean
    held_out = " held-out" if parts.tasks.held_out else ""
    return MetaTestOutcome(
        results=[result],
        spec=RETURN,
        title=f"{parts.tasks.name}: {'return and success' if more else 'return'} after adaptation (95% CI)",
        description=f"on {len(tasks)} fixed{held_out} tasks (eval.seed={cfg.eval.seed}), {per_step} episodes per task and step",
        headline=headline[min(1, len(headline) - 1)],
        figures=figures,
        more=more,
    )
