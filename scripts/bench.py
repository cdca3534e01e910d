"""Speed benchmarks: mamlrun's meta-iteration against learn2learn's, side by side in one process.

Every contender runs the same workload on the same pre-sampled meta-batches, and the contenders
are interleaved round by round (this machine is shared and noisy), so the printed ratios compare
like with like. A meta-iteration = meta-gradient of one meta-batch + one Adam step.

    python scripts/bench.py                 # all suites
    python scripts/bench.py --rounds 9      # more rounds, steadier medians
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.domains.sinusoid import SinusoidTasks
from mamlrun.maml import ConstantAlpha, MetaObjective
from mamlrun.models import MLP


def import_learn2learn():
    """learn2learn imports the unmaintained `gym`, which prints a banner: keep it quiet."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        import learn2learn

    return learn2learn


# --------------------------------------------------------------------------- contenders
def mamlrun_step(model: nn.Module, alpha_value: float, steps: int, first_order: bool, compile: bool):
    """One mamlrun meta-iteration (MetaObjective + Adam), as the supervised trainer runs it."""
    alpha = ConstantAlpha(alpha_value, {n: p.shape for n, p in model.named_parameters()}, steps)

    def task_loss(params, data):
        return F.mse_loss(torch.func.functional_call(model, params, (data[0],)), data[1])

    objective = MetaObjective(task_loss, alpha, steps, first_order, compile=compile)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as conf/optimizer/adam.yaml

    def step(batch) -> None:
        result = objective({"model": dict(model.named_parameters()), "alpha": {}}, batch.support, batch.query)
        for name, p in model.named_parameters():
            p.grad = result.grads["model"][name]
        optimizer.step()

    return step


def learn2learn_step(model: nn.Module, alpha_value: float, steps: int, first_order: bool):
    """One learn2learn meta-iteration: clone and adapt per task (its documented usage) + Adam."""
    l2l = import_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=alpha_value, first_order=first_order)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3, fused=True)  # the same optimizer

    def step(batch) -> None:
        optimizer.zero_grad()
        (xs, ys), (xq, yq) = batch.support, batch.query
        total = 0.0
        for t in range(xs.shape[0]):
            learner = maml.clone()
            for _ in range(steps):
                learner.adapt(F.mse_loss(learner(xs[t]), ys[t]))
            total = total + F.mse_loss(learner(xq[t]), yq[t])
        (total / xs.shape[0]).backward()
        optimizer.step()

    return step


# --------------------------------------------------------------------------- timing
L2L = "learn2learn MAML (clone/adapt)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    contenders: dict[str, Callable], batches: list, rounds: int, iters: int, device: torch.device
) -> dict[str, float]:
    """Median ms per iteration of each contender, timed round-robin."""
    for step in contenders.values():  # warm-up (and compilation) outside the clock
        for batch in batches[:5]:
            step(batch)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(rounds):
        for name, step in contenders.items():
            sync(device)
            start = time.perf_counter()
            for i in range(iters):
                step(batches[(r * iters + i) % len(batches)])
            sync(device)
            times[name].append((time.perf_counter() - start) / iters * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def report(title: str, medians: dict[str, float], baseline: str) -> None:
    print(f"\n{title}")
    print(f"  {'contender':<34} {'ms/iter':>9} {'speed-up vs ' + baseline:>26}")
    for name, ms in medians.items():
        print(f"  {name:<34} {ms:9.3f} {medians[baseline] / ms:25.1f}x")


def have_learn2learn() -> bool:
    try:
        import_learn2learn()
    except ImportError:
        print("  (learn2learn is not installed here: its column is skipped; `make install` builds it)")
        return False
    return True


def sinusoid_suite(rounds: int, iters: int, device: torch.device) -> None:
    """Issue 2's workload: MLP 40-40, meta-batch 25, K=10, 1 inner step, first and second order."""
    tasks = SinusoidTasks()
    g = torch.Generator(device=device).manual_seed(0)
    batches = [tasks.sample(25, 10, 10, g, device) for _ in range(64)]
    with_l2l = have_learn2learn()
    for first_order in (False, True):
        torch.manual_seed(0)
        base = MLP(1, 1, [40, 40])

        def clone(base: nn.Module = base) -> nn.Module:
            model = MLP(1, 1, [40, 40])
            model.load_state_dict(base.state_dict())
            return model.to(device)

        contenders = {}
        if with_l2l:
            contenders[L2L] = learn2learn_step(clone(), 0.01, 1, first_order)
        contenders["mamlrun eager (vmap + func.grad)"] = mamlrun_step(clone(), 0.01, 1, first_order, False)
        contenders["mamlrun compiled (default)"] = mamlrun_step(clone(), 0.01, 1, first_order, True)
        medians = interleaved(contenders, batches, rounds, iters, device)
        order = "first order (FOMAML)" if first_order else "second order"
        report(
            f"sinusoid, MLP 40-40, meta-batch 25, K=10, 1 step, {order} [{device.type}]",
            medians,
            L2L if with_l2l else "mamlrun eager (vmap + func.grad)",
        )


SUITES = {"sinusoid": sinusoid_suite}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", choices=sorted(SUITES), action="append", help="run only these suites")
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timing rounds (median is reported)"
    )
    parser.add_argument("--iters", type=int, default=40, help="iterations per contender per round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {gpu}, python {sys.version.split()[0]}"
    )
    for name in args.suite or list(SUITES):
        SUITES[name](args.rounds, args.iters, device)


if __name__ == "__main__":
    main()
