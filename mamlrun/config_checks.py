"""Checks the run-level settings every kind relies on, before anything is built: a typo costs a
second, not a run.

Each failed check is a `ConfigError` naming the key, the value and what would be valid. Settings of
one kind (supervised shots, RL episodes) are checked by that kind's recipe (`Recipe.check_config`),
and settings of one component (alpha values, sinusoid ranges, layer widths) by its constructor.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mamlrun.maml.adapt import check_memory
from mamlrun.runtime.errors import ConfigError, require_int
from mamlrun.runtime.threads import thread_budget
from mamlrun.trainers.annealing import read_annealing

# key -> (lowest valid value, what the key means, may it be null)
RUN_INTEGERS: dict[str, tuple[int, str, bool]] = {
    "seed": (0, "the seed", False),
    "meta_batch": (1, "the meta-batch (tasks per meta-update)", False),
    "meta_iterations": (0, "the number of meta-iterations", False),
    "inner_steps": (0, "the number of inner (adaptation) steps at meta-training", False),
    "chunk_size": (1, "chunk_size (tasks per vmapped chunk)", True),
    "log_every": (1, "log_every (iterations between log lines)", False),
    "eval.steps": (0, "eval.steps (test-time adaptation steps)", False),
    "eval.tasks": (1, "eval.tasks (meta-test tasks)", False),
    "eval.every": (0, "eval.every (iterations between validations, 0 = never)", False),
    "eval.val_tasks": (1, "eval.val_tasks (validation tasks)", False),
    "eval.seed": (0, "eval.seed (seeds the meta-test tasks)", False),
    "eval.val_seed": (0, "eval.val_seed (seeds the validation tasks)", False),
    "checkpoint.every": (0, "checkpoint.every (iterations between checkpoints, 0 = end only)", False),
}


SEEDS = ("seed", "eval.seed", "eval.val_seed")
SEED_LIMIT = 2**63  # torch's generators take 64 bits; the offsets the code adds to a seed stay below


def select(cfg: DictConfig, key: str) -> Any:
    """The value at a dotted key (KeyError-free for keys the config defines)."""
    value: Any = cfg
    for part in key.split("."):
        value = value[part]
    return value


def check_integers(cfg: DictConfig, table: dict[str, tuple[int, str, bool]]) -> None:
    """Every key of `table` holds an integer >= its lowest valid value."""
    for key, (low, meaning, optional) in table.items():
        require_int(key, select(cfg, key), low, meaning, optional=optional)


def check_run(cfg: DictConfig, kinds: tuple[str, ...]) -> None:
    """Validate the keys the training loop and every recipe rely on; `kinds` are the valid domain kinds."""
    if cfg.domain.kind not in kinds:
        raise ConfigError("domain.kind", cfg.domain.kind, f"choose one of {', '.join(kinds)}")
    check_integers(cfg, RUN_INTEGERS)
    for key in SEEDS:
        if select(cfg, key) >= SEED_LIMIT:
            raise ConfigError(key, select(cfg, key), "a seed must be an integer >= 0 and below 2**63")
    if cfg.eval.use not in ("best", "last"):
        raise ConfigError("eval.use", cfg.eval.use, "choose best or last")
    check_memory(cfg.get("memory", "keep"))  # absent from configs written before the setting existed
    read_annealing(cfg)
    for key, meaning in RUN_BOOLEANS.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ConfigError(key, value, f"{meaning} is true or false")
    thread_budget(cfg.get("threads", "auto"), 1, 1)  # auto or an integer >= 1
    metric = cfg.get("optimized_metric")
    if metric is not None and (not isinstance(metric, str) or not metric.startswith(METRIC_NAMESPACES)):
        raise ConfigError(
            "optimized_metric",
            metric,
            f"name a logged metric ({', '.join(n + '...' for n in METRIC_NAMESPACES)}), best/val_metric, or null",
        )
    timeout = cfg.logger.get("init_timeout", 1.0) if cfg.logger.get("wandb", False) else 1.0
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < math.inf:
        raise ConfigError(
            "logger.init_timeout", timeout, "seconds to reach the W&B server must be a number > 0"
        )
    if cfg.logger.get("wandb", False) and cfg.logger.get("mode") not in WANDB_MODES:
        raise ConfigError(
            "logger.mode",
            cfg.logger.get("mode"),
            f"choose {', '.join(WANDB_MODES)} (it defaults to the WANDB_MODE environment variable)",
        )


# key -> what it switches (absent keys are skipped: logger=none has no logger.wandb)
RUN_BOOLEANS = {
    "order.first_order": "order.first_order (FOMAML)",
    "progress": "progress (the progress bar)",
    "checkpoint.resume": "checkpoint.resume (continue from last.pt)",
    "logger.wandb": "logger.wandb (log to W&B)",
    "domain.tasks.download": "domain.tasks.download (fetch the dataset when it is missing)",
}
METRIC_NAMESPACES = ("train/", "val/", "eval/", "best/", "perf/")  # what runs log (README: W&B metrics)
WANDB_MODES = ("offline", "online", "disabled", "shared", "dryrun", "run")  # what wandb.init takes


# Settings a resumed run may change (README: "Failure, resume and requeue"); every other setting
# defines the run, and a checkpoint written under other values of them is refused.
MAY_CHANGE_ON_RESUME = (
    "meta_iterations",
    "optimized_metric",
    "eval",
    "checkpoint",
    "log_every",
    "progress",
    "logger",
    "optimizer.lr",
    "device",
    "compile",
    "chunk_size",
    "memory",
    "threads",
    "domain.threads",
    "domain.meta_iterations",
    "domain.eval_",  # the domain's meta-test defaults (eval_steps, eval_tasks, ...)
    "domain.tasks.root",
    "domain.tasks.download",
    "domain.tasks.cache_dir",
)


# Settings `mamlrun eval` may override: the meta-test protocol, where it runs and logs, the data's
# location, and a fixed test-time step size. The rest (domain, model, ways, learned alphas) comes
# from the checkpoint, where an override could not take effect.
MAY_CHANGE_ON_EVAL = (
    "eval",
    "logger",
    "device",
    "compile",
    "chunk_size",
    "threads",
    "progress",
    "alpha.value",
    "alpha.values",
    "domain.tasks.root",
    "domain.tasks.download",
    "domain.tasks.cache_dir",
)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def matches(key: str, prefixes: tuple[str, ...]) -> bool:
    """`key` is one of `prefixes` or below one (a prefix ending in "_" matches any key it starts)."""
    return any(key == p or key.startswith(p if p.endswith("_") else p + ".") for p in prefixes)


def may_change_on_resume(key: str) -> bool:
    return matches(key, MAY_CHANGE_ON_RESUME)


def may_change_on_eval(key: str) -> bool:
    return matches(key, MAY_CHANGE_ON_EVAL)


def upgrade_config(cfg: DictConfig) -> None:
    """Give the config of a checkpoint written by an older mamlrun the keys this one reads, with
    the meaning the run had before each key existed, so it resumes and re-evaluates unchanged:
    meta-RL runs before eval.episodes used domain.rollouts episodes per test step; supervised runs
    before eval.support_range drew support points from the whole range; runs before
    eval.alpha_values adapted test tasks with the trained schedule; 2D-navigation runs before
    domain.tasks.goal_region ended episodes within a circle; conv nets before model.zero_head
    meta-trained their head; runs before inner_params adapted every parameter, and before MAML++'s
    settings had no multi-step loss and no order annealing."""
    if not all(isinstance(cfg.get(part), DictConfig) for part in ("domain", "eval", "model")):
        return  # not a run's config: the comparison that follows names what is missing
    if cfg.domain.kind == "rl" and "episodes" not in cfg.eval:
        cfg.eval.episodes = cfg.domain.rollouts
    if cfg.domain.kind != "rl" and "support_range" not in cfg.eval:
        cfg.eval.support_range = None
    if "alpha_values" not in cfg.eval:
        cfg.eval.alpha_values = None
    tasks = cfg.domain.get("tasks")
    if cfg.domain.name == "nav2d" and tasks is not None and "goal_region" not in tasks:
        tasks.goal_region = "circle"
    if str(cfg.model.get("_target_", "")).endswith("Conv4") and "zero_head" not in cfg.model:
        cfg.model.zero_head = False
    if str(cfg.model.get("_target_", "")).endswith("Conv4") and "per_step_norm" not in cfg.model:
        cfg.model.per_step_norm = False
        cfg.model.norm_steps = cfg.inner_steps
    if str(cfg.model.get("_target_", "")).endswith("Conv4") and "norm_stats" not in cfg.model:
        cfg.model.norm_stats = "batch"
    if "inner_params" not in cfg:
        cfg.inner_params = "all"
    if "lr_schedule" not in cfg:
        cfg.lr_schedule = {"name": "constant", "min_lr": 0.0}
    if "multi_step_loss" not in cfg:
        cfg.multi_step_loss = {"enabled": False, "anneal_iterations": 5000}
    if (
        isinstance(cfg.get("order"), DictConfig)
        and not cfg.order.first_order
        and "first_order_iterations" not in cfg.order
    ):
        cfg.order.first_order_iterations = 0


# Differences named first: what tells a user at once that two runs are not the same experiment.
MOST_TELLING = ("domain.name", "domain.kind", "seed", "model._target_", "order", "alpha._target_")


def run_defining_differences(saved: dict[str, Any], now: dict[str, Any], now_label: str = "now") -> list[str]:
    """The run-defining settings whose values differ between a checkpoint's config and this one,
    the most telling first (the domain, the seed, the model), then alphabetically."""
    old, new = flatten(saved), flatten(now)
    keys = [
        key
        for key in set(old) | set(new)
        if not may_change_on_resume(key) and old.get(key, "<absent>") != new.get(key, "<absent>")
    ]
    keys.sort(
        key=lambda k: (
            next((i for i, p in enumerate(MOST_TELLING) if matches(k, (p,))), len(MOST_TELLING)),
            k,
        )
    )
    return [
        f"{key}={old.get(key, '<absent>')!r} in the checkpoint, {new.get(key, '<absent>')!r} {now_label}"
        for key in keys
    ]


def describe_differences(differences: list[str], shown: int = 4) -> str:
    """The first `shown` differences, and how many more there are: one readable line."""
    more = len(differences) - shown
    return "; ".join(differences[:shown]) + (f"; and {more} more" if more > 0 else "")
