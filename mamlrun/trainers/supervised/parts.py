"""What a supervised run (regression or classification) is made of, and how it is built.

A kind is its loss (what the inner and outer loops minimise) and its metric (what the meta-test
reports); the parts hold the model, the alpha schedule, the task distribution, the meta-optimizer,
the meta-gradient and the sampling RNG, and know how to save and restore all of it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler

from mamlrun.build import (
    build_alpha,
    build_model,
    build_optimizer,
    build_tasks,
    meta_trained_parameters,
    resolve_compile,
    resolve_device,
    restore_optimizer,
)
from mamlrun.config_checks import check_integers
from mamlrun.domains.base import TaskBatch, TaskDistribution
from mamlrun.evaluation import MetricSpec
from mamlrun.inner_params import describe as describe_inner_params
from mamlrun.inner_params import resolve_inner_params
from mamlrun.maml import Adapts, AlphaSchedule, MetaObjective, alpha_at_test
from mamlrun.models.norm import per_step_buffers, per_step_names
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.errors import ConfigError, UserError, require_int
from mamlrun.runtime.seeding import generator, seed_everything
from mamlrun.trainers.annealing import Annealing, read_annealing
from mamlrun.trainers.lr_schedule import (
    build_lr_schedule,
    describe_lr_schedule,
    read_lr_schedule,
    restore_lr_schedule,
)
from mamlrun.trainers.recipe import all_finite


def accuracy_percent(out: Tensor, y: Tensor) -> Tensor:
    """Accuracy in percent, as the papers report it."""
    return (out.argmax(-1) == y).float().mean() * 100.0


@dataclass(frozen=True)
class SupervisedKind:
    """The loss the inner and outer loops minimise, the metric the meta-test reports, and how to print it."""

    loss: Callable[[Tensor, Tensor], Tensor]
    metric: Callable[[Tensor, Tensor], Tensor]
    spec: MetricSpec


REGRESSION = SupervisedKind(F.mse_loss, F.mse_loss, MetricSpec("mse", higher_is_better=False))
CLASSIFICATION = SupervisedKind(
    F.cross_entropy, accuracy_percent, MetricSpec("acc", higher_is_better=True, unit="%", digits=2)
)

SUPERVISED_INTEGERS = {
    "domain.shots": (1, "K (support examples per task)", False),
    "domain.query": (1, "the query examples per task", False),
    "eval.query": (1, "eval.query (query examples per test task)", False),
    "eval.chunk_size": (1, "eval.chunk_size (tasks per vmapped chunk at test)", False),
}


def check_config(cfg: DictConfig) -> None:
    """The keys only supervised runs have: task sizes and the meta-test's K values."""
    check_integers(cfg, SUPERVISED_INTEGERS)
    read_lr_schedule(cfg)
    shots = cfg.eval.shots
    if not isinstance(shots, ListConfig) or len(shots) == 0:
        raise ConfigError("eval.shots", shots, "give a non-empty list of K values, e.g. [5, 10, 20]")
    for i, k in enumerate(shots):
        require_int(f"eval.shots[{i}]", k, 1, "K (support examples per test task)")


@dataclass(frozen=True)
class TaskSizes:
    """The meta-batch's shape, read from the config once (an OmegaConf lookup per iteration costs
    about 1% of a compiled sinusoid iteration)."""

    meta_batch: int
    shots: int
    query: int


