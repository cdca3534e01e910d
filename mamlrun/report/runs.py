"""The runs a report reads: where they are, what they were asked to do, and how they ended.

A path given to `mamlrun report` is a run directory (it holds `eval.json`, `.hydra/` or
`mamlrun.log`) or a sweep directory (Hydra's `multirun.yaml`, or run directories inside). A sweep's
jobs also leave a record each in `<sweep>/.mamlrun/jobs/<num>.json` (written by the end-of-sweep
callback, `mamlrun.report.sweep_callback`): the job's overrides, how it ended, and what it returned
to the sweeper (Optuna's objective). A job refused on a bad value leaves nothing in its own folder,
so the record is what names it.

Every run gets a state, and only finished ones enter the table: finished (its meta-test's eval.json
is there), diverged (training diverged, or the meta-test's adaptation did on some tasks), failed (it
ended on an error, named), unfinished (stopped, killed or still running: where its checkpoint
stands), not started.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mamlrun.runtime.errors import UserError
from mamlrun.runtime.run_record import read_record

EVAL_JSON = "eval.json"
JOBS_DIR = Path(".mamlrun") / "jobs"  # inside a sweep directory: one record per job
FINISHED = "finished"
STATES = (FINISHED, "diverged", "failed", "unfinished", "not started")
EVAL_CHOICES = "train (the run's own meta-test), latest (the newest `mamlrun eval`), or an eval/<stamp> name"


@dataclass
class Run:
    """One run as the report sees it."""

    path: Path
    overrides: list[str]  # key=value, as given on the command line (Hydra's overrides.yaml)
    state: str  # one of STATES
    detail: str = ""  # why it is not finished (the error line, where its checkpoint stands)
    results: dict[str, Any] | None = None  # the chosen eval.json
    config: DictConfig | None = None  # .hydra/config.yaml
    value: float | None = None  # what the job returned to the sweeper (Optuna's objective)
    job: int | None = None  # its number in the sweep
    sweep: Path | None = None  # the sweep directory it belongs to
    source: str = EVAL_JSON  # which eval.json, relative to the run directory

    def setting(self, key: str) -> Any:
        """The run's value of `key`: its override, else its config's (None when neither has it)."""
        given = dict(split_override(o) for o in self.overrides)
        if key in given:
            return given[key]
        if self.config is not None:
            value = OmegaConf.select(self.config, key, default=None)
            return OmegaConf.to_container(value) if isinstance(value, DictConfig) else value
        return None


def split_override(override: str) -> tuple[str, str]:
    """`key=value` -> (key, value), with Hydra's prefixes (+, ++, ~) dropped from the key."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def is_run_dir(path: Path) -> bool:
    return (path / ".hydra").is_dir() or (path / EVAL_JSON).is_file() or (path / "mamlrun.log").is_file()


def is_sweep_dir(path: Path) -> bool:
    return (path / "multirun.yaml").is_file() or (path / JOBS_DIR).is_dir()


def is_report_source(path: Path) -> bool:
    """A run or sweep directory."""
    return path.is_dir() and (
        is_run_dir(path) or is_sweep_dir(path) or any(is_run_dir(c) for c in path.iterdir() if c.is_dir())
    )


def expand(paths: Sequence[str]) -> list[Path]:
    """The paths, with shell patterns (`multirun/*/*`) expanded; a path that names nothing is an error."""
    found: list[Path] = []
    for given in paths:
        if glob.has_magic(
            given
        ):  # a pattern's matches that are not runs (report.md, multirun.yaml) are skipped
            matches = [Path(m) for m in sorted(glob.glob(given)) if is_report_source(Path(m))]
        else:
            matches = [Path(given)] if Path(given).exists() else []
        if not matches:
            raise UserError(
                f"report: {given} matches no run or sweep directory (give run or sweep directories, or shell patterns)"
                if glob.has_magic(given)
                else f"report: {given} does not exist (give run or sweep directories, or shell patterns)"
            )
        found += matches
    return found


def job_number(path: Path) -> tuple[int, str]:
    """Sort key: Hydra's job folders by number, others by name."""
    return (int(path.name), "") if path.name.isdigit() else (1 << 30, path.name)


def find_runs(paths: Sequence[str], eval_choice: str = "train") -> list[Run]:
    """Every run under `paths` (run and sweep directories, shell patterns), each read once."""
    runs: list[Run] = []
    seen: set[Path] = set()
    for path in expand(paths):
        if path.is_dir() and is_run_dir(path) and not is_sweep_dir(path):
            candidates = [(path, None)]
        elif is_report_source(path):
            candidates = sweep_jobs(path)
        else:
            raise UserError(
                f"report: {path} is neither a run directory (eval.json, .hydra/, mamlrun.log) nor a sweep "
                "directory (multirun.yaml, or run directories inside)"
            )
        for run_dir, record in candidates:
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            runs.append(read_run(run_dir, eval_choice, record))
    if not runs:
        raise UserError(f"report: no runs under {', '.join(paths)}")
    return runs


