"""Seeds aggregated: runs grouped by their settings, each group's mean and 95 % interval across runs.

A group is the runs whose overrides agree once the keys aggregated over (`over`, the seed by
default) are left out, or, with `by`, whose values of those keys agree. For each group, metric, K
and test-time step the table holds the mean over the group's runs of each run's meta-test mean,
a 95 % interval across runs (Student t with n - 1 degrees of freedom: n is small), n, and the mean
of the runs' own (within-run, across test tasks) intervals. A group of one run shows that run's own
interval and says n=1. Runs of different domains or metrics are never averaged together: each
(domain, metric) pair is a section of its own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from mamlrun.report.runs import FINISHED, Run, split_override
from mamlrun.runtime.errors import UserError

DEFAULT_OVER = ("seed",)
HIGHER_IS_BETTER = {"acc": True, "return": True, "success": True, "mse": False, "loss": False}

# Student t's 97.5 % quantile for 1..30 degrees of freedom (two-sided 95 %)
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t975(df: int) -> float:
    """Student t's 97.5 % quantile for `df` degrees of freedom (a table to 30, then the
    Cornish-Fisher expansion around the normal's 1.96, within 1e-4 there)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class Cell:
    """One (group, K, step) entry."""

    mean: float
    ci95: float  # across runs (Student t); the run's own interval when n == 1
    n: int
    within_ci95: float  # the mean of the runs' own intervals (across test tasks)
    paper: float | None = None


def across_runs(means: Sequence[float], own_cis: Sequence[float]) -> Cell:
    """The mean and 95 % interval of per-run means (n=1: the run's own interval)."""
    n = len(means)
    mean = statistics.fmean(means)
    within = statistics.fmean(own_cis)
    ci = t975(n - 1) * statistics.stdev(means) / math.sqrt(n) if n > 1 else within
    return Cell(mean=mean, ci95=ci, n=n, within_ci95=within)


@dataclass
class Row:
    """A group's curve at one K: a cell per test-time step."""

    group: str  # the group's label: its distinguishing settings
    shots: int
    steps: list[int]
    cells: list[Cell]
    runs: list[Run] = field(default_factory=list)


@dataclass
class Section:
    """The groups of one domain and metric."""

    domain: str
    metric: str
    unit: str
    rows: list[Row]
    paper: dict[int, dict[int, float]] = field(default_factory=dict)  # K -> step -> the paper's figure

    @property
    def higher_is_better(self) -> bool:
        return HIGHER_IS_BETTER.get(self.metric, True)

    def best(self, shots: int, step_index: int) -> str | None:
        """The label of the best group at (K, step), by mean (None with fewer than two groups)."""
        rows = [r for r in self.rows if r.shots == shots and step_index < len(r.cells)]
        finite = [r for r in rows if math.isfinite(r.cells[step_index].mean)]
        if len(rows) < 2 or not finite:
            return None
        pick = max if self.higher_is_better else min
        return pick(finite, key=lambda r: r.cells[step_index].mean).group


def group_key(run: Run, by: Sequence[str] | None, over: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The settings that define a run's group."""
    if by:
        return tuple((key, str(run.setting(key))) for key in by)
    pairs = [split_override(o) for o in run.overrides]
    return tuple(sorted((k, v) for k, v in pairs if k not in over and not k.startswith("hydra.")))


def short(value: str) -> str:
    """A number with many digits (an Optuna trial's) in 4 significant ones; anything else as given."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 and math.isfinite(number) else value


def labels(keys: Sequence[tuple[tuple[str, str], ...]]) -> dict[tuple[tuple[str, str], ...], str]:
    """Each group's label: the settings in which the groups differ (all of them when there is one)."""
    distinct = list(dict.fromkeys(keys))
    varying = {k for key in distinct for k, _ in key if len({dict(g).get(k) for g in distinct}) > 1}
    out = {}
    for key in distinct:
        shown = [f"{k}={short(v)}" for k, v in key if k in varying or len(distinct) == 1]
        out[key] = " ".join(shown) or "(defaults)"
    return out


def check_keys(runs: Sequence[Run], keys: Sequence[str], option: str) -> None:
    """`--by`/`--over` keys must be settings of the runs: a one-line error naming the ones they have."""
    for key in keys:
        if all(run.setting(key) is None for run in runs):
            given = sorted({split_override(o)[0] for run in runs for o in run.overrides})
            raise UserError(
                f"report: {option} {key}: no run has this setting; the runs' overrides: {', '.join(given) or '(none)'}"
            )


def aggregate(
    runs: Sequence[Run], by: Sequence[str] | None = None, over: Sequence[str] = DEFAULT_OVER
) -> list[Section]:
    """The finished runs' sections (domain, metric), each with one row per group and K."""
    finished = [r for r in runs if r.state == FINISHED and r.results]
    if by:
        check_keys(runs, by, "--by")
    keys = {id(r): group_key(r, by, over) for r in finished}
    label = labels(list(keys.values()))
    sections: dict[tuple[str, str], dict[tuple[str, int], list[tuple[Run, dict]]]] = {}
    units: dict[tuple[str, str], str] = {}
    for run in finished:
        domain = str(run.results.get("domain", "?"))
        for curve in run.results["results"]:
            where = (domain, str(curve["metric"]))
            units[where] = curve.get("unit") or run.results.get("unit") or ""
            sections.setdefault(where, {}).setdefault((label[keys[id(run)]], int(curve["shots"])), []).append(
                (run, curve)
            )
    out = []
    for (domain, metric), groups in sections.items():
        rows = [group_row(name, shots, members) for (name, shots), members in groups.items()]
        rows.sort(key=lambda r: (r.shots, list(label.values()).index(r.group)))
        section = Section(domain, metric, units[(domain, metric)], rows)
        section.paper = shared_paper(members for members in groups.values())
        out.append(section)
    return out


def group_row(name: str, shots: int, members: list[tuple[Run, dict]]) -> Row:
    """One group's curve at K: the steps every run has, each aggregated across the runs."""
    steps = min((list(c["steps"]) for _, c in members), key=len)
    cells = []
    for i in range(len(steps)):
        means = [_number(c["mean"][i]) for _, c in members]
        cis = [_number(c["ci95"][i]) for _, c in members]
        cells.append(across_runs(means, cis))
    return Row(name, shots, steps, cells, [run for run, _ in members])


def _number(value: object) -> float:
    """eval.json writes non-finite numbers as null."""
    return float("nan") if value is None else float(value)


def shared_paper(groups) -> dict[int, dict[int, float]]:
    """The paper's figures by K and step, when every run of the section records the same ones."""
    papers: dict[int, dict[int, float]] = {}
    for members in groups:
        for _, curve in members:
            paper = {int(k): float(v) for k, v in (curve.get("paper") or {}).items()}
            shots = int(curve["shots"])
            if shots in papers and papers[shots] != paper:
                papers[shots] = {}
            papers.setdefault(shots, paper)
    return {k: v for k, v in papers.items() if v}
