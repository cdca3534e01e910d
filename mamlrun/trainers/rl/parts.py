"""What a meta-RL run is made of, and how it is built: the policy, its alpha schedule, the task
family, the episode sampler, the outer optimizer (TRPO or a torch optimizer) and the run's RNGs.

The inner loss is REINFORCE, -mean(log pi(a|s) A) with A detached and log-probs summed over action
dimensions; advantages come from a linear feature baseline fitted per task and GAE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from mamlrun.build import (
    build_alpha,
    build_model,
    check_learning_rate,
    construct,
    resolve_device,
    restore_optimizer,
)
from mamlrun.domains.rl.base import SUCCESS, TaskFamily
from mamlrun.domains.rl.sampler import Episodes, EpisodeSampler
from mamlrun.inner_params import describe as describe_inner_params
from mamlrun.inner_params import resolve_inner_params
from mamlrun.maml import Adapts, AlphaSchedule, alpha_at_test, inner_step
from mamlrun.models.policy import gaussian_log_prob
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.errors import ConfigError, UserError, require_int
from mamlrun.runtime.seeding import seed_everything
from mamlrun.trainers.annealing import Annealing, read_annealing
from mamlrun.trainers.lr_schedule import read_lr_schedule
from mamlrun.trainers.recipe import all_finite
from mamlrun.trainers.rl.baseline import advantages
from mamlrun.trainers.rl.trpo import TRPO


def check_config(cfg: DictConfig) -> None:
    """The keys only RL runs have."""
    require_int("domain.rollouts", cfg.domain.rollouts, 1, "episodes per task per step")
    require_int("eval.episodes", cfg.eval.episodes, 1, "eval.episodes (episodes per test task and step)")
    read_lr_schedule(cfg, has_lr=False)
    if read_annealing(cfg).multi_step:
        raise ConfigError(
            "multi_step_loss.enabled",
            True,
            "MAML-TRPO's outer terms (surrogate and KL) are those of the last inner step's policies; "
            "the multi-step loss is for supervised domains: use multi_step_loss.enabled=false",
        )


@dataclass
class RNGs:
    """The RL run's own generators: tasks, environment seeds, action noise."""

    tasks: np.random.Generator
    envs: np.random.Generator
    noise: torch.Generator

    @classmethod
    def from_seed(cls, seed: int, device: torch.device) -> RNGs:
        return cls(
            np.random.default_rng(seed),
            np.random.default_rng(seed + 1),
            torch.Generator(device=device).manual_seed(seed),
        )


@dataclass
class RLParts:
    """Everything an RL run (or its re-evaluation) is made of; see `recipe.Parts`."""

    cfg: DictConfig
    device: torch.device
    tasks: TaskFamily
    policy: nn.Module
    alpha: AlphaSchedule
    sampler: EpisodeSampler
    outer: TRPO | torch.optim.Optimizer
    rngs: RNGs
    adapts: Adapts = None  # the parameters the inner loop moves (inner_params; None: all)
    annealing: Annealing | None = None  # what changes with the iteration (order.first_order_iterations)
    higher_is_better = True  # returns
    save_on_step_failure = True  # an environment may raise mid-iteration, after the RNGs moved

    def params(self) -> dict[str, Tensor]:
        return dict(self.policy.named_parameters())

    def modules(self) -> list[nn.Module]:
        return [self.policy, self.alpha]

    # ------------------------------------------------------------------ the inner loop
    def inner_loss(self, params: dict[str, Tensor], data: dict[str, Tensor]) -> Tensor:
        """REINFORCE for one task: -sum(log pi(a|s) A mask) / sum(mask), A detached."""
        mean, log_std = torch.func.functional_call(self.policy, params, (data["obs"],))
        logp = gaussian_log_prob(mean, log_std, data["actions"])
        mask = data["mask"]
        return -(logp * data["adv"].detach() * mask).sum() / mask.sum().clamp(min=1.0)

    def task_data(self, episodes: Episodes) -> dict[str, Tensor]:
        """What the inner loss needs, per task: observations, actions, advantages, mask."""
        domain = self.cfg.domain
        adv = advantages(
            episodes.obs,
            episodes.rewards,
            episodes.mask,
            float(domain.gamma),
            float(domain.gae_lambda),
            float(domain.baseline_reg),
            bool(domain.normalize_advantages),
        )
        return {"obs": episodes.obs, "actions": episodes.actions, "adv": adv, "mask": episodes.mask}

    def adapt_tasks(
        self,
        params: dict[str, Tensor],
        data: dict[str, Tensor],
        step: int,
        alpha: AlphaSchedule | None = None,
    ) -> dict[str, Tensor]:
        """One inner step for every task (no outer graph): params [T, ...] -> [T, ...].

        `alpha`: the schedule to step with (the meta-test's `alpha_at_test()`); the trained one if None.
        """
        alpha = self.alpha if alpha is None else alpha
        alpha_params = {k: v.detach() for k, v in alpha.named_parameters()}

        def one(p: dict[str, Tensor], d: dict[str, Tensor]) -> dict[str, Tensor]:
            return inner_step(
                p,
                alpha_params,
                step,
                d,
                task_loss=self.inner_loss,
                alpha=alpha,
                first_order=True,
                adapts=self.adapts,
            )[0]

        return torch.func.vmap(one)({k: v.detach() for k, v in params.items()}, data)

    def alpha_at_test(self) -> AlphaSchedule:
        """The schedule validation and the meta-test adapt with (eval.alpha_values, or the trained one)."""
        return alpha_at_test(self.alpha, self.cfg.eval.get("alpha_values"))

    # ------------------------------------------------------------------ what the loop asks
    @property
    def reports_success(self) -> bool:
        """Whether the family scores episodes by success (Meta-World): success rates join the returns."""
        return SUCCESS in self.tasks.signals

    @property
    def select_by(self) -> str:
        """What validation measures and best.pt maximises: return, or success (eval.select_by)."""
        return str(self.cfg.eval.get("select_by", "return"))

    @property
    def validation_key(self) -> str:
        return f"val/{self.select_by}_step1"

    @property
    def curve_keys(self) -> tuple[str, ...]:
        """training_curve.png's keys, before and after adaptation, in validation's units: success
        rates when validation selects by success, else returns."""
        return (f"train/{self.select_by}_pre", f"train/{self.select_by}_post")

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.policy.state_dict(),
            "alpha": self.alpha.state_dict(),
            "optimizer": {} if isinstance(self.outer, TRPO) else self.outer.state_dict(),
            "rng": ckpt.capture_rng({"noise": self.rngs.noise}),
            "rl_rng": {
                "tasks": self.rngs.tasks.bit_generator.state,
                "envs": self.rngs.envs.bit_generator.state,
            },
        }

    def load_state_dict(self, state: Mapping[str, Any], path: Path) -> None:
        self.load_weights(state, path)
        if state["optimizer"] and not isinstance(self.outer, TRPO):
            restore_optimizer(self.outer, state["optimizer"], self.cfg)
        ckpt.restore_rng(state["rng"], {"noise": self.rngs.noise})
        self.rngs.tasks.bit_generator.state = state["rl_rng"]["tasks"]
        self.rngs.envs.bit_generator.state = state["rl_rng"]["envs"]

    def load_weights(self, state: Mapping[str, Any], path: Path) -> None:
        ckpt.load_state_strict(self.policy, state["model"], "policy", path)
        ckpt.load_state_strict(self.alpha, state["alpha"], "alpha schedule", path)

    def all_finite(self) -> bool:
        return all_finite(self.modules())

    def describe(self) -> str:
        cfg = self.cfg
        outer = "TRPO" if isinstance(self.outer, TRPO) else type(self.outer).__name__
        return (
            f"{self.tasks.name} | {type(self.policy).__name__}, "
            f"{sum(p.numel() for p in self.policy.parameters())} parameters | {self.alpha.describe()} | "
            f"{cfg.order.name} order | {cfg.inner_steps} inner step(s), {cfg.eval.steps} at test | "
            f"meta-batch {cfg.meta_batch} x {self.sampler.rollouts} episodes of {self.tasks.horizon} steps | "
            f"{outer} outer step"
            + describe_inner_params(self.adapts, cfg)
            + (self.annealing.describe() if self.annealing is not None else "")
        )

    def close(self) -> None:
        self.sampler.close()


