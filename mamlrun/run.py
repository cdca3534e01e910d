"""Hydra task functions and the recipe table: the only place that knows about domain kinds.

`train(cfg)` is module-level and picklable so every Hydra launcher (basic, joblib, submitit) and
sweeper (Optuna) can run it. User errors end the job with a one-line message and a non-zero exit
code, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamlrun.config_checks import check_run
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.errors import Interrupted, UserError
from mamlrun.runtime.malloc import tune_malloc
from mamlrun.runtime.run_record import HeldLogFile, write_hydra_files
from mamlrun.trainers import loop
from mamlrun.trainers.recipe import Recipe
from mamlrun.trainers.rl import RL_RECIPE
from mamlrun.trainers.supervised import CLASSIFICATION_RECIPE, REGRESSION_RECIPE

log = logging.getLogger("mamlrun")

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
    """Meta-train (and meta-test) one configuration; returns the best validation metric.

    Nothing is written into the run directory (Hydra's `.hydra/` record, the log file) until the
    command is accepted as a valid start or continuation of the run there.
    """
    tune_malloc()
    held = HeldLogFile()
    try:
        recipe = recipe_for(cfg)
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)

        def accept() -> None:
            held.accept()
            write_hydra_files(run_dir, cfg, hydra_cfg)
            log.info("run directory: %s", run_dir)

        return loop.train(recipe, cfg, run_dir, on_accept=accept)
    except (UserError, Interrupted) as exc:
        report_and_exit(exc)
    except OmegaConfBaseException as exc:  # e.g. an interpolation that points nowhere
        report_and_exit(UserError(f"config: {str(exc).strip().splitlines()[0]}"))
    finally:
        held.release()
    raise AssertionError("unreachable")


def train_in(cfg: DictConfig, run_dir: Path) -> float:
    """Train a composed config in `run_dir` without Hydra's app (tests, notebooks); errors raise."""
    return loop.train(recipe_for(cfg), cfg, Path(run_dir))


def evaluate_checkpoint(target: Path, overrides: list[str]) -> float:
    """Re-run the meta-test protocol on a checkpoint (or a run dir), with optional overrides."""
    tune_malloc()
    try:
        path = ckpt.find_checkpoint(Path(target))
        state = ckpt.load_checkpoint(path)
        cfg = OmegaConf.create(state["config"])
        upgrade_config(cfg)
        OmegaConf.set_struct(cfg, True)
        apply_overrides(cfg, overrides)
        recipe = recipe_for(cfg)
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        return loop.evaluate(recipe, cfg, path, run_dir).headline
    except UserError as exc:
        report_and_exit(exc)
    except OmegaConfBaseException as exc:  # e.g. a key the checkpoint's config lacks
        report_and_exit(UserError(f"config: {str(exc).strip().splitlines()[0]}"))
    raise AssertionError("unreachable")


def upgrade_config(cfg: DictConfig) -> None:
    """Give the config of a checkpoint written by an older mamlrun the keys this one reads
    (meta-RL runs before eval.episodes existed used domain.rollouts episodes per test step)."""
    if cfg.domain.kind == "rl" and "episodes" not in cfg.eval:
        cfg.eval.episodes = cfg.domain.rollouts


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
