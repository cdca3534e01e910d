"""The linear baseline's solve: the LU solve it used before (`torch.linalg.solve_ex`) against the
Cholesky solve it uses now, on the paper's locomotion batch sizes, with one thread and with two.

Both solve (XᵀX + reg·I) w = Xᵀy per task; the script times the fit (features, normal equations,
solve, fitted values) and prints the largest difference in fitted values between the two. The
observations have Ant's zero contact features, which made the batched LU raise with two threads:
that contender is reported as `raised` where it does.

    python scripts/bench_baseline.py                   # 20 tasks x 20 episodes x 200 steps
    python scripts/bench_baseline.py --tasks 40 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from mamlrun.trainers.rl.baseline import baseline_features, fit_linear_baseline

ENVS = {"HalfCheetah-v5": (17, 17), "Ant-v5": (105, 27)}  # observations, of which nonzero


def fit_by_lu(
    obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """The fit as it was: a batched LU solve, retried with 10x the regulariser when `info` says so."""
    feats = baseline_features(obs, mask).double()
    x = feats.flatten(1, 2)
    y = (returns * mask).double().flatten(1, 2).unsqueeze(-1)
    xtx, xty = x.transpose(1, 2) @ x, x.transpose(1, 2) @ y
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    for attempt in range(6):
        weights, info = torch.linalg.solve_ex(xtx + reg * (10.0**attempt) * eye, xty)
        if bool((info == 0).all()) and bool(torch.isfinite(weights).all()):
            break
    return ((feats @ weights.unsqueeze(1)).squeeze(-1)).to(returns.dtype) * mask


def median_ms(fit: Callable[..., torch.Tensor], batch: tuple[torch.Tensor, ...], repeats: int) -> float:
    """Median wall time of `fit(*batch)`, in milliseconds, after one untimed call."""
    fit(*batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit(*batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    print(f"{args.tasks} tasks x {args.episodes} episodes x {args.horizon} steps; median of {args.repeats}")
    print(f"{'env':<16}{'threads':>8}{'LU ms':>10}{'Cholesky ms':>13}{'LU/Chol':>9}{'max |diff|':>12}")
    for env_id, (dim, nonzero) in ENVS.items():
        obs = torch.randn(args.tasks, args.horizon, args.episodes, dim, generator=g)
        obs[..., nonzero:] = 0.0
        mask = torch.ones(args.tasks, args.horizon, args.episodes)
        mask[:, args.horizon // 2 :, 0] = 0.0  # one early termination per task
        returns = torch.randn(args.tasks, args.horizon, args.episodes, generator=g).cumsum(1)
        batch = (obs, returns, mask)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            chol = median_ms(fit_linear_baseline, batch, args.repeats)
            try:
                lu = median_ms(fit_by_lu, batch, args.repeats)
                diff = float((fit_by_lu(*batch) - fit_linear_baseline(*batch)).abs().max())
                row = f"{lu:>10.2f}{chol:>13.2f}{lu / chol:>9.2f}{diff:>12.2e}"
            except RuntimeError:
                row = f"{'raised':>10}{chol:>13.2f}{'':>9}{'':>12}"
            print(f"{env_id:<16}{threads:>8}{row}")


if __name__ == "__main__":
    main()