@dataclass
class SupervisedParts:
    """Everything a supervised run (or a re-evaluation) is made of; see `recipe.Parts`."""

    cfg: DictConfig
    device: torch.device
    tasks: TaskDistribution
    model: nn.Module
    alpha: AlphaSchedule
    kind: SupervisedKind
    optimizer: torch.optim.Optimizer
    objective: MetaObjective
    sampler: torch.Generator  # draws the meta-training batches
    sizes: TaskSizes
    adapts: Adapts = None  # the parameters the inner loop moves (inner_params; None: all)
    per_step: frozenset[str] = frozenset()  # per-step BatchNorm parameters (model.per_step_norm)
    annealing: Annealing | None = None  # what changes with the iteration (MAML++)
    warmup: MetaObjective | None = None  # the first-order meta-gradient of order.first_order_iterations
    lr_schedule: LRScheduler | None = None  # lr_schedule=cosine (stepped after every meta-update)
    save_on_step_failure = False  # a step changes nothing before its optimizer step
    curve_keys = ("train/support_loss_pre", "train/loss")  # before adaptation, and the meta-loss after it

    # ------------------------------------------------------------------ the task loss and metric
    def task_loss(self, params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        """The loss of one task (pure: vmap batches it)."""
        return self.kind.loss(torch.func.functional_call(self.model, params, (data[0],)), data[1])

    def task_metric(self, params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return self.kind.metric(torch.func.functional_call(self.model, params, (data[0],)), data[1])

    def alpha_at_test(self) -> AlphaSchedule:
        """The schedule validation and the meta-test adapt with (eval.alpha_values, or the trained one)."""
        return alpha_at_test(self.alpha, self.cfg.eval.get("alpha_values"))

    def objective_at(self, iteration: int) -> MetaObjective:
        """The meta-gradient of iteration `iteration` (first order while order annealing holds it)."""
        if (
            self.warmup is not None
            and self.annealing is not None
            and self.annealing.first_order_at(iteration)
        ):
            return self.warmup
        return self.objective

    def meta_params(self) -> dict[str, dict[str, Tensor]]:
        return {"model": dict(self.model.named_parameters()), "alpha": dict(self.alpha.named_parameters())}

    def modules(self) -> list[nn.Module]:
        return [self.model, self.alpha]

    def groups(self) -> tuple[tuple[str, nn.Module], ...]:
        """The meta-parameters' groups, as `MetaObjective` names them in its gradients."""
        return (("model", self.model), ("alpha", self.alpha))

    # ------------------------------------------------------------------ what the loop asks
    @property
    def validation_key(self) -> str | None:
        """Validation needs validation tasks: a split named val with classes, or no splits at all."""
        splits = self.tasks.splits
        if splits is not None and not splits.get("val"):
            return None
        return f"val/{self.kind.spec.name}_step{self.cfg.eval.steps}"

    @property
    def higher_is_better(self) -> bool:
        return self.kind.spec.higher_is_better

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "alpha": self.alpha.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": ckpt.capture_rng({"sampler": self.sampler}),
        } | ({"lr_schedule": self.lr_schedule.state_dict()} if self.lr_schedule is not None else {})

    def load_state_dict(self, state: Mapping[str, Any], path: Path) -> None:
        self.load_weights(state, path)
        restore_optimizer(
            self.optimizer, state["optimizer"], self.cfg, scheduled=self.lr_schedule is not None
        )
        if self.lr_schedule is not None:
            if "lr_schedule" not in state:
                raise UserError(
                    f"checkpoint {path} holds no lr_schedule state: it was trained with a constant rate"
                )
            restore_lr_schedule(self.lr_schedule, state["lr_schedule"], self.cfg)
        ckpt.restore_rng(state["rng"], {"sampler": self.sampler})

    def load_weights(self, state: Mapping[str, Any], path: Path) -> None:
        ckpt.load_state_strict(self.model, state["model"], "model", path)
        ckpt.load_state_strict(self.alpha, state["alpha"], "alpha schedule", path)

    def all_finite(self) -> bool:
        return all_finite(self.modules())

    def describe(self) -> str:
        cfg = self.cfg
        return (
            f"{type(self.model).__name__}, {sum(p.numel() for p in self.model.parameters())} parameters | "
            f"{self.alpha.describe()} | {cfg.order.name} order | {cfg.inner_steps} inner step(s), "
            f"{cfg.eval.steps} at test | meta-batch {cfg.meta_batch}"
            + describe_inner_params(self.adapts, cfg)
            + (
                f" | per-step BatchNorm ({len(self.per_step)} tensors{self.describe_stats()})"
                if self.per_step
                else ""
            )
            + (self.annealing.describe() if self.annealing is not None else "")
            + describe_lr_schedule(cfg)
            + (" | torch.compile" if self.objective.compiled else "")
        )

    def describe_stats(self) -> str:
        """What validation and the meta-test normalise with, where it is not the batch's statistics."""
        return ", per-step running statistics at test" if per_step_buffers(self.model) else ""

    def close(self) -> None:
        """Nothing to release."""

    # ------------------------------------------------------------------ batches
    def sample(self, num_tasks: int, shots: int, query: int, g: torch.Generator, split: str) -> TaskBatch:
        return self.tasks.sample(num_tasks, shots, query, g, self.device, split)


def build(cfg: DictConfig, kind: SupervisedKind) -> SupervisedParts:
    """The parts of a supervised run of `kind`, checked to fit together (one-line errors if not)."""
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.seed))
    tasks = build_tasks(cfg)
    model = build_model(cfg).to(device)
    alpha = build_alpha(cfg, model).to(device)
    check_fit(cfg, tasks, model, device)
    optimizer = build_optimizer(cfg, [*meta_trained_parameters(cfg, model), *alpha.parameters()])
    sizes = TaskSizes(int(cfg.meta_batch), int(cfg.domain.shots), int(cfg.domain.query))
    adapts = resolve_inner_params(cfg, model)
    parts = SupervisedParts(
        cfg, device, tasks, model, alpha, kind, optimizer, None, generator(cfg.seed, device), sizes, adapts
    )
    parts.per_step = per_step_names(model)
    parts.annealing = read_annealing(cfg)
    parts.lr_schedule = build_lr_schedule(cfg, optimizer)
    objective = functools.partial(
        MetaObjective,
        parts.task_loss,
        alpha,
        int(cfg.inner_steps),
        chunk_size=cfg.chunk_size,
        compile=resolve_compile(cfg.compile, device, int(cfg.meta_iterations)),
        memory=cfg.get("memory", "keep"),
        adapts=adapts,
        per_step=parts.per_step,
    )
    parts.objective = objective(first_order=parts.annealing.first_order)
    if parts.annealing.first_order_iterations and not parts.annealing.first_order:
        parts.warmup = objective(first_order=True)
    return parts


