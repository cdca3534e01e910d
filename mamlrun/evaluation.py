"""The meta-test protocol: fixed seeded test tasks, metric after 0..K test-time steps, mean +- 95% CI.

Results are reported as the papers do: mean over tasks and the half-width of a 95% confidence
interval, 1.96 * std / sqrt(n). They go to the log (a table), W&B and `eval.json`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mamlrun.maml import AlphaSchedule, TaskLoss, adaptation_curve
from mamlrun.maml.objective import task_slice


@dataclass
class CurveResult:
    """A metric after 0..steps adaptation steps, averaged over `num_tasks` tasks."""

    metric: str
    shots: int
    steps: list[int]
    mean: list[float]
    ci95: list[float]
    num_tasks: int
    paper: dict[str, float] = field(default_factory=dict)  # step -> the paper's figure, when known
    diverged_tasks: int = 0  # tasks whose metric became NaN/inf during adaptation (mean is then inf/nan)

    @property
    def final(self) -> float:
        return self.mean[-1]


def mean_ci95(values: Tensor) -> tuple[list[float], list[float]]:
    """Column means and 95% CI half-widths of a [tasks, steps] tensor."""
    values = values.double()
    n = values.shape[0]
    mean = values.mean(0)
    std = values.std(0, unbiased=True) if n > 1 else torch.zeros_like(mean)
    ci = 1.96 * std / math.sqrt(n)
    return mean.tolist(), ci.tolist()


@torch.no_grad()
def supervised_curves(
    params: Mapping[str, Tensor],
    alpha: AlphaSchedule,
    support: Any,
    query: Any,
    steps: int,
    *,
    task_loss: TaskLoss,
    metric: Callable[[dict[str, Tensor], Any], Tensor],
    chunk_size: int,
) -> Tensor:
    """Per-task metric after 0..steps inner steps: a [tasks, steps + 1] tensor on the CPU.

    Tasks are vmapped in chunks of `chunk_size`; inner steps are first order (no outer gradient).
    """
    frozen = {k: v.detach() for k, v in params.items()}
    alpha_params = {k: v.detach() for k, v in alpha.named_parameters()}

    def one_task(s: Any, q: Any) -> Tensor:
        return adaptation_curve(
            frozen, alpha_params, s, q, steps, task_loss=task_loss, metric=metric, alpha=alpha
        )

    batched = torch.func.vmap(one_task, randomness="different")
    total = int(torch.utils._pytree.tree_leaves(support)[0].shape[0])
    rows = []
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        rows.append(batched(task_slice(support, start, stop), task_slice(query, start, stop)).cpu())
    return torch.cat(rows)


def to_result(
    values: Tensor, metric: str, shots: int, paper: Mapping[int, float] | None = None
) -> CurveResult:
    mean, ci = mean_ci95(values)
    return CurveResult(
        metric=metric,
        shots=shots,
        steps=list(range(values.shape[1])),
        mean=mean,
        ci95=ci,
        num_tasks=int(values.shape[0]),
        paper={str(k): float(v) for k, v in (paper or {}).items()},
        diverged_tasks=int((~torch.isfinite(values)).any(dim=1).sum()),
    )


def format_table(results: Sequence[CurveResult]) -> str:
    """A plain-text table: one row per test-time step, one column per shot count.

    Accuracies are in percent with two decimals, losses with three.
    """
    if not results:
        return "(no meta-test results)"
    metric = results[0].metric
    unit, digits = ("%", 2) if metric == "acc" else ("", 3)
    if metric == "return":  # meta-RL: K is the number of episodes per adaptation step
        head = ["step"] + [f"return, {r.shots} episodes/step (n={r.num_tasks} tasks)" for r in results]
    else:
        head = ["step"] + [f"{metric} K={r.shots} (n={r.num_tasks})" for r in results]
    rows = []
    for i, step in enumerate(results[0].steps):
        cells = [str(step)]
        for r in results:
            cell = f"{r.mean[i]:.{digits}f} ± {r.ci95[i]:.{digits}f}{unit}"
            if str(step) in r.paper:
                cell += f"  (paper {r.paper[str(step)]:g})"
            cells.append(cell)
        rows.append(cells)
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    for r in results:
        if r.diverged_tasks:
            lines.append(
                f"K={r.shots}: adaptation diverged (NaN/inf) on {r.diverged_tasks} of {r.num_tasks} tasks"
            )
    return "\n".join(lines)


def _finite_or_none(value: Any) -> Any:
    """Strict JSON has no NaN/Infinity: non-finite numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    return value


def write_eval_json(path: Path, results: Sequence[CurveResult], **extra: Any) -> None:
    """`eval.json`: every curve with its mean and CI, plus where it came from (strict JSON)."""
    payload = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **extra,
        "results": [asdict(r) for r in results],
    }
    text = json.dumps(_finite_or_none(payload), indent=2, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def wandb_metrics(results: Sequence[CurveResult], prefix: str = "eval") -> dict[str, float]:
    """Flat metric names, e.g. eval/mse_k5_step10 and eval/mse_k5_step10_ci95."""
    out: dict[str, float] = {}
    for r in results:
        for step, mean, ci in zip(r.steps, r.mean, r.ci95, strict=True):
            out[f"{prefix}/{r.metric}_k{r.shots}_step{step}"] = mean
            out[f"{prefix}/{r.metric}_k{r.shots}_step{step}_ci95"] = ci
    return out


def paper_numbers(cfg: DictConfig, shots: int) -> dict[int, float]:
    """The paper's figure for this K, by step, when the preset records one (eval.paper)."""
    paper = cfg.eval.get("paper") or {}
    table = paper.get(shots) if isinstance(paper, DictConfig) else None
    return {int(k): float(v) for k, v in (OmegaConf.to_container(table) or {}).items()} if table else {}
