"""Advantages for policy gradients: a linear feature baseline fitted per task, then GAE.

The baseline (Duan et al. 2016, as in the paper's code) regresses discounted returns on
[clip(o, +-10), clip(o, +-10)^2, t/100, (t/100)^2, (t/100)^3, 1] by ridge regression (1e-5), fitted
afresh for each task and each batch of episodes: it carries no state from one batch to the next.
The time feature restarts each episode (each environment runs one episode from t=0) and padded
steps are masked out of the fit. Advantages come from GAE(gamma, lambda) and are normalised per task.
"""

from __future__ import annotations

import torch
from torch import Tensor


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """Return-to-go of every step, [T, H, R] (masked steps contribute nothing)."""
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        running = rewards[:, t] * mask[:, t] + gamma * running * mask[:, t]
        out[:, t] = running
    return out


def baseline_features(obs: Tensor, mask: Tensor) -> Tensor:
    """[T, H, R, 2 * obs_dim + 4] features, zero on padded steps."""
    o = obs.clamp(-10.0, 10.0)
    steps = torch.arange(obs.shape[1], device=obs.device, dtype=obs.dtype).view(1, -1, 1, 1) / 100.0
    time = steps.expand(*obs.shape[:3], 1)
    feats = torch.cat([o, o.pow(2), time, time.pow(2), time.pow(3), torch.ones_like(time)], dim=-1)
    return feats * mask.unsqueeze(-1)


def solve_ridge(xtx: Tensor, xty: Tensor, reg: float, retries: int = 5) -> Tensor:
    """Per-task weights w of (XᵀX + reg·I) w = Xᵀy, [T, F, 1], by Cholesky: the matrix is symmetric
    positive definite once reg > 0, and the factorisation reports failure in `info` instead of raising.

    Not an LU solve: with two or more threads MKL's batched LU raises on these systems (Ant's contact
    features are zero until a body touches, so whole rows and columns are zero but for the
    regulariser). A task whose factorisation fails or gives non-finite weights is retried with 10x the
    regulariser (`retries` times, as in the paper's code), then solved by least squares.
    """
    eye = torch.eye(xtx.shape[-1], dtype=xtx.dtype, device=xtx.device)
    weights = torch.zeros_like(xty)
    pending = torch.arange(xtx.shape[0], device=xtx.device)
    for attempt in range(retries + 1):
        chol, info = torch.linalg.cholesky_ex(xtx[pending] + reg * (10.0**attempt) * eye)
        solved = torch.cholesky_solve(xty[pending], chol)
        ok = (info == 0) & torch.isfinite(solved).flatten(1).all(dim=1)
        weights[pending[ok]] = solved[ok]
        pending = pending[~ok]
        if pending.numel() == 0:
            return weights
    system = xtx[pending] + reg * (10.0**retries) * eye
    weights[pending] = torch.linalg.lstsq(system, xty[pending]).solution
    return weights


def fit_linear_baseline(obs: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5) -> Tensor:
    """Per-task ridge regression of returns on the features; the fitted values, [T, H, R]."""
    feats = baseline_features(obs, mask).double()
    x = feats.flatten(1, 2)  # [T, H*R, F]
    y = (returns * mask).double().flatten(1, 2).unsqueeze(-1)
    weights = solve_ridge(x.transpose(1, 2) @ x, x.transpose(1, 2) @ y, reg)
    return ((feats @ weights.unsqueeze(1)).squeeze(-1)).to(returns.dtype) * mask


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates, [T, H, R]; the value after an episode's end is 0."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m
        adv[:, t] = running
        next_value = values[:, t] * m
    return adv


def normalize_per_task(adv: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """Zero mean, unit variance over each task's valid steps."""
    n = mask.sum(dim=(1, 2), keepdim=True).clamp(min=1)
    mean = (adv * mask).sum(dim=(1, 2), keepdim=True) / n
    var = (((adv - mean) * mask).pow(2)).sum(dim=(1, 2), keepdim=True) / n
    return (adv - mean) / (var.sqrt() + eps) * mask


def advantages(
    obs: Tensor,
    rewards: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
    reg: float = 1e-5,
    normalize: bool = True,
) -> Tensor:
    """Baseline fit, GAE and (optionally) per-task normalisation, for a batch of episodes."""
    values = fit_linear_baseline(obs, discounted_returns(rewards, mask, gamma), mask, reg)
    adv = gae(rewards, values, mask, gamma, lam)
    return normalize_per_task(adv, mask) if normalize else adv
