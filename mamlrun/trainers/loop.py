"""The one training loop: everything a run does that is not the algorithm. It knows no domain.

    build parts -> resume from last.pt -> for each meta-iteration:
        recipe.step (the algorithm) -> divergence check -> metric records and progress
        -> validation and best.pt -> last.pt on its cadence, at the end and on SIGINT/SIGTERM
    -> meta-test of the chosen checkpoint -> evaluation.report

The tracker (metrics.jsonl and W&B) is finished on every way out, also on error, and a kind's
parts are closed (environments) the same way. `evaluate` runs the meta-test alone on a checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tqdm.contrib.logging import logging_redirect_tqdm

from mamlrun.config_checks import describe_differences, run_defining_differences, upgrade_config
from mamlrun.evaluation import EVAL_JSON, MetaTestOutcome, report
from mamlrun.plots import training_curve_figure
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.distributed import world
from mamlrun.runtime.errors import Interrupted, StepFailed, TrainingDiverged, UserError
from mamlrun.runtime.lock import NoLock, RunLock
from mamlrun.runtime.progress import progress_bar
from mamlrun.runtime.signals import GracefulStop
from mamlrun.runtime.tracking import METRICS_FILE, Tracker
from mamlrun.trainers.recipe import Metrics, Parts, Recipe

TRAINING_CURVE_PNG = "training_curve.png"  # the run's training metrics against meta-iterations

log = logging.getLogger(__name__)


def train(
    recipe: Recipe, cfg: DictConfig, run_dir: Path, on_accept: Callable[[], None] | None = None
) -> float:
    """Meta-train, then meta-test; returns what sweeps optimise (`sweep_result`: `optimized_metric`,
    by default the best validation metric, or the meta-test's headline number without validation).

    One process per run directory (a lock). A run directory with a checkpoint continues only under
    the same run-defining settings, and a finished run is left alone. `on_accept` runs once the
    command is known to be a valid start or continuation, before anything is written (the Hydra
    task writes its `.hydra/` record there).
    """
    run_dir, ranks = Path(run_dir), world()
    with RunLock(run_dir) if ranks.is_main else NoLock() as lock:
        state = last_checkpoint(cfg, run_dir)
        if state is not None:
            check_same_run(state, cfg, run_dir)
            if int(state["iteration"]) >= int(cfg.meta_iterations) and (run_dir / EVAL_JSON).is_file():
                # every value checked as for a start: a bad one is refused, not "finished"
                recipe.build(cfg).close()
            if finished_run(state, cfg, run_dir):
                return sweep_result(cfg, run_dir, dict(state["best"]), None)

        def accept() -> None:
            lock.keep()
            if on_accept is not None:
                on_accept()

        return train_locked(recipe, cfg, run_dir, state, accept)


def last_checkpoint(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The state of checkpoints/last.pt when the run directory has one (and checkpoint.resume)."""
    last = ckpt.checkpoint_dir(run_dir) / ckpt.LAST
    return ckpt.load_checkpoint(last) if cfg.checkpoint.resume and last.is_file() else None


def check_same_run(state: dict[str, Any], cfg: DictConfig, run_dir: Path) -> None:
    """Refuse to continue a checkpoint written under other run-defining settings (seed, domain,
    model, order, alpha, sizes), naming each difference."""
    saved_cfg = OmegaConf.create(state["config"])
    upgrade_config(saved_cfg)  # keys added since it was written, with the meaning they had then
    saved = OmegaConf.to_container(saved_cfg)
    differences = run_defining_differences(saved, OmegaConf.to_container(cfg, resolve=True))
    if differences:
        raise UserError(
            f"run directory {run_dir} holds a run with other settings ({describe_differences(differences)}): "
            "continue it with its own "
            f"settings (mamlrun resume {shlex.quote(str(run_dir))}), or choose another hydra.run.dir"
        )


def finished_run(state: dict[str, Any], cfg: DictConfig, run_dir: Path) -> bool:
    """A run whose last.pt reached meta_iterations and whose meta-test wrote eval.json is done:
    say so, instead of repeating the meta-test."""
    results = run_dir / EVAL_JSON
    if int(state["iteration"]) < int(cfg.meta_iterations) or not results.is_file():
        return False
    try:
        json.loads(results.read_text(encoding="utf-8"))["headline"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):  # cut short: redo the meta-test
        log.warning("%s is unreadable; the meta-test runs again", results)
        return False
    log.info(
        "run %s is finished (iteration %d of %d): results in %s; `mamlrun eval %s` re-runs the meta-test, "
        "a larger meta_iterations continues training",
        run_dir,
        int(state["iteration"]),
        int(cfg.meta_iterations),
        results,
        run_dir,
    )
    return True


def sweep_result(cfg: DictConfig, run_dir: Path, best: dict[str, float], headline: float | None) -> float:
    """What `train` returns to a sweeper (Optuna): the metric named by `optimized_metric`, its last
    logged value (or `best/val_metric`, `best/iteration`); without one, the best validation metric,
    else the meta-test's headline number."""
    key = cfg.get("optimized_metric")
    if key is None:
        if best["iteration"] >= 0:
            return float(best["metric"])
        if headline is None:
            headline = json.loads((run_dir / EVAL_JSON).read_text(encoding="utf-8")).get("headline")
        return float("nan") if headline is None else float(headline)
    values = latest_metrics(run_dir / METRICS_FILE)
    values |= {"best/val_metric": float(best["metric"]), "best/iteration": float(best["iteration"])}
    if key not in values:
        logged = ", ".join(k for k in sorted(values) if not k.endswith("_ci95"))
        raise UserError(f"optimized_metric={key!r} is not a metric this run logged; it logged: {logged}")
    return values[key]


def latest_metrics(path: Path) -> dict[str, float]:
    """The last value of every metric in a run's metrics.jsonl."""
    values: dict[str, float] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        values |= {
            k: float("nan") if v is None else float(v)
            for k, v in record.items()
            if k != "step" and (v is None or isinstance(v, int | float))
        }
    return values


def train_locked(
    recipe: Recipe,
    cfg: DictConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    on_accept: Callable[[], None],
) -> float:
    """`train` once the run directory is ours and the command is a valid start or continuation."""
    parts = recipe.build(cfg)
    ranks = world()
    tracker: Tracker | None = None
    exit_code = 1
    try:
        start, best = resume(parts, run_dir, state)
        on_accept()
        tracker = Tracker.for_run(cfg, run_dir, start) if ranks.is_main else Tracker.silent()
        log.info(
            "%s (%s) | %s | %d iterations | device %s%s",
            cfg.domain.name,
            cfg.domain.kind,
            parts.describe(),
            int(cfg.meta_iterations),
            parts.device.type,
            f" | world size {ranks.size} (torch.distributed, {parts.device.type} per rank)"
            if ranks.distributed
            else "",
        )
        best = run_iterations(recipe, parts, cfg, run_dir, tracker, start, best)
        if not ranks.is_main:  # rank 0 alone validates, meta-tests and writes
            exit_code = 0
            return float("nan")
        wandb_on = tracker.wandb_run is not None  # W&B's closing summary would scroll the table away
        try:
            draw_training_curve(parts, cfg, run_dir, tracker)
            outcome = meta_test(
                recipe,
                parts,
                cfg,
                run_dir,
                tracker,
                log_step=max(start, int(cfg.meta_iterations)),
                log_table=not wandb_on,
            )
        except (KeyboardInterrupt, Interrupted) as exc:  # training is saved; a resume redoes the meta-test
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            raise Interrupted(
                signum,
                f"stopped by signal {signum} during the final meta-test (training had ended, "
                f"checkpoints in {ckpt.checkpoint_dir(run_dir)}); resume with: mamlrun resume {shlex.quote(str(run_dir))}",
            ) from None
        tracker.summary({"best/val_metric": best["metric"], "best/iteration": best["iteration"]})
        exit_code = 0
    finally:
        parts.close()
        if tracker is not None:
            tracker.finish(exit_code)
    if wandb_on:  # so the table comes once, after W&B's summary
        table = outcome.table()
        log.info("meta-test on the checkpoint (also in %s)\n%s", run_dir / EVAL_JSON, table)
    return sweep_result(cfg, run_dir, best, outcome.headline)


def draw_training_curve(parts: Parts, cfg: DictConfig, run_dir: Path, tracker: Tracker) -> None:
    """training_curve.png: the run's training metrics (and validation) against meta-iterations."""
    keys = (*parts.curve_keys, *([parts.validation_key] if parts.validation_key else []))
    title = f"{cfg.domain.name}: training ({cfg.order.name} order, meta-batch {cfg.meta_batch})"
    path = training_curve_figure(run_dir / METRICS_FILE, keys, run_dir / TRAINING_CURVE_PNG, title)
    if path is not None:
        tracker.log_figure("train/curve", path, step=int(cfg.meta_iterations))


def resume(parts: Parts, run_dir: Path, state: dict[str, Any] | None) -> tuple[int, dict[str, float]]:
    """Restore `state` (last.pt) into the parts, if any: (start iteration, best validation so far).
    Temporary files of checkpoint writes that were killed are removed first."""
    folder = ckpt.checkpoint_dir(run_dir)
    if state is not None:
        parts.load_state_dict(state, folder / ckpt.LAST)
    for stale in ckpt.remove_partial_writes(folder) if world().is_main else []:  # rank 0 holds the lock
        log.info("removed %s, left by a checkpoint write that was killed", stale)
    if state is None:
        return 0, {"metric": float("nan"), "iteration": -1}
    log.info("resuming from %s at iteration %d", folder / ckpt.LAST, int(state["iteration"]))
    return int(state["iteration"]), dict(state["best"])


def run_iterations(
    recipe: Recipe,
    parts: Parts,
    cfg: DictConfig,
    run_dir: Path,
    tracker: Tracker,
    start: int,
    best: dict[str, float],
) -> dict[str, float]:
    """Meta-iterations start..meta_iterations with their records and checkpoints; returns `best`."""
    total, meta_batch = int(cfg.meta_iterations), int(cfg.meta_batch)
    log_every, val_every, ckpt_every = int(cfg.log_every), int(cfg.eval.every), int(cfg.checkpoint.every)
    folder = ckpt.checkpoint_dir(run_dir)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    ranks = world()
    validating = bool(val_every) and parts.validation_key is not None and ranks.is_main
    if val_every and parts.validation_key is None:
        log.warning(
            "%s has no validation split: validation is off and the meta-test uses last.pt", cfg.domain.name
        )
    sign = 1.0 if parts.higher_is_better else -1.0

    def state(iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            **parts.state_dict(),
            "best": dict(best),
            "config": config_yaml,
            "wandb_run_id": tracker.run_id,
        }

    def save(name: str, iteration: int, loss: float = math.nan) -> None:
        if not parts.all_finite():  # never overwrite a good checkpoint with a diverged one
            raise TrainingDiverged(diverged_message(loss, iteration, folder))
        if ranks.is_main:  # every rank holds the same state; rank 0 writes it
            ckpt.save_checkpoint(folder / name, state(iteration))

    window_start, window_iters = time.perf_counter(), 0
    with (
        GracefulStop(requeues=ranks.is_main) as stop,
        logging_redirect_tqdm(),
        progress_bar(cfg, total, start) as bar,
    ):
        for it in range(start, total):
            at_start = copy.deepcopy(state(it)) if parts.save_on_step_failure else None
            try:
                metrics = recipe.step(parts, it)
            except StepFailed:
                if at_start is not None and ranks.is_main:
                    ckpt.save_checkpoint(folder / ckpt.LAST, at_start)
                raise
            step, window_iters = it + 1, window_iters + 1
            bar.update()
            floats = {k: v for k, v in metrics.items() if isinstance(v, float)}
            check_finite(floats, step, folder)
            if floats:
                bar.set_postfix(short(floats))

            if step % log_every == 0 or step == total:
                values = {k: float(v) for k, v in metrics.items()}
                check_finite(values, step, folder)
                if not parts.all_finite():
                    raise TrainingDiverged(diverged_message(math.nan, step, folder))
                elapsed = time.perf_counter() - window_start
                rates = {
                    "perf/iters_per_s": window_iters / elapsed,
                    "perf/tasks_per_s": window_iters * meta_batch / elapsed,
                }
                tracker.log({**values, **rates}, step=step)
                bar.set_postfix(short(values))
                window_start, window_iters = time.perf_counter(), 0

            if validating and (step % val_every == 0 or step == total):
                value = recipe.validate(parts)
                tracker.log({parts.validation_key: value}, step=step)
                if best["iteration"] < 0 or sign * value > sign * best["metric"]:
                    best = {"metric": value, "iteration": step}
                    save(ckpt.BEST, step)

            # read once (a signal between two reads would stop without a save), and agreed by all ranks
            stopping = ranks.any_stop(stop.requested, parts.device)
            if stopping or step == total or (ckpt_every and step % ckpt_every == 0):
                save(ckpt.LAST, step)
            if stopping:
                stop.agree(stopping)
                ranks.barrier()  # no rank leaves before rank 0's last.pt is written
                raise Interrupted(
                    stopping,
                    f"stopped by signal {stopping} at iteration {step}; "
                    f"checkpoint saved to {folder / ckpt.LAST}; resume with: mamlrun resume {shlex.quote(str(run_dir))}",
                )
    if start >= total:
        log.info("nothing to train (meta_iterations=%d, at iteration %d)", total, start)
        if not (folder / ckpt.LAST).is_file():
            save(ckpt.LAST, start)
    return best


def meta_test(
    recipe: Recipe,
    parts: Parts,
    cfg: DictConfig,
    out_dir: Path,
    tracker: Tracker | None,
    *,
    log_step: int | None = None,
    checkpoint: Path | None = None,
    log_table: bool = True,
) -> MetaTestOutcome:
    """Load the checkpoint (default: the one eval.use picks), run the kind's meta-test, report it.

    `log_step` is the W&B step of the results (the trainer passes its final iteration even when
    best.pt is older; W&B drops steps lower than its last one); default: the checkpoint's iteration.
    """
    path = checkpoint or ckpt.chosen_checkpoint(out_dir, cfg.eval.use)
    state = ckpt.load_checkpoint(path, map_location=parts.device)
    parts.load_weights(state, path)
    outcome = recipe.meta_test(parts, Path(out_dir))
    iteration = int(state["iteration"])
    source = {
        "checkpoint": str(path),
        "iteration": iteration,
        "domain": str(cfg.domain.name),
        "eval_seed": int(cfg.eval.seed),
        "world_size": world().size,  # the processes that trained it (torchrun)
        "test_alpha": parts.alpha_at_test().describe(),  # the step sizes the test tasks adapted with
    }
    step = iteration if log_step is None else log_step
    report(outcome, out_dir, tracker, source=source, log_step=step, log_table=log_table)
    return outcome


def evaluate(
    recipe: Recipe,
    cfg: DictConfig,
    checkpoint: Path,
    out_dir: Path,
    wandb: dict[str, Any] | None,
) -> MetaTestOutcome:
    """`mamlrun eval`: the meta-test alone on `checkpoint`, reported into its own `out_dir` (and its
    own W&B run, `wandb` settings; None: off), never into the training run's files."""
    parts = recipe.build(cfg)
    log.info("evaluating %s into %s", checkpoint, out_dir)
    tracker = Tracker(out_dir, OmegaConf.to_container(cfg, resolve=True), wandb)
    exit_code, wandb_on = 1, tracker.wandb_run is not None
    try:
        outcome = meta_test(
            recipe, parts, cfg, out_dir, tracker, checkpoint=checkpoint, log_table=not wandb_on
        )
        exit_code = 0
    finally:
        parts.close()
        tracker.finish(exit_code)
    if wandb_on:
        log.info("meta-test (also in %s)\n%s", out_dir / EVAL_JSON, outcome.table())
    return outcome


def check_finite(values: Metrics, step: int, folder: Path) -> None:
    """Stop with the last good checkpoint when a metric is NaN or infinite."""
    for value in values.values():
        if not math.isfinite(float(value)):
            raise TrainingDiverged(diverged_message(float(value), step, folder))


def short(values: Metrics, keys: int = 2) -> dict[str, str]:
    """The progress bar's postfix: the first `keys` metrics, names without their namespace."""
    return {name.split("/")[-1]: f"{float(v):.4g}" for name, v in list(values.items())[:keys]}


def diverged_message(loss: float, step: int, folder: Path) -> str:
    last = folder / ckpt.LAST
    kept = f"last good checkpoint kept: {last}" if last.is_file() else "no checkpoint was written before it"
    return (
        f"training diverged: loss={loss} (or a parameter became non-finite) at iteration {step}; {kept}. "
        "Try a smaller optimizer.lr or alpha"
    )
