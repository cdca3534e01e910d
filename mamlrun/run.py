"""Hydra task functions and the trainer table: the only place that knows about domain kinds.

`train(cfg)` is module-level and picklable so every Hydra launcher (basic, joblib, submitit) and
sweeper (Optuna) can run it. User errors end the job with a one-line message and a non-zero exit
code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamlrun.allocator import tune_allocator
from mamlrun.errors import ConfigError, Interrupted, UserError
from mamlrun.validation import KINDS, validate_run

log = logging.getLogger("mamlrun")

Trainer = Callable[[DictConfig, Path], float]


def _supervised(cfg: DictConfig, run_dir: Path) -> float:
    from mamlrun.trainers import supervised

    return supervised.train(cfg, run_dir)


def _rl(cfg: DictConfig, run_dir: Path) -> float:
    from mamlrun.trainers import rl

    return rl.train(cfg, run_dir)


TRAINERS: dict[str, Trainer] = {"regression": _supervised, "classification": _supervised, "rl": _rl}


def report_and_exit(exc: UserError | Interrupted) -> None:
    """Print the one-line message (and record it in the run's log file), then exit non-zero."""
    level = logging.WARNING if isinstance(exc, Interrupted) else logging.ERROR
    record = log.makeRecord(log.name, level, __file__, 0, "%s", (exc,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):  # the terminal gets the line below instead
            handler.handle(record)
    print(
        f"mamlrun: {'stopped' if isinstance(exc, Interrupted) else 'error'}: {exc}",
        file=sys.stderr,
        flush=True,
    )
    raise SystemExit(exc.exit_code)


def train(cfg: DictConfig) -> float:
    """Meta-train (and meta-test) one configuration; returns the best validation metric."""
    tune_allocator()
    try:
        validate_run(cfg)
        kind = cfg.domain.kind
        if kind not in TRAINERS:
            raise ConfigError("domain.kind", kind, f"choose one of {', '.join(KINDS)}")
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        log.info("run directory: %s", run_dir)
        return TRAINERS[kind](cfg, run_dir)
    except (UserError, Interrupted) as exc:
        report_and_exit(exc)
    except OmegaConfBaseException as exc:  # e.g. an interpolation that points nowhere
        report_and_exit(UserError(f"config: {str(exc).strip().splitlines()[0]}"))
    raise AssertionError("unreachable")


def evaluate_checkpoint(target: Path, overrides: list[str]) -> float:
    """Re-run the meta-test protocol on a checkpoint (or a run dir), with optional overrides."""
    from mamlrun import checkpoint as ckpt

    tune_allocator()
    try:
        path = ckpt.find_checkpoint(Path(target))
        state = ckpt.load_checkpoint(path)
        cfg = OmegaConf.create(state["config"])
        OmegaConf.set_struct(cfg, True)
        apply_overrides(cfg, overrides)
        validate_run(cfg)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        from mamlrun.tracking import Tracker

        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        tracker = Tracker(run_dir, OmegaConf.to_container(cfg, resolve=True), None)
        try:
            if cfg.domain.kind == "rl":
                from mamlrun.trainers.rl import build_rl_parts
                from mamlrun.trainers.rl_eval import rl_meta_test

                parts = build_rl_parts(cfg)
                try:
                    results = [rl_meta_test(cfg, parts, run_dir, tracker, checkpoint=path)]
                finally:
                    parts.sampler.close()
            else:
                from mamlrun.trainers.supervised import build_parts
                from mamlrun.trainers.supervised_eval import supervised_meta_test

                results = supervised_meta_test(cfg, build_parts(cfg), run_dir, tracker, checkpoint=path)
        finally:
            tracker.finish()
        return results[0].final
    except UserError as exc:
        report_and_exit(exc)
    raise AssertionError("unreachable")


def apply_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """Apply `key=value` / `+key=value` overrides with Hydra's own parser (same value syntax)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise UserError(f"bad override: {str(exc).splitlines()[0]}") from None
    for override in parsed:
        key = override.key_or_group
        if override.is_delete() or override.is_sweep_override():
            raise UserError(
                f"override {override.input_line!r}: only key=value and +key=value are allowed here"
            )
        exists = OmegaConf.select(cfg, key, default="<missing>") != "<missing>"
        if not exists and not override.is_add():
            raise UserError(
                f"override {override.input_line!r}: no setting named {key!r} in this run's config"
            )
        OmegaConf.update(cfg, key, override.value(), force_add=override.is_add())
