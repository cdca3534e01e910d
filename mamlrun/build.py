"""Builds a run's parts from the config: device, model, alpha schedule, task distribution, optimizer.

Leaf objects come from `hydra.utils.instantiate` on their `_target_`, so a user's own module works
with `model._target_=my.pkg.Net`. Errors raised by a constructor for a bad setting surface as the
original one-line `UserError`, not wrapped in Hydra's instantiation traceback.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterable
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import InterpolationKeyError
from torch import nn

from mamlrun.maml import AlphaSchedule, alpha_at_test
from mamlrun.models.base import not_meta_trained
from mamlrun.runtime.distributed import world
from mamlrun.runtime.errors import ConfigError, UserError

log = logging.getLogger(__name__)

# compile=auto turns torch.compile on only for runs long enough to repay its start-up cost
COMPILE_MIN_ITERATIONS = 2000


def construct(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`instantiate(node, **kwargs)`, re-raising our own one-line errors unwrapped."""
    try:
        return instantiate(node, **kwargs)
    except InterpolationKeyError as exc:
        missing = str(exc).split("'")[1] if "'" in str(exc) else str(exc)
        raise UserError(
            f"{key}: needs {missing}, which this configuration lacks (the {key} does not fit the chosen domain)"
        ) from None
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
        lines = [line.strip() for line in str(cause or exc).splitlines() if line.strip()]
        why = " ".join(line for line in lines if not line.startswith("full_key:"))  # Hydra adds the key
        if cause is None:  # Hydra's own refusal (e.g. a blocklisted target), not the target's error
            why = f"Hydra refuses to instantiate it: {why}"
        raise UserError(f"{key}: could not build {target}: {why or exc}") from None


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda` without a GPU is an error; under torchrun
    `cuda` is each rank's own GPU (LOCAL_RANK)."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                "device", name, "no CUDA device is available here; use device=cpu or device=auto"
            )
        if name == "cuda" and world().distributed:  # under torchrun each rank takes its node-local GPU
            return torch.device(f"cuda:{world().local_rank}")
        return torch.device(name)
    raise ConfigError("device", name, "choose auto, cpu, cuda or cuda:N")


def resolve_compile(setting: Any, device: torch.device, iterations: int) -> bool:
    """compile: true/false, or auto (long runs with a C++ compiler on CPU, or any CUDA run)."""
    if isinstance(setting, bool):
        return setting
    if str(setting) != "auto":
        raise ConfigError("compile", setting, "choose auto, true or false")
    if iterations < COMPILE_MIN_ITERATIONS:
        return False
    return device.type == "cuda" or shutil.which("c++") is not None or shutil.which("g++") is not None


def build_model(cfg: DictConfig) -> nn.Module:
    model = construct(cfg.model, "model")
    if not isinstance(model, nn.Module):
        raise UserError(
            f"model._target_={cfg.model._target_} built a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def build_alpha(cfg: DictConfig, model: nn.Module) -> AlphaSchedule:
    """The trained schedule; a bad test-time list (eval.alpha_values) fails here, not at validation."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    alpha = construct(cfg.alpha, "alpha", param_shapes=shapes, num_steps=int(cfg.inner_steps))
    if not isinstance(alpha, AlphaSchedule):
        raise UserError(f"alpha._target_={cfg.alpha._target_} is not a mamlrun.maml.AlphaSchedule")
    alpha_at_test(alpha, cfg.eval.get("alpha_values"))
    return alpha


def meta_trained_parameters(cfg: DictConfig, model: nn.Module) -> list[nn.Parameter]:
    """The model's parameters the outer step trains: all but those the model keeps at their init
    (`model.zero_head`: the head, which then learns only in the inner loop, so it needs one)."""
    frozen = set(not_meta_trained(model))
    if frozen and int(cfg.inner_steps) < 1:
        raise ConfigError(
            "model.zero_head",
            True,
            f"a zero head learns only in the inner loop, and inner_steps={cfg.inner_steps} "
            "(experiment=pretrain has none): use model.zero_head=false or inner_steps >= 1",
        )
    return [p for name, p in model.named_parameters() if name not in frozen]


def build_tasks(cfg: DictConfig) -> Any:
    return construct(cfg.domain.tasks, "domain.tasks")


def check_learning_rate(cfg: DictConfig) -> None:
    """optimizer.lr, where the optimizer has one, is a finite number > 0 (torch takes inf and 0)."""
    lr = cfg.optimizer.get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf):
        raise ConfigError("optimizer.lr", lr, "the meta learning rate must be a finite number > 0")


def build_optimizer(cfg: DictConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    factory = construct(cfg.optimizer, "optimizer")
    if not callable(factory):
        raise UserError(
            f"optimizer._target_={cfg.optimizer._target_} is the meta-RL outer step (optimizer=trpo); "
            f"domain {cfg.domain.name} takes a torch optimizer: optimizer=adam or optimizer=sgd"
        )
    check_learning_rate(cfg)
    try:
        return factory(params=list(params))
    except (ValueError, TypeError) as exc:
        raise UserError(f"optimizer: {exc}") from None


def restore_optimizer(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], cfg: DictConfig, scheduled: bool = False
) -> None:
    """Load a checkpoint's optimizer state, then apply the configured optimizer.lr: a run resumed
    with a new learning rate (the divergence message's advice) uses it, and the log says so.
    `scheduled`: an lr schedule sets the rate (`lr_schedule.restore_lr_schedule` applies a new one)."""
    optimizer.load_state_dict(state)
    lr = cfg.optimizer.get("lr")
    if lr is None or scheduled:
        return
    old = {group["lr"] for group in optimizer.param_groups}
    if old != {float(lr)}:
        log.info(
            "optimizer.lr=%g replaces the checkpoint's %s",
            float(lr),
            ", ".join(f"{v:g}" for v in sorted(old)),
        )
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
