"""The report at the end of every `-m` sweep, through Hydra's callbacks (conf/config.yaml,
`hydra.callbacks.sweep_report`).

- `on_job_start` / `on_job_end` (in the process that runs the job: the sweep's own, a joblib
  worker, a Slurm node) write the job's record into `<sweep>/.mamlrun/jobs/<num>.json`: its
  overrides, its folder, how it ended and what it returned to the sweeper.
- `on_multirun_end` (the sweep's parent) writes report.md, report.csv and report.png into the sweep
  directory, prints the table, and logs it to the sweep's W&B group as a table when W&B is on.

Hydra skips `on_multirun_end` when a job's failure ends the sweep (a job's one-line error exits the
basic launcher's sweep), so `mamlrun train` calls `write_pending` once Hydra has returned: the
report is written once either way. A report that cannot be written is a warning, never the sweep's
failure.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

_pending: DictConfig | None = None  # the sweep whose report is still to write


def _is_multirun(config: DictConfig) -> bool:
    return str(OmegaConf.select(config, "hydra.mode", default="")) in ("MULTIRUN", "RunMode.MULTIRUN")


def _returned(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class SweepReport(Callback):
    """Job records during the sweep, the report at its end."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _pending
        _pending = config

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_pending()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if _is_multirun(config):
            self._record(config, status="running")

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        status = job_return.status.name.lower()
        value = job_return._return_value  # return_value raises the job's exception when it failed
        if job_return.status == JobStatus.COMPLETED:
            self._record(config, status=status, value=_returned(value))
        elif type(value).__name__ != "JobEnded":  # JobEnded's line is recorded already (record_failure)
            first = str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__
            self._record(config, status=status, error=first)

    @staticmethod
    def _record(config: DictConfig, **fields: Any) -> None:
        from mamlrun.report.runs import write_job_record

        hydra = config.hydra
        try:
            write_job_record(
                Path(hydra.sweep.dir),
                int(hydra.job.num),
                {"dir": str(hydra.runtime.output_dir), "overrides": list(hydra.overrides.task), **fields},
            )
        except (OSError, ValueError) as exc:  # the report lists the job from its folder instead
            log.warning("could not record job %s for the sweep's report: %s", hydra.job.num, exc)


def record_failure(message: str, stopped: bool = False) -> None:
    """A job of a sweep ends on its one-line report: the record keeps the line (a refused job
    leaves nothing else behind), whether or not Hydra's `on_job_end` runs after it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        config = DictConfig({"hydra": HydraConfig.get()})
    except ValueError:  # not in a Hydra job
        return
    if _is_multirun(config):
        SweepReport._record(config, status="stopped" if stopped else "failed", error=message)


def write_pending() -> None:
    """Write the report of the sweep that started in this process, once."""
    global _pending
    config, _pending = _pending, None
    if config is not None:
        write_sweep_report(config)


def write_sweep_report(config: DictConfig) -> None:
    """report.md/.csv/.png into the sweep directory; the table to the log; W&B when it is on."""
    from mamlrun.report import build_report
    from mamlrun.runtime.errors import UserError

    sweep = Path(str(config.hydra.sweep.dir))
    if not sweep.is_dir():
        return
    try:
        report = build_report([str(sweep)], title=f"sweep {sweep}")
        files = report.write(sweep)
    except UserError as exc:
        log.warning("no sweep report: %s", exc)
        return
    except Exception as exc:  # never the sweep's failure
        log.warning("the sweep's report could not be written (%s: %s)", type(exc).__name__, exc)
        return
    log.info("sweep report (%s):\n%s", ", ".join(p.name for p in files), report.markdown())
    if OmegaConf.select(config, "logger.wandb", default=False):
        log_to_wandb(config, sweep, report)


def log_to_wandb(config: DictConfig, sweep: Path, report: Any) -> None:
    """The report as a W&B table (and its figure) in a run of the sweep's group, job type report."""
    from mamlrun.report import REPORT_PNG, render
    from mamlrun.runtime.tracking import sweep_group

    logger = config.logger
    group = logger.get("group") or sweep_group(sweep)
    try:
        import wandb

        run = wandb.init(
            project=logger.get("project", "mamlrun"),
            entity=logger.get("entity"),
            group=group,
            name=f"{group}-report",
            job_type="report",
            mode=logger.get("mode", "offline"),
            dir=str(sweep / ".mamlrun"),  # beside the job records, not among the job folders
            settings=wandb.Settings(init_timeout=float(logger.get("init_timeout") or 30)),
        )
        payload: dict[str, Any] = {
            "report/table": wandb.Table(
                columns=list(render.CSV_FIELDS), data=render.table_rows(report.sections)
            )
        }
        if (sweep / REPORT_PNG).is_file():
            payload["report/figure"] = wandb.Image(str(sweep / REPORT_PNG))
        run.log(payload)
        run.finish()
        log.info("sweep report logged to W&B group %s (run %s)", group, run.id)
    except Exception as exc:  # W&B down or refusing: the files are written
        log.warning("the sweep report was not logged to W&B (%s: %s)", type(exc).__name__, exc)
