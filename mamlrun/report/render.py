"""A report's outputs: the Markdown table (terminal and report.md), report.csv, report.tex
(booktabs) and report.png (the metric against test-time steps, one line and band per group).

Cells read `mean ± 95 % interval across seeds`; the best group per K and step is in bold (the
lowest MSE, the highest accuracy or return); `n` is the number of runs; `within ±` is the mean of
the runs' own intervals over test tasks at the last step. The paper's figures, when every run
records the same ones (a paper preset), make a row of their own.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.ticker import MaxNLocator

from mamlrun.plots import new_figure, save_figure
from mamlrun.report.aggregate import Cell, Section
from mamlrun.report.runs import FINISHED, Run


def number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def digits_for(section: Section) -> int:
    """Two decimals for percentages and returns, three for MSE (as the run's own table)."""
    return 2 if section.unit == "%" or section.metric == "return" else 3


def cell_text(cell: Cell, digits: int) -> str:
    return f"{number(cell.mean, digits)} ± {number(cell.ci95, digits)}"


def section_title(section: Section) -> str:
    unit = f" ({section.unit})" if section.unit else ""
    direction = "higher" if section.higher_is_better else "lower"
    return f"{section.domain}: {section.metric}{unit}, mean ± 95 % CI across seeds ({direction} is better)"


def step_columns(section: Section) -> list[int]:
    return max((row.steps for row in section.rows), key=len) if section.rows else []


def markdown_section(section: Section) -> str:
    """One section's Markdown table: a row per group and K, a column per test-time step."""
    digits, steps = digits_for(section), step_columns(section)
    head = ["group", "K", "n", *(f"step {s}" for s in steps), "within ± (last step)"]
    lines = [f"### {section_title(section)}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shots in sorted({row.shots for row in section.rows}):
        for row in (r for r in section.rows if r.shots == shots):
            cells = []
            for i in range(len(steps)):
                if i >= len(row.cells):
                    cells.append("")
                    continue
                text = cell_text(row.cells[i], digits)
                cells.append(f"**{text}**" if section.best(shots, i) == row.group else text)
            n = row.cells[0].n if row.cells else 0
            last = row.cells[-1].within_ci95 if row.cells else math.nan
            lines.append(
                "| " + " | ".join([row.group, str(shots), str(n), *cells, number(last, digits)]) + " |"
            )
        paper = section.paper.get(shots)
        if paper:
            cells = [f"{paper[s]:g}" if s in paper else "" for s in steps]
            lines.append("| " + " | ".join(["paper", str(shots), "", *cells, ""]) + " |")
    return "\n".join(lines)


def states_section(runs: Sequence[Run]) -> str:
    """The runs not in the tables, each with its state and why: never silently dropped."""
    left = [r for r in runs if r.state != FINISHED]
    if not left:
        return ""
    lines = ["### Runs not in the table", ""]
    for run in left:
        settings = " ".join(run.overrides) or "(no overrides)"
        lines.append(
            f"- `{run.path}` ({settings}): **{run.state}**" + (f": {run.detail}" if run.detail else "")
        )
    return "\n".join(lines)


def trials_section(runs: Sequence[Run], metric_name: str, params: Sequence[str], maximize: bool) -> str:
    """Optuna: each trial's parameters and the value it returned, best first."""
    trials = [r for r in runs if r.job is not None]
    if not trials:
        return ""

    def key(run: Run) -> float:
        value = run.value if run.value is not None and math.isfinite(run.value) else None
        if value is None:
            return math.inf
        return -value if maximize else value

    head = ["trial", *params, metric_name, "state"]
    lines = [
        f"### Optuna trials, best first ({'maximize' if maximize else 'minimize'} {metric_name})",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for run in sorted(trials, key=key):
        value = "" if run.value is None else f"{run.value:.6g}"
        cells = [str(run.job), *(str(run.setting(p)) for p in params), value, run.state]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = (
    "domain",
    "metric",
    "group",
    "shots",
    "step",
    "mean",
    "ci95",
    "n",
    "within_ci95",
    "paper",
    "best",
)


def table_rows(sections: Sequence[Section]) -> list[list[object]]:
    """The report's rows, one per group, K and step (report.csv and the W&B table)."""
    rows: list[list[object]] = []
    for section in sections:
        for row in section.rows:
            for i, (step, cell) in enumerate(zip(row.steps, row.cells, strict=True)):
                paper = section.paper.get(row.shots, {}).get(step)
                best = section.best(row.shots, i) == row.group
                rows.append(
                    [section.domain, section.metric, row.group, row.shots, step, cell.mean, cell.ci95,
                     cell.n, cell.within_ci95, paper, int(best)]
                )  # fmt: skip
    return rows


def csv_text(sections: Sequence[Section]) -> str:
    """report.csv: one row per group, K and step (full precision)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in table_rows(sections):
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
    return out.getvalue()


def latex_escape(text: str) -> str:
    for char, escaped in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("%", r"\%"),
        ("&", r"\&"),
        ("#", r"\#"),
    ):
        text = text.replace(char, escaped)
    return text


def latex_text(sections: Sequence[Section]) -> str:
    """report.tex: a booktabs table per section (the best cell per column in bold)."""
    blocks = []
    for section in sections:
        digits, steps = digits_for(section), step_columns(section)
        lines = [
            f"% {section_title(section)}",
            r"\begin{tabular}{ll" + "c" * (len(steps) + 1) + "}",
            r"\toprule",
            " & ".join(["Group", "K", "n", *(f"step {s}" for s in steps)]) + r" \\",
            r"\midrule",
        ]
        for row in section.rows:
            cells = []
            for i in range(len(steps)):
                if i >= len(row.cells):
                    cells.append("")
                    continue
                c = row.cells[i]
                text = f"{number(c.mean, digits)} $\\pm$ {number(c.ci95, digits)}"
                cells.append(rf"\textbf{{{text}}}" if section.best(row.shots, i) == row.group else text)
            lines.append(
                " & ".join([latex_escape(row.group), str(row.shots), str(row.cells[0].n), *cells]) + r" \\"
            )
        for shots, paper in sorted(section.paper.items()):
            cells = [f"{paper[s]:g}" if s in paper else "" for s in steps]
            lines.append(" & ".join(["paper", str(shots), "", *cells]) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}"]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def figure(sections: Sequence[Section], path: Path) -> Path | None:
    """report.png: a panel per section and K, the metric against test-time steps, a line with its
    95 % band across seeds per group, the paper's figures as stars."""
    panels = [(s, k) for s in sections for k in sorted({r.shots for r in s.rows})]
    if not panels:
        return None
    fig, axes = new_figure(len(panels), 5.5, 4)
    for ax, (section, shots) in zip(axes, panels, strict=True):
        for row in (r for r in section.rows if r.shots == shots):
            mean = [c.mean for c in row.cells]
            low = [c.mean - c.ci95 for c in row.cells]
            high = [c.mean + c.ci95 for c in row.cells]
            (line,) = ax.plot(row.steps, mean, marker="o", ms=3, label=f"{row.group} (n={row.cells[0].n})")
            ax.fill_between(row.steps, low, high, alpha=0.2, color=line.get_color())
        for step, value in section.paper.get(shots, {}).items():
            ax.scatter([step], [value], marker="*", s=90, color="gray", zorder=5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{section.domain}, K={shots}")
        ax.set_xlabel("test-time gradient steps")
        ax.set_ylabel(f"{section.metric} ({section.unit})" if section.unit else section.metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