def check_fit(cfg: DictConfig, tasks: TaskDistribution, model: nn.Module, device: torch.device) -> None:
    """Fail fast, in one line, when the tasks cannot be drawn or the model cannot take them."""
    shots, query = int(cfg.domain.shots), int(cfg.domain.query)
    tasks.check(shots, query, "train")
    if cfg.eval.every and (tasks.splits is None or tasks.splits.get("val")):
        tasks.check(shots, int(cfg.eval.query), "val", keys=("domain.shots", "eval.query"))
    for k in cfg.eval.shots:
        tasks.check(int(k), int(cfg.eval.query), "test", keys=("eval.shots", "eval.query"))
    check_support_range(cfg, tasks)
    x = tasks.sample(1, shots, 1, generator(0, device), device).support[0][0]
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"model {cfg.model._target_} cannot take {cfg.domain.name} inputs of shape {tuple(x.shape)} ({first})"
        ) from None
    want = int(cfg.domain.out_features)
    if out.shape[-1] != want:
        raise UserError(
            f"model {cfg.model._target_} gives {out.shape[-1]} outputs per example; domain {cfg.domain.name} needs {want}"
        )


def check_support_range(cfg: DictConfig, tasks: TaskDistribution) -> None:
    """`eval.support_range` needs a domain whose inputs have a range to restrict (the sinusoid)."""
    support_range = cfg.eval.get("support_range")
    if support_range is None:
        return
    restriction = tasks.support_restriction
    if restriction is None:
        raise ConfigError(
            "eval.support_range",
            list(support_range),
            f"domain {cfg.domain.name} has no input range to restrict; only regression (sinusoid) has: use null",
        )
    if not isinstance(support_range, ListConfig | list):
        raise ConfigError("eval.support_range", support_range, "give a [low, high] pair, e.g. [0, 5]")
    restriction.check_support_range(list(support_range))
