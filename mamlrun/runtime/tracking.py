"""Metric sinks: a local `metrics.jsonl` (always) and Weights & Biases (when enabled).

W&B runs offline unless WANDB_MODE (or `logger.mode`) says otherwise, so no account is needed;
`wandb sync <run_dir>/wandb/offline-run-*` uploads later. Any W&B failure is logged once and the
run goes on with local logging only. The W&B run id is kept in the run dir (and the checkpoint)
so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mamlrun.runtime.errors import naming

log = logging.getLogger(__name__)

RUN_ID_FILE = "wandb_run_id.txt"
IDENTITY_FILE = "wandb_run.json"  # id, group and name: what a resumed run must keep
METRICS_FILE = "metrics.jsonl"
ONLINE_MODES = ("online", "run", "shared")  # W&B modes that need its server
DEFAULT_INIT_TIMEOUT = 10.0  # seconds (logger.init_timeout)
META_TEST_PREFIX = "eval/"  # meta-test records: a resumed run (not yet finished) redoes the meta-test


def _plain(value: Any) -> Any:
    """Tensors and numpy scalars to floats, so JSON and W&B both take them."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


class Tracker:
    """Logs metrics to metrics.jsonl and, optionally, to W&B.

    Args:
        run_dir: the run directory (Hydra's output dir).
        config: the resolved config as a plain dict (logged to W&B).
        wandb_settings: None to disable W&B, else keyword arguments for `wandb.init`
            (project, entity, group, tags, mode, name, job_type).
        resume_step: on resume, metric records after this step are dropped from metrics.jsonl
            (they belong to iterations that will be redone), and so are meta-test records (a run
            that resumes has not finished: its meta-test runs again).
    """

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        wandb_settings: Mapping[str, Any] | None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._jsonl = self.metrics_path.open("a", encoding="utf-8")
        self.wandb_run = None
        if wandb_settings is not None and wandb_settings.get("mode") != "disabled":
            self._start_wandb(config, dict(wandb_settings))

    @classmethod
    def silent(cls) -> Tracker:
        """A tracker that records nothing: ranks other than 0 of a torchrun run (rank 0 logs)."""
        tracker = cls.__new__(cls)
        tracker.run_dir, tracker.metrics_path, tracker._jsonl, tracker.wandb_run = None, None, None, None
        return tracker

    @classmethod
    def for_run(cls, cfg: Any, run_dir: Path, start: int) -> Tracker:
        """The tracker of a training run that starts (or resumes) at iteration `start`."""
        from omegaconf import OmegaConf

        return cls(
            run_dir,
            OmegaConf.to_container(cfg, resolve=True),
            wandb_settings(cfg),
            resume_step=start if start else None,
        )

    # ------------------------------------------------------------------ W&B
    def _start_wandb(self, config: Mapping[str, Any], settings: dict[str, Any]) -> None:
        id_file = self.run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        if run_id:  # a resumed run keeps its group and name
            kept = read_identity(self.run_dir)
            settings |= {k: kept[k] for k in ("group", "name") if kept.get(k)}
        timeout = float(settings.pop("init_timeout", None) or DEFAULT_INIT_TIMEOUT)
        if settings.get("mode") in ONLINE_MODES:
            unreachable = server_unreachable(wandb_server(), timeout)
            if unreachable is not None:
                self._go_offline(
                    settings, f"did not answer within {timeout:g} s (logger.init_timeout; {unreachable})"
                )
        try:
            self._init_wandb(config, settings, run_id, timeout)
        except Exception as exc:
            if settings.get("mode") not in ONLINE_MODES:
                log.warning("W&B failed to start (%s); logging to %s only", exc, self.metrics_path)
                self.wandb_run = None
                return
            self._go_offline(settings, f"refused this run ({exc})")
            try:
                self._init_wandb(config, settings, run_id, timeout)
            except Exception as again:
                log.warning(
                    "W&B failed to start offline too (%s); logging to %s only", again, self.metrics_path
                )
                self.wandb_run = None

    def _init_wandb(
        self, config: Mapping[str, Any], settings: dict[str, Any], run_id: str | None, timeout: float
    ):
        """wandb.init with `settings`; keeps the run id and identity for a resume."""
        import wandb

        self.wandb_run = wandb.init(
            config=dict(config),
            dir=str(self.run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            settings=wandb.Settings(init_timeout=timeout),
            **{k: v for k, v in settings.items() if v is not None},
        )
        (self.run_dir / RUN_ID_FILE).write_text(self.wandb_run.id + "\n")
        identity = {"id": self.wandb_run.id, "group": settings.get("group"), "name": settings.get("name")}
        (self.run_dir / IDENTITY_FILE).write_text(json.dumps(identity) + "\n", encoding="utf-8")

    def _go_offline(self, settings: dict[str, Any], why: str) -> None:
        """Log this run to W&B offline (saying why and how to upload it), and the rest of this process
        too: with an online mode still in WANDB_MODE, W&B's teardown at exit dials the dead server
        again (10 s more measured; 3 s when the variable is put back at finish). Later jobs of an
        in-process sweep then skip it."""
        folder = self.run_dir / "wandb"
        log.warning(
            "W&B server %s %s: this run logs to W&B offline in %s; upload it later with "
            "`wandb sync %s/offline-run-*`",
            wandb_server(),
            why,
            folder,
            folder,
        )
        settings["mode"] = "offline"
        os.environ["WANDB_MODE"] = "offline"

    def _wandb_call(self, what: str, fn, *args, **kwargs) -> None:
        if self.wandb_run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:
            log.warning("W&B %s failed (%s); logging to %s only from now on", what, exc, self.metrics_path)
            self.wandb_run = None

    @property
    def run_id(self) -> str | None:
        return self.wandb_run.id if self.wandb_run is not None else None

    # ------------------------------------------------------------------ logging
    def _truncate_after(self, step: int) -> None:
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            meta_test = any(key.startswith(META_TEST_PREFIX) for key in record)
            if record.get("step", -1) <= step and not meta_test:
                kept.append(line)
        with naming(self.metrics_path):
            self.metrics_path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Record `metrics` at iteration `step` in both sinks."""
        record = {k: _plain(v) for k, v in metrics.items()}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        if self._jsonl is not None:
            with naming(self.metrics_path):
                self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
                self._jsonl.flush()
        self._wandb_call("log", lambda: self.wandb_run.log(record, step=step))

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Final values (W&B run summary)."""
        self._wandb_call("summary", lambda: self.wandb_run.summary.update(dict(metrics)))

    def log_figure(self, key: str, path: Path, step: int | None = None) -> None:
        """Attach a saved figure (PNG) to the W&B run."""

        def _log() -> None:
            import wandb

            self.wandb_run.log({key: wandb.Image(str(path))}, step=step)

        self._wandb_call("image upload", _log)

    def finish(self, exit_code: int = 0) -> None:
        """Close both sinks; always called, also when the run fails."""
        if self._jsonl is not None and not self._jsonl.closed:
            self._jsonl.close()
        self._wandb_call("finish", lambda: self.wandb_run.finish(exit_code=exit_code))
        self.wandb_run = None


def wandb_server() -> str:
    """The W&B server wandb.init talks to (WANDB_BASE_URL, as wandb itself reads it)."""
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


def server_unreachable(url: str, timeout: float) -> str | None:
    """Why `url` gave no HTTP answer within `timeout` seconds (None: it answered, any status).

    wandb.init on a machine without network blocks for about 90 s (its own retries) before it
    gives up; asking first bounds that wait to `logger.init_timeout` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:  # the server answered, with an error status: it is there
        return None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def read_identity(run_dir: Path) -> dict[str, Any]:
    """The W&B id, group and name a run directory's training run had ({} when it had none)."""
    path = Path(run_dir) / IDENTITY_FILE
    if not path.is_file():
        return {}
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
        return kept if isinstance(kept, dict) else {}
    except (json.JSONDecodeError, OSError):
        log.warning("ignoring %s: not the JSON mamlrun writes", path)
        return {}


def eval_wandb_settings(cfg: Any, run_dir: Path, eval_name: str) -> dict[str, Any] | None:
    """`wandb_settings` for a `mamlrun eval` of the run in `run_dir`: its own W&B run (job type
    eval) in the training run's group (its name when it had no group), named after both."""
    settings = wandb_settings(cfg)
    if settings is None:
        return None
    kept = read_identity(run_dir)
    train_name = kept.get("name") or kept.get("id") or Path(run_dir).name
    return settings | {
        "job_type": "eval",
        "group": kept.get("group") or train_name,
        "name": f"{train_name}-eval-{eval_name}",
    }


def sweep_group(sweep_dir: Path) -> str:
    """The W&B group of a sweep's jobs: its directory's last two parts (`multirun/<date>/<time>` ->
    `<date>_<time>`), so sweeps started at the same time on different days stay apart."""
    sweep = Path(sweep_dir)
    return f"{sweep.parent.name}_{sweep.name}" if sweep.parent.name else sweep.name


def wandb_settings(cfg: Any) -> dict[str, Any] | None:
    """`wandb.init` keyword arguments from `cfg.logger`, or None when W&B is off.

    Jobs of one Hydra multirun share a W&B group unless `logger.group` is set: the sweep
    directory's last two parts (`multirun/<date>/<time>` -> `<date>_<time>`), so sweeps started at
    the same time on different days stay apart; a job's name is the group and the job number.
    """
    logger_cfg = cfg.logger
    if not logger_cfg.get("wandb", False):
        return None
    group = logger_cfg.get("group")
    name = logger_cfg.get("name")
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        sweep_name = sweep_group(Path(hydra_cfg.sweep.dir))
        if group is None and hydra_cfg.mode == RunMode.MULTIRUN:
            group = sweep_name
        if name is None:
            name = Path(hydra_cfg.runtime.output_dir).name
            if hydra_cfg.mode == RunMode.MULTIRUN:
                name = f"{sweep_name}-{hydra_cfg.job.num}"
    except ValueError:  # not inside a Hydra app (e.g. `mamlrun eval`)
        pass
    return {
        "project": logger_cfg.get("project", "mamlrun"),
        "entity": logger_cfg.get("entity"),
        "group": group,
        "name": name,
        "tags": list(logger_cfg.get("tags") or []),
        "mode": logger_cfg.get("mode", "offline"),
        "job_type": logger_cfg.get("job_type", "train"),
        "init_timeout": logger_cfg.get("init_timeout", DEFAULT_INIT_TIMEOUT),
    }
