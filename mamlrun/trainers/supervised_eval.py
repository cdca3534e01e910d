"""The meta-test of a supervised run: fixed test tasks per K, table, eval.json, figures, W&B.

Shared by the end of training and `mamlrun eval`. Test tasks come from `eval.seed` (not the
training seed), so every run and every re-evaluation sees the same tasks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig

from mamlrun import checkpoint as ckpt
from mamlrun.evaluation import (
    CurveResult,
    format_table,
    paper_numbers,
    supervised_curves,
    to_result,
    wandb_metrics,
    write_eval_json,
)
from mamlrun.maml import adapt
from mamlrun.plots import curve_figure, regression_figure
from mamlrun.seeding import generator
from mamlrun.tracking import Tracker

if TYPE_CHECKING:
    from mamlrun.trainers.supervised import Parts

log = logging.getLogger(__name__)


def supervised_meta_test(
    cfg: DictConfig,
    parts: Parts,
    run_dir: Path,
    tracker: Tracker | None,
    checkpoint: Path | None = None,
    log_step: int | None = None,
) -> list[CurveResult]:
    """Load the chosen checkpoint, run the protocol for every K in eval.shots, report everywhere.

    `log_step` is the step the metrics are logged at (W&B drops steps lower than its last one, so
    the trainer passes its final iteration even when best.pt is older); default: the checkpoint's.
    """
    from mamlrun.trainers.supervised import load_weights

    path = checkpoint or ckpt.chosen_checkpoint(run_dir, cfg.eval.use)
    state = ckpt.load_checkpoint(path, map_location=parts.device)
    load_weights(parts, state, path)
    params = dict(parts.model.named_parameters())
    steps, metric = int(cfg.eval.steps), parts.kind.metric_name
    unit = "%" if metric == "acc" else ""  # accuracies are in percent already

    results, test_sets = [], {}
    for shots in cfg.eval.shots:
        tasks = parts.tasks.sample(
            int(cfg.eval.tasks),
            int(shots),
            int(cfg.eval.query),
            generator(cfg.eval.seed, parts.device),
            parts.device,
            split="test",
        )
        curves = supervised_curves(
            params,
            parts.alpha,
            tasks.support,
            tasks.query,
            steps,
            task_loss=parts.task_loss,
            metric=parts.metric,
            chunk_size=int(cfg.eval.chunk_size),
        )
        results.append(to_result(curves, metric, int(shots), paper_numbers(cfg, int(shots))))
        test_sets[int(shots)] = tasks

    source = f"{path} (iteration {state['iteration']})"
    log.info(
        "meta-test on %d fixed tasks per K (eval.seed=%s), checkpoint %s\n%s",
        cfg.eval.tasks,
        cfg.eval.seed,
        source,
        format_table(results),
    )
    run_dir = Path(run_dir)
    write_eval_json(
        run_dir / "eval.json",
        results,
        checkpoint=str(path),
        iteration=int(state["iteration"]),
        domain=str(cfg.domain.name),
        eval_seed=int(cfg.eval.seed),
        unit=unit or None,
    )
    figures = {
        "eval/curve": curve_figure(
            results,
            run_dir / "meta_test.png",
            f"{cfg.domain.name}: meta-test ({metric}, 95% CI)",
            f"{metric}{' (%)' if unit else ''}",
        )
    }
    if hasattr(parts.tasks, "curve"):
        figures["eval/adaptation"] = adaptation_figure(
            cfg, parts, params, test_sets, run_dir / "adaptation.png"
        )
    if tracker is not None:
        step = int(state["iteration"]) if log_step is None else log_step
        tracker.log(wandb_metrics(results), step=step)
        tracker.summary(wandb_metrics(results))
        for key, fig in figures.items():
            tracker.log_figure(key, fig, step=step)
    log.info(
        "wrote %s and figures %s", run_dir / "eval.json", ", ".join(str(p.name) for p in figures.values())
    )
    return results


def adaptation_figure(
    cfg: DictConfig, parts: Parts, params: dict[str, Any], test_sets: dict[int, Any], path: Path
) -> Path:
    """The paper's Figure 2: the first test task of each K, before and after 1 and eval.steps steps."""
    x_range = parts.tasks.x_range
    grid = torch.linspace(x_range[0], x_range[1], 200, device=parts.device)[:, None]
    labels = {0: "pre-update", 1: "1 grad step", int(cfg.eval.steps): f"{cfg.eval.steps} grad steps"}
    alpha_params = {k: v.detach() for k, v in parts.alpha.named_parameters()}
    shots_list = list(test_sets)[:3]
    true_y, support_x, support_y = [], [], []
    preds: dict[str, list[torch.Tensor]] = {label: [] for label in labels.values()}
    for shots in shots_list:
        tasks = test_sets[shots]
        info = {k: v[:1] for k, v in tasks.info.items()}
        support = (tasks.support[0][0], tasks.support[1][0])
        true_y.append(parts.tasks.curve(info, grid[None])[0, :, 0].cpu())
        support_x.append(support[0][:, 0].cpu())
        support_y.append(support[1][:, 0].cpu())
        for steps, label in labels.items():
            adapted, _ = adapt(
                {k: v.detach() for k, v in params.items()},
                alpha_params,
                support,
                steps,
                task_loss=parts.task_loss,
                alpha=parts.alpha,
                first_order=True,
            )
            with torch.no_grad():
                preds[label].append(torch.func.functional_call(parts.model, adapted, (grid,))[:, 0].cpu())
    return regression_figure(
        grid[:, 0].cpu(),
        torch.stack(true_y),
        (support_x, support_y),
        {label: torch.stack(v) for label, v in preds.items()},
        path,
        [f"{cfg.domain.name}, K={k}" for k in shots_list],
    )
