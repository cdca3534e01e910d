"""Hydra task functions and the recipe table: the only place that knows about domain kinds.

`train(cfg)` is module-level and picklable so every Hydra launcher (basic, joblib, submitit) and
sweeper (Optuna) can run it. User errors end the job with a one-line message and a non-zero exit
code, never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamlrun.config_checks import (
    MAY_CHANGE_ON_EVAL,
    check_run,
    describe_differences,
    may_change_on_eval,
    run_defining_differences,
    upgrade_config,
)
from mamlrun.report.sweep_callback import record_failure
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime import distributed, parallel_sweep
from mamlrun.runtime.errors import (
    RUN_PLACES,
    CheckpointError,
    Interrupted,
    UserError,
    describe_os_error,
)
from mamlrun.runtime.malloc import tune_malloc
from mamlrun.runtime.run_record import (
    HYDRA_DIR,
    LOG_FORMAT,
    HeldLogFile,
    log_file,
    new_eval_dir,
    read_record,
    remove_eval_dir,
    write_hydra_files,
)
from mamlrun.runtime.threads import parallel_jobs_of, thread_budget, usable_cores
from mamlrun.runtime.tracking import eval_wandb_settings
from mamlrun.trainers import loop
from mamlrun.trainers.recipe import Recipe
from mamlrun.trainers.rl import RL_RECIPE
from mamlrun.trainers.supervised import CLASSIFICATION_RECIPE, REGRESSION_RECIPE

log = logging.getLogger("mamlrun")
MISSING_KEY = object()
CONF_DIR = Path(__file__).resolve().parent / "conf"  # the config groups (logger=none in `mamlrun eval`)

EVAL_PLACES = "make the run's eval/ a folder you can write, or evaluate a copy of the checkpoint elsewhere"

RECIPES: dict[str, Recipe] = {
    "regression": REGRESSION_RECIPE,
    "classification": CLASSIFICATION_RECIPE,
    "rl": RL_RECIPE,
}
"""`domain.kind` -> the recipe that trains and meta-tests it: the only dispatch on the kind."""


def recipe_for(cfg: DictConfig) -> Recipe:
    """Check the run-level and the kind's settings; the kind's recipe."""
    check_run(cfg, tuple(RECIPES))
    recipe = RECIPES[cfg.domain.kind]
    recipe.check_config(cfg)
    return recipe


def report_and_exit(exc: UserError | Interrupted) -> None:
    """Print the one-line message (and record it in the run's log file), then exit non-zero.

    A job of a parallel sweep ends with `JobEnded` instead (joblib would kill the other jobs on a
    SystemExit), and leaves a stop for the sweep's parent to report with the others."""
    level = logging.WARNING if isinstance(exc, Interrupted) else logging.ERROR
    record = log.makeRecord(log.name, level, __file__, 0, "%s", (exc,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # the terminal gets the line below instead
            handler.handle(record)
    record_failure(str(exc), stopped=isinstance(exc, Interrupted))  # a sweep's report names the job's end
    parallel_job = parallel_sweep.in_worker_job()
    if isinstance(exc, Interrupted) and parallel_job:
        parallel_sweep.stopped_by(exc.signum)
    else:
        print(
            f"mamlrun: {'stopped' if isinstance(exc, Interrupted) else 'error'}: {exc}",
            file=sys.stderr,
            flush=True,
        )
    if parallel_job:
        raise parallel_sweep.JobEnded(exc.exit_code, str(exc))
    raise SystemExit(exc.exit_code)


def train(cfg: DictConfig) -> float:
    """Meta-train (and meta-test) one configuration; returns the best validation metric. In a
    worker of a parallel sweep, the worker's signals stop the job (`parallel_sweep`)."""
    hydra_cfg = HydraConfig.get()
    in_worker = hydra_cfg.mode == RunMode.MULTIRUN and parallel_sweep.is_joblib(
        str(hydra_cfg.launcher.get("_target_", ""))
    )
    with parallel_sweep.worker_job() if in_worker else contextlib.nullcontext():
        return train_job(cfg)


def train_job(cfg: DictConfig) -> float:
    """Meta-train (and meta-test) one configuration; returns the best validation metric.

    Nothing is written into the run directory (Hydra's `.hydra/` record, the log file) until the
    command is accepted as a valid start or continuation of the run there.
    """
    tune_malloc()
    held = HeldLogFile()
    try:
        parallel_sweep.raise_if_stopped()
        recipe = recipe_for(cfg)
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        use_thread_budget(cfg, OmegaConf.to_container(hydra_cfg.launcher) if multirun else None)
        ranks = distributed.start(str(cfg.device))
        run_dir = Path(str(ranks.broadcast(str(run_dir))))  # under torchrun: rank 0's run directory

        def accept() -> None:
            held.accept()
            write_hydra_files(run_dir, cfg, hydra_cfg)
            log.info("run directory: %s", run_dir)

        return loop.train(recipe, cfg, run_dir, on_accept=accept if ranks.is_main else None)
    except (UserError, Interrupted, OmegaConfBaseException, OSError) as exc:
        report_and_exit(reportable(exc))  # in the job: Hydra would add a line of its own
    finally:
        held.release()
        distributed.stop()
    raise AssertionError("unreachable")


def use_thread_budget(cfg: DictConfig, launcher: dict | None, level: int = logging.INFO) -> None:
    """Give torch this job's thread budget (`threads`: auto = usable cores / parallel jobs), logged."""
    import torch

    cores = usable_cores()
    jobs = parallel_jobs_of(launcher, cores)
    threads = thread_budget(cfg.threads, cores, jobs)
    torch.set_num_threads(threads)
    log.log(
        level,
        "torch threads: %d (threads=%s; %d usable cores, %d parallel jobs)",
        threads,
        cfg.threads,
        cores,
        jobs,
    )


def train_in(cfg: DictConfig, run_dir: Path) -> float:
    """Train a composed config in `run_dir` without Hydra's app (tests, notebooks); errors raise."""
    return loop.train(recipe_for(cfg), cfg, Path(run_dir))


def evaluate_checkpoint(target: Path, overrides: list[str]) -> float:
    """`mamlrun eval`: re-run the meta-test protocol on a checkpoint (or a run dir's best/last.pt),
    with overrides of the protocol, into a new `RUN/eval/<date>_<time>/`; returns the headline.

    Nothing is created until the checkpoint, the run it sits in and the overrides are accepted, and
    an evaluation that fails removes its folder: the run directory is left as it was.
    """
    tune_malloc()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    out_dir: Path | None = None
    try:
        path = ckpt.find_checkpoint(Path(target))
        state = ckpt.load_checkpoint(path)
        cfg = OmegaConf.create(state["config"])
        upgrade_config(cfg)
        OmegaConf.set_struct(cfg, True)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        check_checkpoint_fits_run(cfg, path, run_dir)
        apply_overrides(cfg, overrides, may_change_on_eval, "mamlrun eval")
        recipe = recipe_for(cfg)
        use_thread_budget(cfg, None, logging.DEBUG)  # one line on stderr if the evaluation then fails
        out_dir = new_eval_dir(run_dir)
        with log_file(out_dir / "eval.log"):
            wandb = eval_wandb_settings(cfg, run_dir, out_dir.name)
            headline = loop.evaluate(recipe, cfg, path, out_dir, wandb).headline
        log.info("results in %s", out_dir)
        return headline
    except (UserError, OmegaConfBaseException, OSError, Interrupted, KeyboardInterrupt) as exc:
        if out_dir is not None:
            remove_eval_dir(out_dir)
        report = reportable(exc, EVAL_PLACES)
        if isinstance(report, Interrupted):
            removed = f"; its folder {out_dir} was removed" if out_dir is not None else ""
            report = Interrupted(report.signum, f"evaluation {report}{removed}: run it again")
        report_and_exit(report)
    raise AssertionError("unreachable")


def reportable(exc: BaseException, places: str = RUN_PLACES) -> UserError | Interrupted:
    """The one-line report of what ended a command: our own errors as they are, a config error, a
    file-system error naming its file (`places`: where the user can write instead), a Ctrl-C as
    the signal it was."""
    if isinstance(exc, UserError | Interrupted):
        return exc
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted(signal.SIGINT, "interrupted by SIGINT")
    if isinstance(exc, OSError):
        return UserError(describe_os_error(exc, places))
    if isinstance(exc, OmegaConfBaseException):  # e.g. a key the checkpoint's config lacks
        return UserError(f"config: {str(exc).strip().splitlines()[0]}")
    raise exc


def check_checkpoint_fits_run(cfg: DictConfig, path: Path, run_dir: Path) -> None:
    """A checkpoint inside a run directory must have been written under that run's settings
    (`.hydra/config.yaml`): a checkpoint of another domain or model placed there is refused."""
    record = run_dir / HYDRA_DIR / "config.yaml"
    if not record.is_file():
        return
    advice = "restore it, or evaluate the checkpoint file itself from outside the run directory"
    run_cfg = read_record(record, advice, as_config=True)
    if not isinstance(run_cfg, DictConfig):
        raise UserError(f"{record} holds no run settings (a YAML mapping): {advice}")
    upgrade_config(run_cfg)  # as the checkpoint's config: keys added since, with their meaning then
    try:
        run_settings = OmegaConf.to_container(run_cfg, resolve=True)
    except OmegaConfBaseException:  # an interpolation only Hydra resolves: compare as written
        run_settings = OmegaConf.to_container(run_cfg)
    checkpoint_settings = OmegaConf.to_container(cfg, resolve=True)
    differences = run_defining_differences(checkpoint_settings, run_settings, now_label=f"in {record}")
    if differences:
        raise CheckpointError(
            f"checkpoint {path} does not fit the run in {run_dir} ({describe_differences(differences, 2)}): "
            "evaluate the run's own checkpoints, or move this one out of the run"
        )


def apply_overrides(
    cfg: DictConfig,
    overrides: list[str],
    may_change: Callable[[str], bool] | None = None,
    command: str = "",
) -> None:
    """Apply `key=value` overrides with Hydra's own parser (same value syntax). A key the config
    lacks is refused (nothing would read it), and so is one `may_change` refuses (it could not take
    effect in `command`) and a key given twice."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for given in overrides:
        if given.startswith("-"):
            raise UserError(
                f"{given!r}: {command or 'this command'} takes key=value overrides only, no options "
                "(Hydra's -m, --cfg and the like belong to `mamlrun train`)"
            )
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(f"bad override: {str(exc).splitlines()[0]}") from None
    seen: set[str] = set()
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or override.is_sweep_override() or override.is_add():
            raise UserError(f"override {override.input_line!r}: only key=value is allowed here")
        if key in seen:
            raise UserError(f"override {override.input_line!r}: {key} is given twice; give it once")
        seen.add(key)
        if OmegaConf.select(cfg, key, default=MISSING_KEY) is MISSING_KEY:
            raise UserError(
                f"override {override.input_line!r}: no setting named {key!r} in this run's config"
            )
        if may_change is not None and not may_change(key):
            raise UserError(
                f"override {override.input_line!r} cannot take effect in {command}: the checkpoint fixes it; "
                f"valid keys: {', '.join(MAY_CHANGE_ON_EVAL)} (and the keys under them)"
            )
        value = override.value()
        if isinstance(OmegaConf.select(cfg, key), DictConfig) and isinstance(value, str):
            value = group_option(key, value, override.input_line)  # e.g. logger=none
        OmegaConf.update(cfg, key, value, merge=False)


def group_option(group: str, option: str, given: str) -> DictConfig:
    """The settings of option `option` of config group `group` (conf/<group>/<option>.yaml), for an
    override like `logger=none` outside Hydra's composition."""
    folder = CONF_DIR / group.replace(".", "/")
    if not folder.is_dir():
        raise UserError(
            f"override {given!r}: {group} holds settings; set them one by one ({group}.<key>=...)"
        )
    options = sorted(path.stem for path in folder.glob("*.yaml"))
    if option not in options:
        raise UserError(f"override {given!r}: no such option in group {group}; valid: {', '.join(options)}")
    return OmegaConf.load(folder / f"{option}.yaml")