def sweep_jobs(sweep: Path) -> list[tuple[Path, dict[str, Any] | None]]:
    """(job folder, its record) for every job of a sweep: the folders Hydra made, and the jobs
    whose record names a folder that is not there (they did not start)."""
    records = read_job_records(sweep).values()
    by_dir = {Path(r["dir"]).resolve(): r for r in records if r.get("dir")}
    folders = sorted((c for c in sweep.iterdir() if c.is_dir() and is_run_dir(c)), key=job_number)
    jobs = [(f, by_dir.get(f.resolve())) for f in folders]
    known = {f.resolve() for f in folders}
    jobs += [(Path(d), r) for d, r in by_dir.items() if d not in known]
    return jobs


def read_job_records(sweep: Path) -> dict[int, dict[str, Any]]:
    """The sweep's job records by job number (unreadable ones are skipped: the folders still count)."""
    records: dict[int, dict[str, Any]] = {}
    folder = sweep / JOBS_DIR
    if not folder.is_dir():
        return records
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            records[int(record["num"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return records


def write_job_record(sweep: Path, num: int, record: Mapping[str, Any]) -> None:
    """`<sweep>/.mamlrun/jobs/<num>.json`, atomically (jobs of a parallel sweep write side by side)."""
    folder = Path(sweep) / JOBS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{num}.json.partial"
    partial.write_text(json.dumps({"num": num, **record}, allow_nan=True) + "\n", encoding="utf-8")
    partial.replace(folder / f"{num}.json")


def chosen_eval(run_dir: Path, eval_choice: str) -> Path:
    """The eval.json the report reads: the run's own, the newest `mamlrun eval`'s, or a named one."""
    if eval_choice == "train":
        return run_dir / EVAL_JSON
    evals = sorted(p.parent for p in (run_dir / "eval").glob(f"*/{EVAL_JSON}"))
    if eval_choice == "latest":
        return (evals[-1] if evals else run_dir / "eval" / "(none)") / EVAL_JSON
    return run_dir / "eval" / eval_choice / EVAL_JSON


def read_run(run_dir: Path, eval_choice: str, record: Mapping[str, Any] | None = None) -> Run:
    """A run's overrides, config, chosen results and state."""
    overrides = read_overrides(run_dir)
    if overrides is None:
        overrides = list((record or {}).get("overrides") or [])
    config_path = run_dir / ".hydra" / "config.yaml"
    config = None
    if config_path.is_file():
        try:
            config = OmegaConf.load(config_path)
        except Exception:  # an edited, unreadable record: the overrides still group it
            config = None
    run = Run(path=run_dir, overrides=overrides, state="not started", config=config)
    if record is not None:
        run.job, run.value = record.get("num"), record.get("value")
        run.sweep = run_dir.parent
    results_path = chosen_eval(run_dir, eval_choice)
    run.source = str(results_path.relative_to(run_dir))
    results = read_results(results_path)
    if results is not None:
        run.results = results
        diverged = [r for r in results.get("results", []) if r.get("diverged_tasks")]
        if diverged:
            r = diverged[0]
            run.state = "diverged"
            run.detail = f"meta-test adaptation diverged on {r['diverged_tasks']} of {r['num_tasks']} tasks (K={r['shots']})"
        else:
            run.state = FINISHED
        return run
    run.state, run.detail = unfinished_state(run_dir, record, eval_choice)
    return run


def read_overrides(run_dir: Path) -> list[str] | None:
    """The run's command-line overrides (.hydra/overrides.yaml); None where absent or unreadable
    (the report lists such a run by its path and carries on)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        loaded = read_record(path, advice="")
    except UserError:
        return None
    return [str(o) for o in loaded] if isinstance(loaded, list) else None


def read_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("results"), list) else None


def last_error(log_file: Path) -> str | None:
    """The run's last ERROR (or stop WARNING) line in mamlrun.log, without its prefix."""
    if not log_file.is_file():
        return None
    found = None
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if "][ERROR] - " in line or ("][WARNING] - " in line and "interrupted by" in line):
            found = line.split("] - ", 1)[1]
    return found


def unfinished_state(run_dir: Path, record: Mapping[str, Any] | None, eval_choice: str) -> tuple[str, str]:
    """(state, detail) of a run without the chosen eval.json."""
    error = last_error(run_dir / "mamlrun.log") or (record or {}).get("error")
    if error and error.startswith("training diverged"):
        return "diverged", error
    if error and "interrupted by" not in error:
        return "failed", error
    last = run_dir / "checkpoints" / "last.pt"
    if eval_choice != "train" and (run_dir / EVAL_JSON).is_file():
        return "unfinished", f"no {chosen_eval(run_dir, eval_choice).parent.relative_to(run_dir)}"
    if last.is_file():
        from mamlrun.runtime import checkpoint as ckpt

        try:
            where = ckpt.saved_position(last)
        except (UserError, KeyError, TypeError):
            where = "its last checkpoint is unreadable"
        return "unfinished", where + (f" ({error})" if error else "")
    if error or (run_dir / ".hydra").is_dir():
        return "unfinished", error or "stopped before its first checkpoint"
    if record is not None and record.get("status") == "failed":
        return "failed", str(record.get("error") or "it failed")
    return "not started", "the job did not start" if record is None or not run_dir.exists() else "no results"


def describe_states(runs: Iterable[Run]) -> dict[str, int]:
    """How many runs are in each state (the report's summary line)."""
    counts = {state: 0 for state in STATES}
    for run in runs:
        counts[run.state] += 1
    return {k: v for k, v in counts.items() if v}