def build(cfg: DictConfig) -> RLParts:
    """The parts of a meta-RL run, checked to fit together (one-line errors if not)."""
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.seed))
    family = construct(cfg.domain.tasks, "domain.tasks")
    policy = build_model(cfg).to(device)
    alpha = build_alpha(cfg, policy).to(device)
    check_policy(cfg, policy, family, device)
    outer = construct(cfg.optimizer, "optimizer")
    if not isinstance(outer, TRPO):  # a torch optimizer factory (_partial_: true)
        check_learning_rate(cfg)
        outer = outer(params=[p for m in (policy, alpha) for p in m.parameters()])
    check_select_by(cfg, family)
    sampler = EpisodeSampler(family, policy, int(cfg.domain.rollouts), device)
    adapts = resolve_inner_params(cfg, policy)
    return RLParts(
        cfg,
        device,
        family,
        policy,
        alpha,
        sampler,
        outer,
        RNGs.from_seed(int(cfg.seed), device),
        adapts,
        read_annealing(cfg),
    )


SELECT_BY = ("return", SUCCESS)


def check_select_by(cfg: DictConfig, family: TaskFamily) -> None:
    """eval.select_by: return, or success for a family that reports it."""
    value = cfg.eval.get("select_by", "return")
    if value not in SELECT_BY:
        raise ConfigError("eval.select_by", value, f"choose {' or '.join(SELECT_BY)}")
    if value == SUCCESS and SUCCESS not in family.signals:
        raise ConfigError(
            "eval.select_by",
            value,
            f"{family.name} reports no success (Meta-World does): use eval.select_by=return",
        )


def check_policy(cfg: DictConfig, policy: nn.Module, family: TaskFamily, device: torch.device) -> None:
    """The policy must map the family's observations to a Gaussian over its actions."""
    try:
        with torch.no_grad():
            out = policy(torch.zeros(1, family.obs_dim, device=device))
    except (RuntimeError, ValueError) as exc:
        raise UserError(
            f"model {cfg.model._target_} cannot take {family.name} observations of size "
            f"{family.obs_dim} ({str(exc).splitlines()[0]})"
        ) from None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise UserError(
            f"model {cfg.model._target_} must return (mean, log_std), like mamlrun.models.GaussianPolicy"
        )
    if out[0].shape[-1] != family.act_dim:
        raise UserError(
            f"model {cfg.model._target_} outputs {out[0].shape[-1]} action dimensions; "
            f"{family.name} has {family.act_dim} (set model.act_dim={family.act_dim})"
        )
