"""The meta-RL meta-test: returns after 0, 1, ..., K adaptation steps on fixed test tasks.

Each step samples fresh episodes with the current (adapted) policies, records their mean return,
and adapts on them (alpha at step k from the schedule: `alpha=halving` gives 0.1 then 0.05). The
test tasks and their episodes come from `eval.seed`, independent of training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from mamlrun import checkpoint as ckpt
from mamlrun.evaluation import (
    CurveResult,
    format_table,
    paper_numbers,
    to_result,
    wandb_metrics,
    write_eval_json,
)
from mamlrun.plots import curve_figure, trajectories_figure
from mamlrun.tracking import Tracker

if TYPE_CHECKING:
    from mamlrun.trainers.rl import RLParts

log = logging.getLogger(__name__)


def fixed_tasks(family: Any, n: int, seed: int) -> list[Any]:
    """`n` tasks from their own seed (the same for every run and re-evaluation)."""
    return family.sample_tasks(n, np.random.default_rng(seed))


def returns_after_adaptation(
    parts: RLParts, tasks: list[Any], steps: int, cfg: DictConfig, seed: int, keep_episodes: bool = False
):
    """Per-task mean return after 0..steps adaptation steps: a [tasks, steps + 1] tensor.

    With keep_episodes, also the episodes of every step (for figures).
    """
    env_rng, noise = (
        np.random.default_rng(seed + 7),
        torch.Generator(device=parts.device).manual_seed(seed + 7),
    )
    theta = {k: v.detach() for k, v in parts.params().items()}
    params = {k: v.expand(len(tasks), *v.shape) for k, v in theta.items()}
    columns, kept = [], []
    for k in range(steps + 1):
        episodes = parts.sampler.sample(tasks, params, True, env_rng, noise)
        columns.append(episodes.returns().mean(dim=1).cpu())
        if keep_episodes:
            kept.append(episodes)
        if k < steps:
            params = parts.adapt_tasks(params, parts.task_data(episodes), k)
    curve = torch.stack(columns, dim=1)
    return (curve, kept) if keep_episodes else curve


def rl_meta_test(
    cfg: DictConfig,
    parts: RLParts,
    run_dir: Path,
    tracker: Tracker | None,
    checkpoint: Path | None = None,
    log_step: int | None = None,
) -> CurveResult:
    """Load the chosen checkpoint and report returns after 0..eval.steps steps on eval.tasks tasks."""
    path = checkpoint or ckpt.chosen_checkpoint(run_dir, cfg.eval.use)
    state = ckpt.load_checkpoint(path, map_location=parts.device)
    ckpt.load_state_strict(parts.policy, state["model"], "policy", path)
    ckpt.load_state_strict(parts.alpha, state["alpha"], "alpha schedule", path)
    tasks = fixed_tasks(parts.family, int(cfg.eval.tasks), int(cfg.eval.seed))
    curve, episodes = returns_after_adaptation(
        parts, tasks, int(cfg.eval.steps), cfg, int(cfg.eval.seed), keep_episodes=True
    )
    rollouts = parts.sampler.rollouts
    result = to_result(curve, "return", rollouts, paper_numbers(cfg, rollouts))
    log.info(
        "meta-test on %d fixed tasks (eval.seed=%s), %d episodes per task and step, checkpoint %s "
        "(iteration %d)\n%s",
        len(tasks),
        cfg.eval.seed,
        rollouts,
        path,
        state["iteration"],
        format_table([result]),
    )
    run_dir = Path(run_dir)
    write_eval_json(
        run_dir / "eval.json",
        [result],
        checkpoint=str(path),
        iteration=int(state["iteration"]),
        domain=str(cfg.domain.name),
        eval_seed=int(cfg.eval.seed),
    )
    figures = {
        "eval/curve": curve_figure(
            [result],
            run_dir / "meta_test.png",
            f"{parts.family.name}: return after adaptation (95% CI)",
            "return",
        )
    }
    if getattr(parts.family, "plots_trajectories", False):
        last = len(episodes) - 1
        figures["eval/trajectories"] = trajectories_figure(
            {
                "before adaptation": episodes[0],
                f"after {last} step{'s' if last != 1 else ''}": episodes[last],
            },
            tasks,
            run_dir / "trajectories.png",
        )
    if tracker is not None:
        step = int(state["iteration"]) if log_step is None else log_step
        tracker.log(wandb_metrics([result]), step=step)
        tracker.summary(wandb_metrics([result]))
        for key, fig in figures.items():
            tracker.log_figure(key, fig, step=step)
    log.info("wrote %s and figures %s", run_dir / "eval.json", ", ".join(p.name for p in figures.values()))
    return result
