"""MAML for supervised tasks (regression and classification), readable top to bottom.

build parts -> (resume) -> for each meta-iteration:
    sample a meta-batch on the device -> meta-gradient (vmapped, chunked) -> optimizer step
    -> log / validate (best.pt) / checkpoint (last.pt) / stop on SIGINT-SIGTERM
-> meta-test (eval.json, table, figures)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.contrib.logging import logging_redirect_tqdm

from mamlrun import checkpoint as ckpt
from mamlrun.build import (
    build_alpha,
    build_model,
    build_optimizer,
    build_tasks,
    resolve_compile,
    resolve_device,
)
from mamlrun.errors import Interrupted, TrainingDiverged, UserError
from mamlrun.evaluation import format_table, supervised_curves
from mamlrun.maml import AlphaSchedule, MetaObjective, TaskLoss
from mamlrun.progress import progress_bar
from mamlrun.seeding import generator, seed_everything
from mamlrun.stopping import GracefulStop
from mamlrun.tracking import Tracker
from mamlrun.trainers.supervised_eval import supervised_meta_test

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- what a kind means
@dataclass(frozen=True)
class SupervisedKind:
    """The loss the inner and outer loops minimise and the metric the meta-test reports."""

    metric_name: str
    higher_is_better: bool

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out, y) if self.metric_name == "mse" else F.cross_entropy(out, y)

    def metric(self, out: Tensor, y: Tensor) -> Tensor:
        """MSE, or accuracy in percent (as the papers report it)."""
        if self.metric_name == "mse":
            return F.mse_loss(out, y)
        return (out.argmax(-1) == y).float().mean() * 100.0


KINDS = {
    "regression": SupervisedKind(metric_name="mse", higher_is_better=False),
    "classification": SupervisedKind(metric_name="acc", higher_is_better=True),
}


@dataclass
class Parts:
    """Everything a supervised run (or a re-evaluation) is made of."""

    device: torch.device
    tasks: Any
    model: nn.Module
    alpha: AlphaSchedule
    kind: SupervisedKind
    task_loss: TaskLoss
    metric: TaskLoss

    def meta_params(self) -> dict[str, dict[str, Tensor]]:
        return {"model": dict(self.model.named_parameters()), "alpha": dict(self.alpha.named_parameters())}

    def modules(self) -> list[nn.Module]:
        return [self.model, self.alpha]


def build_parts(cfg: DictConfig) -> Parts:
    device = resolve_device(cfg.device)
    seed_everything(int(cfg.seed))
    tasks = build_tasks(cfg)
    model = build_model(cfg).to(device)
    alpha = build_alpha(cfg, model).to(device)
    kind = KINDS[cfg.domain.kind]

    def task_loss(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return kind.loss(torch.func.functional_call(model, params, (data[0],)), data[1])

    def metric(params: dict[str, Tensor], data: tuple[Tensor, Tensor]) -> Tensor:
        return kind.metric(torch.func.functional_call(model, params, (data[0],)), data[1])

    parts = Parts(device, tasks, model, alpha, kind, task_loss, metric)
    check_fit(cfg, parts)
    return parts


def has_validation(cfg: DictConfig, parts: Parts) -> bool:
    """Validation runs when eval.every > 0 and the task distribution has validation tasks."""
    splits = getattr(parts.tasks, "splits", None)
    return bool(cfg.eval.every) and (splits is None or bool(splits.get("val")))


def check_fit(cfg: DictConfig, parts: Parts) -> None:
    """Fail fast, in one line, when the tasks cannot be drawn or the model cannot take them."""
    shots, query = int(cfg.domain.shots), int(cfg.domain.query)
    if hasattr(parts.tasks, "check"):
        parts.tasks.check(shots, query, "train")
        if has_validation(cfg, parts):
            parts.tasks.check(shots, int(cfg.eval.query), "val", keys=("domain.shots", "eval.query"))
        for k in cfg.eval.shots:
            parts.tasks.check(int(k), int(cfg.eval.query), "test", keys=("eval.shots", "eval.query"))
    probe = parts.tasks.sample(1, shots, 1, generator(0, parts.device), parts.device)
    x = probe.support[0][0]
    try:
        with torch.no_grad():
            out = parts.model(x)
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


def training_state(
    parts: Parts,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    sampler: torch.Generator,
    best: dict[str, float],
    cfg: DictConfig,
    wandb_id: str | None,
) -> dict[str, Any]:
    """Everything needed to continue exactly: parameters, alphas, optimizer, RNGs, config."""
    return {
        "iteration": iteration,
        "model": parts.model.state_dict(),
        "alpha": parts.alpha.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": ckpt.capture_rng({"sampler": sampler}),
        "best": dict(best),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "wandb_run_id": wandb_id,
    }


def load_weights(parts: Parts, state: dict[str, Any], path: Path) -> None:
    ckpt.load_state_strict(parts.model, state["model"], "model", path)
    ckpt.load_state_strict(parts.alpha, state["alpha"], "alpha schedule", path)


def all_finite(parts: Parts) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in parts.modules() for p in m.parameters())


# ----------------------------------------------------------------------------- training
def validate(parts: Parts, cfg: DictConfig, val_set: Any) -> float:
    """The metric after eval.steps test-time steps on the fixed validation tasks."""
    curves = supervised_curves(
        dict(parts.model.named_parameters()),
        parts.alpha,
        val_set.support,
        val_set.query,
        int(cfg.eval.steps),
        task_loss=parts.task_loss,
        metric=parts.metric,
        chunk_size=int(cfg.eval.chunk_size),
    )
    return float(curves[:, -1].mean())


def train(cfg: DictConfig, run_dir: Path) -> float:
    """Meta-train, then meta-test; returns the best validation metric (what sweeps optimise)."""
    parts = build_parts(cfg)
    device, total = parts.device, int(cfg.meta_iterations)
    optimizer = build_optimizer(cfg, [p for m in parts.modules() for p in m.parameters()])
    use_compile = resolve_compile(cfg.compile, device, total)
    objective = MetaObjective(
        parts.task_loss,
        parts.alpha,
        int(cfg.inner_steps),
        bool(cfg.order.first_order),
        cfg.chunk_size,
        compile=use_compile,
    )
    sampler = generator(cfg.seed, device)
    shots, query, meta_batch = int(cfg.domain.shots), int(cfg.domain.query), int(cfg.meta_batch)
    validating = has_validation(cfg, parts)
    if cfg.eval.every and not validating:
        log.warning(
            "%s has no validation split: validation is off and the meta-test uses last.pt", cfg.domain.name
        )
    val_set = None
    if validating:
        val_gen = generator(cfg.eval.val_seed, device)
        val_set = parts.tasks.sample(
            int(cfg.eval.val_tasks), shots, int(cfg.eval.query), val_gen, device, "val"
        )
    folder = ckpt.checkpoint_dir(run_dir)
    sign = 1.0 if parts.kind.higher_is_better else -1.0
    start, best = 0, {"metric": float("nan"), "iteration": -1}

    last_path = folder / ckpt.LAST
    if cfg.checkpoint.resume and last_path.is_file():
        state = ckpt.load_checkpoint(last_path, map_location=device)
        load_weights(parts, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        ckpt.restore_rng(state["rng"], {"sampler": sampler})
        start, best = int(state["iteration"]), dict(state["best"])
        log.info("resuming from %s at iteration %d", last_path, start)

    tracker = Tracker.for_run(cfg, run_dir, start)
    n_params = sum(p.numel() for p in parts.model.parameters())
    log.info(
        "%s (%s) | %s, %d parameters | %s | %s order | %d inner step(s), %d at test | meta-batch %d | "
        "%d iterations | device %s%s",
        cfg.domain.name,
        cfg.domain.kind,
        type(parts.model).__name__,
        n_params,
        parts.alpha.describe(),
        "first" if cfg.order.first_order else "second",
        cfg.inner_steps,
        cfg.eval.steps,
        meta_batch,
        total,
        device.type,
        " | torch.compile" if use_compile else "",
    )

    def save(name: str, iteration: int) -> Path:
        path = folder / name
        ckpt.save_checkpoint(
            path, training_state(parts, optimizer, iteration, sampler, best, cfg, tracker.run_id)
        )
        return path

    exit_code = 1
    try:
        window_start, window_iters = time.perf_counter(), 0
        with GracefulStop() as stop, logging_redirect_tqdm(), progress_bar(cfg, total, start) as bar:
            for it in range(start, total):
                batch = parts.tasks.sample(meta_batch, shots, query, sampler, device)
                result = objective(parts.meta_params(), batch.support, batch.query)
                for group, module in (("model", parts.model), ("alpha", parts.alpha)):
                    for name, p in module.named_parameters():
                        p.grad = result.grads[group][name]
                optimizer.step()
                step, window_iters = it + 1, window_iters + 1
                bar.update()

                if step % int(cfg.log_every) == 0 or step == total:
                    loss, pre = float(result.loss), float(result.pre_loss)
                    if not (torch.isfinite(torch.tensor([loss, pre])).all() and all_finite(parts)):
                        raise TrainingDiverged(diverged_message(loss, step, folder))
                    elapsed = time.perf_counter() - window_start
                    tracker.log(
                        {
                            "train/loss": loss,
                            "train/support_loss_pre": pre,
                            "perf/iters_per_s": window_iters / elapsed,
                            "perf/tasks_per_s": window_iters * meta_batch / elapsed,
                        },
                        step=step,
                    )
                    bar.set_postfix(loss=f"{loss:.4g}", pre=f"{pre:.4g}")
                    window_start, window_iters = time.perf_counter(), 0

                every = int(cfg.eval.every)
                if validating and (step % every == 0 or step == total):
                    value = validate(parts, cfg, val_set)
                    name = f"val/{parts.kind.metric_name}_step{cfg.eval.steps}"
                    tracker.log({name: value}, step=step)
                    if best["iteration"] < 0 or sign * value > sign * best["metric"]:
                        if not all_finite(parts):
                            raise TrainingDiverged(diverged_message(float("nan"), step, folder))
                        best = {"metric": value, "iteration": step}
                        save(ckpt.BEST, step)

                last = step == total
                if (
                    stop.requested
                    or last
                    or (int(cfg.checkpoint.every) and step % int(cfg.checkpoint.every) == 0)
                ):
                    if not all_finite(parts):
                        raise TrainingDiverged(diverged_message(float(result.loss), step, folder))
                    save(ckpt.LAST, step)
                if stop.requested:
                    raise Interrupted(
                        stop.requested,
                        f"stopped by signal {stop.requested} at iteration {step}; "
                        f"checkpoint saved to {folder / ckpt.LAST}; run again in {run_dir} to resume",
                    )
        if total == 0 or start >= total:
            log.info("nothing to train (meta_iterations=%d, at iteration %d)", total, start)
            if not last_path.is_file():
                save(ckpt.LAST, start)
        results = supervised_meta_test(cfg, parts, run_dir, tracker, log_step=max(start, total))
        tracker.summary({"best/val_metric": best["metric"], "best/iteration": best["iteration"]})
        exit_code = 0
    finally:
        printed_by_wandb = tracker.wandb_run is not None
        tracker.finish(exit_code)
    if printed_by_wandb:  # W&B's run summary scrolled the table away: the table gets the last word
        log.info("meta-test summary (also in %s)\n%s", run_dir / "eval.json", format_table(results))
    # what sweeps optimise: the best validation metric, or the meta-test's when validation is off
    return float(best["metric"]) if best["iteration"] >= 0 else results[0].final


def diverged_message(loss: float, step: int, folder: Path) -> str:
    last = folder / ckpt.LAST
    kept = f"last good checkpoint kept: {last}" if last.is_file() else "no checkpoint was written before it"
    return (
        f"training diverged: loss={loss} (or a parameter became non-finite) at iteration {step}; {kept}. "
        "Try a smaller optimizer.lr or alpha"
    )
