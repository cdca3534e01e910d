"""Checks run-level settings before anything is built, so a typo costs a second, not a run.

Each failed check is a `ConfigError` naming the key, the value and what would be valid.
Settings that belong to one component (alpha values, sinusoid ranges, layer widths) are checked
by that component's constructor instead.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig

from mamlrun.errors import ConfigError

KINDS = ("regression", "classification", "rl")


def _int_at_least(cfg: DictConfig, key: str, low: int, meaning: str) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, value, f"{meaning} must be an integer >= {low}")


def _optional_int_at_least(cfg: DictConfig, key: str, low: int, meaning: str) -> None:
    value: Any = cfg
    for part in key.split("."):
        value = value[part]
    if value is not None:
        _int_at_least(cfg, key, low, meaning + " (or null)")


def validate_run(cfg: DictConfig) -> None:
    """Validate the keys every trainer relies on."""
    kind = cfg.domain.kind
    if kind not in KINDS:
        raise ConfigError("domain.kind", kind, f"choose one of {', '.join(KINDS)}")
    _int_at_least(cfg, "seed", 0, "the seed")
    _int_at_least(cfg, "meta_batch", 1, "the meta-batch (tasks per meta-update)")
    _int_at_least(cfg, "meta_iterations", 0, "the number of meta-iterations")
    _int_at_least(cfg, "inner_steps", 0, "the number of inner (adaptation) steps at meta-training")
    _optional_int_at_least(cfg, "chunk_size", 1, "chunk_size (tasks per vmapped chunk)")
    _int_at_least(cfg, "log_every", 1, "log_every (iterations between log lines)")
    _int_at_least(cfg, "eval.steps", 0, "eval.steps (test-time adaptation steps)")
    _int_at_least(cfg, "eval.tasks", 1, "eval.tasks (meta-test tasks)")
    _int_at_least(cfg, "eval.every", 0, "eval.every (iterations between validations, 0 = never)")
    _int_at_least(cfg, "eval.val_tasks", 1, "eval.val_tasks (validation tasks)")
    _int_at_least(cfg, "eval.chunk_size", 1, "eval.chunk_size (tasks per vmapped chunk at test)")
    _int_at_least(
        cfg, "checkpoint.every", 0, "checkpoint.every (iterations between checkpoints, 0 = end only)"
    )
    if cfg.eval.use not in ("best", "last"):
        raise ConfigError("eval.use", cfg.eval.use, "choose best or last")
    if kind != "rl":
        _int_at_least(cfg, "domain.shots", 1, "K (support examples per task)")
        _int_at_least(cfg, "domain.query", 1, "the query examples per task")
        _int_at_least(cfg, "eval.query", 1, "eval.query (query examples per test task)")
        shots = cfg.eval.shots
        if not isinstance(shots, ListConfig) or len(shots) == 0:
            raise ConfigError("eval.shots", shots, "give a non-empty list of K values, e.g. [5, 10, 20]")
        for i, k in enumerate(shots):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ConfigError(
                    f"eval.shots[{i}]", k, "K (support examples per test task) must be an integer >= 1"
                )
