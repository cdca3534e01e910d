"""Checks the run-level settings every kind relies on, before anything is built: a typo costs a
second, not a run.

Each failed check is a `ConfigError` naming the key, the value and what would be valid. Settings of
one kind (supervised shots, RL episodes) are checked by that kind's recipe (`Recipe.check_config`),
and settings of one component (alpha values, sinusoid ranges, layer widths) by its constructor.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from mamlrun.runtime.errors import ConfigError, require_int

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
    "checkpoint.every": (0, "checkpoint.every (iterations between checkpoints, 0 = end only)", False),
}


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
    if cfg.eval.use not in ("best", "last"):
        raise ConfigError("eval.use", cfg.eval.use, "choose best or last")


# Settings a resumed run may change (README: "Failure, resume and requeue"); every other setting
# defines the run, and a checkpoint written under other values of them is refused.
MAY_CHANGE_ON_RESUME = (
    "meta_iterations",
    "eval",
    "checkpoint",
    "log_every",
    "progress",
    "logger",
    "optimizer.lr",
    "device",
    "compile",
    "chunk_size",
    "domain.meta_iterations",
    "domain.eval_",  # the domain's meta-test defaults (eval_steps, eval_tasks, ...)
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


def may_change_on_resume(key: str) -> bool:
    return any(key == p or key.startswith(p if p.endswith("_") else p + ".") for p in MAY_CHANGE_ON_RESUME)


def run_defining_differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The run-defining settings whose values differ between a checkpoint's config and this one."""
    old, new = flatten(saved), flatten(now)
    differences = []
    for key in sorted(set(old) | set(new)):
        if may_change_on_resume(key) or old.get(key, "<absent>") == new.get(key, "<absent>"):
            continue
        differences.append(
            f"{key}={old.get(key, '<absent>')!r} in the checkpoint, {new.get(key, '<absent>')!r} now"
        )
    return differences
