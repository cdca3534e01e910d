"""MAML for reinforcement learning (the paper's section 5.3), readable top to bottom.

    build parts -> (resume) -> for each meta-iteration:
        sample tasks -> episodes with theta -> advantages -> adapt (REINFORCE, the functional core)
        -> fresh validation episodes with each adapted policy -> advantages
        -> TRPO on the surrogate through the inner update (or a plain optimizer step)
        -> log / validate (best.pt) / checkpoint (last.pt) / stop on SIGINT-SIGTERM
    -> meta-test (returns after 0..K adaptation steps, eval.json, figures)

MAML-TRPO details every port must get right: the inner loss is -mean(log pi(a|s) A) with A
detached and log-probs summed over action dimensions; validation episodes are fresh episodes of the
adapted policies; the surrogate re-adapts from the same inner episodes with a graph, so its
probability ratio starts at 1; the KL is between the adapted policies (the sampling one vs the one
re-adapted from a candidate theta) on the validation observations, re-adapting per candidate.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.contrib.logging import logging_redirect_tqdm

from mamlrun import checkpoint as ckpt
from mamlrun.build import build_alpha, build_model, construct, resolve_device
from mamlrun.domains.rl.sampler import Episodes, EpisodeSampler, RolloutError, policy_distribution
from mamlrun.errors import ConfigError, Interrupted, TrainingDiverged, UserError
from mamlrun.maml import AlphaSchedule, adapt, inner_step
from mamlrun.models.policy import gaussian_kl, gaussian_log_prob
from mamlrun.progress import progress_bar
from mamlrun.seeding import seed_everything
from mamlrun.stopping import GracefulStop
from mamlrun.tracking import Tracker
from mamlrun.trainers.baseline import advantages
from mamlrun.trainers.trpo import TRPO, trpo_step

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- parts
@dataclass
class RLParts:
    """Everything an RL run (or its re-evaluation) is made of."""

    device: torch.device
    family: Any
    policy: nn.Module
    alpha: AlphaSchedule
    sampler: EpisodeSampler
    gamma: float
    gae_lambda: float
    baseline_reg: float
    normalize: bool

    def params(self) -> dict[str, Tensor]:
        return dict(self.policy.named_parameters())

    def modules(self) -> list[nn.Module]:
        return [self.policy, self.alpha]

    def inner_loss(self, params: dict[str, Tensor], data: dict[str, Tensor]) -> Tensor:
        """REINFORCE for one task: -sum(log pi(a|s) A mask) / sum(mask), A detached."""
        mean, log_std = torch.func.functional_call(self.policy, params, (data["obs"],))
        logp = gaussian_log_prob(mean, log_std, data["actions"])
        mask = data["mask"]
        return -(logp * data["adv"].detach() * mask).sum() / mask.sum().clamp(min=1.0)

    def task_data(self, episodes: Episodes) -> dict[str, Tensor]:
        """What the inner loss needs, per task: observations, actions, advantages, mask."""
        adv = advantages(
            episodes.obs,
            episodes.rewards,
            episodes.mask,
            self.gamma,
            self.gae_lambda,
            self.baseline_reg,
            self.normalize,
        )
        return {"obs": episodes.obs, "actions": episodes.actions, "adv": adv, "mask": episodes.mask}

    def adapt_tasks(self, params: dict[str, Tensor], data: dict[str, Tensor], step: int) -> dict[str, Tensor]:
        """One inner step for every task (no outer graph): params [T, ...] -> [T, ...]."""
        alpha_params = {k: v.detach() for k, v in self.alpha.named_parameters()}

        def one(p: dict[str, Tensor], d: dict[str, Tensor]) -> dict[str, Tensor]:
            return inner_step(
                p, alpha_params, step, d, task_loss=self.inner_loss, alpha=self.alpha, first_order=True
            )[0]

        return torch.func.vmap(one)({k: v.detach() for k, v in params.items()}, data)


def build_rl_parts(cfg: DictConfig) -> RLParts:
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.seed))
    family = construct(cfg.domain.tasks, "domain.tasks")
    policy = build_model(cfg).to(device)
    alpha = build_alpha(cfg, policy).to(device)
    rollouts = cfg.domain.rollouts
    if isinstance(rollouts, bool) or not isinstance(rollouts, int) or rollouts < 1:
        raise ConfigError("domain.rollouts", rollouts, "episodes per task per step must be an integer >= 1")
    check_policy(cfg, policy, family, device)
    return RLParts(
        device,
        family,
        policy,
        alpha,
        EpisodeSampler(family, policy, rollouts, device),
        float(cfg.domain.gamma),
        float(cfg.domain.gae_lambda),
        float(cfg.domain.baseline_reg),
        bool(cfg.domain.normalize_advantages),
    )


def check_policy(cfg: DictConfig, policy: nn.Module, family: Any, device: torch.device) -> None:
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


# ----------------------------------------------------------------------------- the outer objective
def surrogate_terms(
    parts: RLParts,
    steps: int,
    first_order: bool,
    meta: dict[str, dict[str, Tensor]],
    train: dict[str, Tensor],
    valid: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    """One task: re-adapt from its inner episodes (with a graph), then surrogate loss and KL."""
    adapted, _ = adapt(
        meta["model"],
        meta["alpha"],
        train,
        steps,
        task_loss=parts.inner_loss,
        alpha=parts.alpha,
        first_order=first_order,
    )
    mean, log_std = torch.func.functional_call(parts.policy, adapted, (valid["obs"],))
    logp = gaussian_log_prob(mean, log_std, valid["actions"])
    mask = valid["mask"]
    n = mask.sum().clamp(min=1.0)
    ratio = torch.exp(logp - valid["old_logp"])
    loss = -(ratio * valid["adv"] * mask).sum() / n
    kl = (gaussian_kl(valid["old_mean"], valid["old_log_std"], mean, log_std) * mask).sum() / n
    return loss, kl


def make_objective(
    parts: RLParts, steps: int, first_order: bool, train: dict[str, Tensor], valid: dict[str, Tensor]
):
    """objective(list of meta-parameters) -> (mean surrogate loss, mean KL) over the tasks."""
    names = [("model", n) for n, _ in parts.policy.named_parameters()]
    names += [("alpha", n) for n, _ in parts.alpha.named_parameters()]
    per_task = torch.func.vmap(
        functools.partial(surrogate_terms, parts, steps, first_order), in_dims=(None, 0, 0)
    )

    def objective(params: list[Tensor]) -> tuple[Tensor, Tensor]:
        meta: dict[str, dict[str, Tensor]] = {"model": {}, "alpha": {}}
        for (group, name), p in zip(names, params, strict=True):
            meta[group][name] = p
        loss, kl = per_task(meta, train, valid)
        return loss.mean(), kl.mean()

    return objective


def validation_data(parts: RLParts, adapted: dict[str, Tensor], episodes: Episodes) -> dict[str, Tensor]:
    """Validation episodes plus what the sampling (adapted) policy said of them, for ratio and KL."""
    data = parts.task_data(episodes)
    with torch.no_grad():
        mean, log_std = policy_distribution(parts.policy, adapted, episodes.obs, batched=True)
    return data | {"old_logp": episodes.log_probs, "old_mean": mean, "old_log_std": log_std}


# ----------------------------------------------------------------------------- training
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

    def state(self) -> dict[str, Any]:
        return {"tasks": self.tasks.bit_generator.state, "envs": self.envs.bit_generator.state}

    def restore(self, state: dict[str, Any]) -> None:
        self.tasks.bit_generator.state = state["tasks"]
        self.envs.bit_generator.state = state["envs"]


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Meta-train a policy, then meta-test it; returns the best validation return (or the final one)."""
    from mamlrun.trainers.rl_eval import fixed_tasks, returns_after_adaptation, rl_meta_test

    parts = build_rl_parts(cfg)
    device, total = parts.device, int(cfg.meta_iterations)
    steps, first_order = int(cfg.inner_steps), bool(cfg.order.first_order)
    meta_batch = int(cfg.meta_batch)
    outer = construct(cfg.optimizer, "optimizer")
    params = [p for m in parts.modules() for p in m.parameters()]
    if not isinstance(outer, TRPO):
        outer = outer(params=params)  # a torch optimizer factory (_partial_: true)
    rngs = RNGs.from_seed(int(cfg.seed), device)
    val_tasks = fixed_tasks(parts.family, int(cfg.eval.val_tasks), int(cfg.eval.val_seed))
    folder = ckpt.checkpoint_dir(run_dir)
    start, best = 0, {"metric": float("nan"), "iteration": -1}

    last_path = folder / ckpt.LAST
    if cfg.checkpoint.resume and last_path.is_file():
        state = ckpt.load_checkpoint(last_path, map_location=device)
        ckpt.load_state_strict(parts.policy, state["model"], "policy", last_path)
        ckpt.load_state_strict(parts.alpha, state["alpha"], "alpha schedule", last_path)
        if state["optimizer"] and not isinstance(outer, TRPO):
            outer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rng"], {"noise": rngs.noise})
        rngs.restore(state["rl_rng"])
        start, best = int(state["iteration"]), dict(state["best"])
        log.info("resuming from %s at iteration %d", last_path, start)

    tracker = Tracker.for_run(cfg, run_dir, start)
    log.info(
        "%s | %s, %d parameters | %s | %s order | %d inner step(s), %d at test | meta-batch %d x %d episodes "
        "of %d steps | %s outer step | %d iterations | device %s",
        parts.family.name,
        type(parts.policy).__name__,
        sum(p.numel() for p in parts.policy.parameters()),
        parts.alpha.describe(),
        "first" if first_order else "second",
        steps,
        cfg.eval.steps,
        meta_batch,
        parts.sampler.rollouts,
        parts.family.horizon,
        "TRPO" if isinstance(outer, TRPO) else type(outer).__name__,
        total,
        device.type,
    )

    def snapshot(iteration: int) -> dict[str, Any]:
        return {
            "iteration": iteration,
            "model": {k: v.detach().clone() for k, v in parts.policy.state_dict().items()},
            "alpha": {k: v.detach().clone() for k, v in parts.alpha.state_dict().items()},
            "optimizer": {} if isinstance(outer, TRPO) else outer.state_dict(),
            "rng": ckpt.capture_rng({"noise": rngs.noise}),
            "rl_rng": rngs.state(),
            "best": dict(best),
            "config": OmegaConf.to_yaml(cfg, resolve=True),
            "wandb_run_id": tracker.run_id,
        }

    exit_code = 1
    try:
        with GracefulStop() as stop, logging_redirect_tqdm(), progress_bar(cfg, total, start) as bar:
            for it in range(start, total):
                at_start = snapshot(it)  # an environment failure mid-iteration saves this, then stops
                try:
                    t0 = time.perf_counter()
                    tasks = parts.family.sample_tasks(meta_batch, rngs.tasks)
                    theta = {k: v.detach() for k, v in parts.params().items()}
                    train_eps = parts.sampler.sample(tasks, theta, False, rngs.envs, rngs.noise)
                    train_data = parts.task_data(train_eps)
                    adapted = {k: v.expand(meta_batch, *v.shape) for k, v in theta.items()}
                    for k in range(steps):
                        adapted = parts.adapt_tasks(adapted, train_data, k)
                    valid_eps = parts.sampler.sample(tasks, adapted, True, rngs.envs, rngs.noise)
                    valid_data = validation_data(parts, adapted, valid_eps)
                    t1 = time.perf_counter()
                except RolloutError:
                    ckpt.save_checkpoint(folder / ckpt.LAST, at_start)
                    raise
                objective = make_objective(parts, steps, first_order, train_data, valid_data)
                if isinstance(outer, TRPO):
                    info = trpo_step(params, objective, outer)
                    update = {
                        "train/surrogate_before": info.loss_before,
                        "train/surrogate_after": info.loss_after,
                        "train/kl": info.kl_after,
                        "train/backtracks": info.backtracks,
                        "train/step_accepted": float(info.accepted),
                    }
                else:
                    outer.zero_grad(set_to_none=True)
                    loss, kl = objective(params)
                    loss.backward()
                    outer.step()
                    update = {"train/surrogate_before": float(loss), "train/kl": float(kl)}
                t2 = time.perf_counter()
                step = it + 1
                bar.update()

                pre, post = float(train_eps.returns().mean()), float(valid_eps.returns().mean())
                if not (
                    np.isfinite(pre)
                    and np.isfinite(post)
                    and all(bool(torch.isfinite(p).all()) for p in params)
                ):
                    raise TrainingDiverged(
                        f"training diverged at iteration {step} (return or parameters not finite); "
                        f"last good checkpoint: {last_path}"
                    )
                env_steps = train_eps.env_steps + valid_eps.env_steps
                if step % int(cfg.log_every) == 0 or step == total:
                    tracker.log(
                        {
                            "train/return_pre": pre,
                            "train/return_post": post,
                            **update,
                            "perf/sample_s": t1 - t0,
                            "perf/update_s": t2 - t1,
                            "perf/env_steps_per_s": env_steps / max(t1 - t0, 1e-9),
                        },
                        step=step,
                    )
                bar.set_postfix(pre=f"{pre:.1f}", post=f"{post:.1f}")

                every = int(cfg.eval.every)
                if every and (step % every == 0 or step == total):
                    curve = returns_after_adaptation(parts, val_tasks, 1, cfg, seed=int(cfg.eval.val_seed))
                    value = float(curve[:, -1].mean())
                    tracker.log({"val/return_step1": value}, step=step)
                    if best["iteration"] < 0 or value > best["metric"]:
                        best = {"metric": value, "iteration": step}
                        ckpt.save_checkpoint(folder / ckpt.BEST, snapshot(step))
                if (
                    stop.requested
                    or step == total
                    or (int(cfg.checkpoint.every) and step % int(cfg.checkpoint.every) == 0)
                ):
                    ckpt.save_checkpoint(last_path, snapshot(step))
                if stop.requested:
                    raise Interrupted(
                        stop.requested,
                        f"stopped by signal {stop.requested} at iteration {step}; "
                        f"checkpoint saved to {last_path}; run again in {run_dir} to resume",
                    )
        if start >= total and not last_path.is_file():
            ckpt.save_checkpoint(last_path, snapshot(start))
        result = rl_meta_test(cfg, parts, run_dir, tracker, log_step=max(start, total))
        exit_code = 0
    finally:
        parts.sampler.close()
        tracker.finish(exit_code)
    return float(best["metric"]) if best["iteration"] >= 0 else result.mean[min(1, len(result.mean) - 1)]
