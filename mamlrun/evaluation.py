"""The meta-test protocol's statistics and its one report, shared by every kind.

Results are reported as the papers do: mean over tasks and the half-width of a 95% confidence
interval, 1.96 * std / sqrt(n). `report` writes them everywhere at once: a table in the log,
`eval.json`, the metric-vs-steps figure (plus any figures the kind drew), and W&B. How a metric is
named and printed (unit, decimals, column label) comes from the caller's `MetricSpec`; this module
knows no kind. The adaptation that produces the numbers lives with each trainer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from mamlrun.plots import curve_figure
from mamlrun.runtime.errors import naming
from mamlrun.runtime.tracking import Tracker

log = logging.getLogger(__name__)

EVAL_JSON = "eval.json"
TABLE_TXT = "table.txt"  # the meta-test table as the log shows it
CURVE_PNG = "meta_test.png"


@dataclass(frozen=True)
class MetricSpec:
    """How a kind's meta-test metric is named, compared and printed.

    Args:
        name: the metric's short name in files and W&B keys (mse, acc, return).
        higher_is_better: picks best.pt by validation.
        unit: printed after each table cell and on the figure's axis ("%" for accuracies).
        digits: decimals in the table.
        column: the table header of one curve; may use {metric}, {shots} and {tasks}.
        curve: the figure's legend entry of one curve; may use {shots}.
    """

    name: str
    higher_is_better: bool
    unit: str = ""
    digits: int = 3
    column: str = "{metric} K={shots} (n={tasks})"
    curve: str = "K={shots}"

    @property
    def axis_label(self) -> str:
        return f"{self.name} ({self.unit})" if self.unit else self.name


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
    unit: str = ""  # e.g. "%" (eval.json carries it per curve: a meta-test may report several metrics)

    @property
    def final(self) -> float:
        return self.mean[-1]


@dataclass
class MetaTestOutcome:
    """What a kind's meta-test hands the report: curves, how to print them, and its own figures.

    `headline` is the one number a sweep optimises when validation is off (the kind chooses it).
    """

    results: list[CurveResult]
    spec: MetricSpec
    title: str
    description: str  # what was measured, for the log line above the table
    headline: float
    figures: dict[str, Path] = field(default_factory=dict)  # W&B key -> PNG already written
    more: list[tuple[MetricSpec, list[CurveResult]]] = field(
        default_factory=list
    )  # further metrics (success)

    @property
    def panels(self) -> list[tuple[MetricSpec, list[CurveResult]]]:
        """Every metric with its curves, the main one first."""
        return [(self.spec, self.results), *self.more]

    @property
    def all_results(self) -> list[CurveResult]:
        return [r for _, results in self.panels for r in results]

    def table(self) -> str:
        """The meta-test table of each metric, one below the other."""
        return "\n\n".join(format_table(results, spec) for spec, results in self.panels)


def mean_ci95(values: Tensor) -> tuple[list[float], list[float]]:
    """Column means and 95% CI half-widths of a [tasks, steps] tensor."""
    values = values.double()
    n = values.shape[0]
    mean = values.mean(0)
    std = values.std(0, unbiased=True) if n > 1 else torch.zeros_like(mean)
    ci = 1.96 * std / math.sqrt(n)
    return mean.tolist(), ci.tolist()


def to_result(
    values: Tensor, metric: str, shots: int, paper: Mapping[int, float] | None = None, unit: str = ""
) -> CurveResult:
    """A [tasks, steps + 1] tensor of per-task values -> the curve's mean and CI."""
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
        unit=unit,
    )


def format_table(results: Sequence[CurveResult], spec: MetricSpec) -> str:
    """A plain-text table: one row per test-time step, one column per curve."""
    if not results:
        return "(no meta-test results)"
    head = ["step"] + [spec.column.format(metric=r.metric, shots=r.shots, tasks=r.num_tasks) for r in results]
    rows = []
    for i, step in enumerate(results[0].steps):
        cells = [str(step)]
        for r in results:
            cell = f"{r.mean[i]:.{spec.digits}f} ± {r.ci95[i]:.{spec.digits}f}{spec.unit}"
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
    path = Path(path)
    partial = path.with_name(
        f".{path.name}.partial"
    )  # atomic: a reader sees the old file or the whole new one
    with naming(partial):
        partial.write_text(text + "\n", encoding="utf-8")
    os.replace(partial, path)


def wandb_metrics(results: Sequence[CurveResult], prefix: str = "eval") -> dict[str, float]:
    """Flat metric names, e.g. eval/mse_k5_step10 and eval/mse_k5_step10_ci95."""
    out: dict[str, float] = {}
    for r in results:
        for step, mean, ci in zip(r.steps, r.mean, r.ci95, strict=True):
            out[f"{prefix}/{r.metric}_k{r.shots}_step{step}"] = mean
            out[f"{prefix}/{r.metric}_k{r.shots}_step{step}_ci95"] = ci
    return out


def paper_numbers(cfg: DictConfig, shots: int) -> dict[int, float]:
    """The paper's figure for this K (or episodes per step), by step, when the preset records one."""
    paper = cfg.eval.get("paper") or {}
    table = paper.get(shots) if isinstance(paper, DictConfig) else None
    return {int(k): float(v) for k, v in (OmegaConf.to_container(table) or {}).items()} if table else {}


def report(
    outcome: MetaTestOutcome,
    out_dir: Path,
    tracker: Tracker | None,
    *,
    source: Mapping[str, Any],
    log_step: int,
    log_table: bool = True,
) -> None:
    """Write the meta-test everywhere: log table, eval.json, table.txt, figures, W&B metrics and summary.

    `source` says where the numbers came from (checkpoint, iteration, domain, eval_seed, the
    test-time alpha schedule `test_alpha`) and goes
    into eval.json, with `headline` (what a sweep optimises); `log_step` is the W&B step (W&B drops
    steps lower than its last one); `log_table=False` leaves the table to the caller.
    """
    out_dir = Path(out_dir)
    spec, results = outcome.spec, outcome.all_results
    table = f"\n{outcome.table()}" if log_table else " (table below, after W&B's summary)"
    log.info(
        "meta-test %s, %s, checkpoint %s (iteration %s)%s",
        outcome.description,
        source.get("test_alpha"),
        source.get("checkpoint"),
        source.get("iteration"),
        table,
    )
    with naming(out_dir / TABLE_TXT):
        (out_dir / TABLE_TXT).write_text(outcome.table() + "\n", encoding="utf-8")
    curve = curve_figure(
        [(curves, s.axis_label, s.curve) for s, curves in outcome.panels], out_dir / CURVE_PNG, outcome.title
    )
    figures = {"eval/curve": curve, **outcome.figures}
    if tracker is not None:
        metrics = wandb_metrics(results)
        tracker.log(metrics, step=log_step)
        tracker.summary(metrics)
        for key, path in figures.items():
            tracker.log_figure(key, path, step=log_step)
    # last, and atomically: eval.json marks a finished run, so a run killed before it redoes the report
    write_eval_json(out_dir / EVAL_JSON, results, **source, unit=spec.unit or None, headline=outcome.headline)
    log.info("wrote %s and figures %s", out_dir / EVAL_JSON, ", ".join(p.name for p in figures.values()))
