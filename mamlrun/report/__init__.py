"""`mamlrun report`: a sweep's runs as the table a paper needs.

    >>> from mamlrun.report import build_report  # doctest: +SKIP
    >>> report = build_report(["multirun/2026-12-07/10-00-00"])  # doctest: +SKIP
    >>> report.write(Path("multirun/2026-12-07/10-00-00"))  # doctest: +SKIP

`runs` finds the runs and their states, `aggregate` groups them and aggregates over seeds,
`render` writes the table, CSV, LaTeX and figure, `sweep_callback` writes the report at the end of
every `-m` sweep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from mamlrun.report import render
from mamlrun.report.aggregate import DEFAULT_OVER, Section, aggregate
from mamlrun.report.runs import EVAL_CHOICES, Run, describe_states, find_runs
from mamlrun.runtime.errors import ConfigError, naming

REPORT_MD, REPORT_CSV, REPORT_TEX, REPORT_PNG = "report.md", "report.csv", "report.tex", "report.png"


@dataclass
class OptunaSweep:
    """What an Optuna sweep optimised: the trials' table needs it."""

    metric: str
    params: list[str]
    maximize: bool


@dataclass
class Report:
    runs: list[Run]
    sections: list[Section]
    optuna: OptunaSweep | None = None
    title: str = "mamlrun report"
    files: list[Path] = field(default_factory=list)

    def markdown(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in describe_states(self.runs).items())
        parts = [f"## {self.title}", "", f"{len(self.runs)} run(s): {counts}."]
        if len(self.sections) > 1:
            parts.append(
                f"Runs of {len(self.sections)} domains or metrics: one table each, never averaged together."
            )
        parts += [render.markdown_section(s) for s in self.sections]
        if self.optuna is not None:
            parts.append(
                render.trials_section(self.runs, self.optuna.metric, self.optuna.params, self.optuna.maximize)
            )
        parts.append(render.states_section(self.runs))
        return "\n\n".join(p for p in parts if p) + "\n"

    def write(self, out_dir: Path, latex: bool = False) -> list[Path]:
        """report.md, report.csv, report.png (and report.tex) into `out_dir`; returns their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        texts = {REPORT_MD: self.markdown(), REPORT_CSV: render.csv_text(self.sections)}
        if latex:
            texts[REPORT_TEX] = render.latex_text(self.sections)
        written = []
        for name, text in texts.items():
            with naming(out_dir / name):
                (out_dir / name).write_text(text, encoding="utf-8")
            written.append(out_dir / name)
        png = render.figure(self.sections, out_dir / REPORT_PNG)
        self.files = written + ([png] if png is not None else [])
        return self.files


def optuna_sweep(runs: Sequence[Run]) -> OptunaSweep | None:
    """The Optuna sweep the runs come from, read from a run's `.hydra/hydra.yaml` (the Optuna
    sweeper writes no multirun.yaml); None when the runs are not an Optuna sweep's."""
    for run in runs:
        path = run.path / ".hydra" / "hydra.yaml"
        if not path.is_file():
            continue
        try:
            sweeper = OmegaConf.select(OmegaConf.load(path), "hydra.sweeper") or {}
        except Exception:  # an unreadable record: try the next run
            continue
        if "optuna" not in str(sweeper.get("_target_", "")).lower():
            return None
        params = list((sweeper.get("params") or {}).keys())
        metric = run.setting("optimized_metric") or "objective"
        return OptunaSweep(str(metric), params, str(sweeper.get("direction", "minimize")) == "maximize")
    return None


def build_report(
    paths: Sequence[str],
    by: Sequence[str] | None = None,
    over: Sequence[str] = DEFAULT_OVER,
    eval_choice: str = "train",
    title: str | None = None,
) -> Report:
    """Read the runs under `paths` and aggregate them (see `mamlrun.report.aggregate`)."""
    if not isinstance(eval_choice, str) or not eval_choice or "/" in eval_choice:
        raise ConfigError("--eval", eval_choice, f"choose {EVAL_CHOICES}")
    runs = find_runs(paths, eval_choice)
    sections = aggregate(runs, by=by, over=over)
    return Report(
        runs, sections, optuna_sweep(runs), title or f"mamlrun report: {', '.join(map(str, paths))}"
    )
