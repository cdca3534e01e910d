"""Peak memory of the meta-gradient with `memory=keep` and `memory=recompute`, and its time.

The workload is Omniglot 20-way 1-shot (the paper's conv4, 64 filters, stride 2; 28x28 images, 1
support and 1 query image per class), second order, constant alpha 0.1, with 5 and with 20 inner
steps. Synthetic images: memory and time depend on the shapes only. One meta-gradient + Adam step
is one iteration, as the supervised trainer runs it.

Peak memory is measured per setting in a fresh subprocess, above what that process holds once the
model and data are set up and one iteration has run (lazily built state is not the iteration's):
- CPU: peak RSS. glibc's dynamic mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_), so every large
  tensor is mapped on allocation and unmapped when freed and RSS follows the live tensors; the
  kernel's peak-RSS mark is reset (/proc/self/clear_refs) before the measured iterations and read
  back (VmHWM) after them.
- GPU: torch.cuda.max_memory_allocated above memory_allocated, after reset_peak_memory_stats.
- CPU cross-check ("torch MiB"): the peak of torch's own allocations during one more iteration, from
  the profiler's allocation and free events (malloc and the OS play no part).

Times are medians of interleaved rounds (keep, recompute, keep, ...) in one process, so the ratio
compares like with like on a shared machine.

    python scripts/bench_memory.py                       # meta-batch 4, 5 and 20 steps
    python scripts/bench_memory.py --meta-batch 1 --steps 5 10 20 --first-order --no-reference

A reference row (not a setting) runs `memory=keep`'s computation differentiated by torch.autograd
instead of torch.func: it shows how much of recompute's saving comes from building no graph of the
backward pass and how much from not keeping the inner steps' activations.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from mamlrun.maml import ConstantAlpha, MetaGradient, MetaObjective, task_meta_loss
from mamlrun.maml.chunks import num_tasks, task_chunks
from mamlrun.maml.objective import autograd_grad_and_value
from mamlrun.models import Conv4

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported
from bench import peak_mib_above_base, sync  # a sibling script

WAYS, IMAGE = 20, 28
MODES = ("keep", "recompute")
REFERENCE = "keep-autograd"  # not a setting: keep, differentiated by torch.autograd (see --reference)


def sample(meta_batch: int, g: torch.Generator, device: torch.device):
    """A synthetic 20-way 1-shot meta-batch: (support, query), each (images [T,20,1,28,28], labels [T,20])."""

    def one_set():
        x = torch.rand(meta_batch, WAYS, 1, IMAGE, IMAGE, generator=g, device=device)
        y = torch.arange(WAYS, device=device).expand(meta_batch, WAYS).contiguous()
        return x, y

    return one_set(), one_set()


def make_iteration(steps: int, memory: str, first_order: bool, chunk: int | None, device: torch.device):
    """One meta-iteration (MetaObjective + Adam) of a fresh conv4, as the supervised trainer runs it."""
    torch.manual_seed(0)
    model = Conv4(1, WAYS).to(device)
    alpha = ConstantAlpha(0.1, {n: p.shape for n, p in model.named_parameters()}, steps)

    def task_loss(params, data):
        return F.cross_entropy(torch.func.functional_call(model, params, (data[0],)), data[1])

    if memory == REFERENCE:
        objective = keep_by_autograd(task_loss, alpha, steps, first_order, chunk)
    else:
        objective = MetaObjective(task_loss, alpha, steps, first_order, chunk, memory=memory)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def iteration(batch) -> None:
        grads = objective({"model": dict(model.named_parameters()), "alpha": {}}, *batch).grads
        for name, p in model.named_parameters():
            p.grad = grads["model"][name]
        optimizer.step()

    return iteration


def keep_by_autograd(task_loss, alpha, steps: int, first_order: bool, chunk: int | None):
    """The reference: `memory=keep`'s computation differentiated by torch.autograd.grad, which builds
    no graph of the backward pass (torch.func.grad, which `memory=keep` uses, always does). It
    separates the two savings of `memory=recompute`: no graph of the backward pass, and no kept
    activations of inner steps."""
    one_task = functools.partial(
        task_meta_loss, task_loss=task_loss, alpha=alpha, steps=steps, first_order=first_order
    )
    batched = torch.func.vmap(one_task, in_dims=(None, 0, 0), randomness="different")

    def chunk_loss(meta, support, query, total: int):
        outer, (post, pre) = batched(meta, support, query)
        return outer.sum() / total, (post.sum(), pre.sum())

    def objective(meta, support, query) -> MetaGradient:
        total, grads, loss = num_tasks(support), None, 0.0
        for part in task_chunks(chunk, support, query):
            g, (_, (post, _)) = autograd_grad_and_value(chunk_loss, meta, *part, total)
            grads, loss = (g if grads is None else tree_map(torch.add, grads, g)), loss + post
        return MetaGradient(grads, loss / total, torch.zeros(()))

    return objective


def probe(args: argparse.Namespace, steps: int, memory: str) -> None:
    """(subprocess) Print the peak MiB that meta-iterations add to a set-up, warmed-up process."""
    device = torch.device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    batches = [sample(args.meta_batch, g, device) for _ in range(3)]
    iteration = make_iteration(steps, memory, args.first_order, args.chunk_size, device)
    iteration(batches[0])  # warm-up: optimizer state and lazily built state are not the iteration's
    peak_mib = peak_mib_above_base(iteration, batches[1:], device)
    allocated = peak_allocated_mib(lambda: iteration(batches[1])) if device.type == "cpu" else float("nan")
    print(json.dumps({"peak_mib": peak_mib, "allocated_mib": allocated}))


def peak_allocated_mib(fn: Callable[[], None]) -> float:
    """CPU cross-check: the peak of torch's own allocations while `fn` runs (above those before it),
    the running sum of the profiler's allocation and free events; malloc and the OS play no part."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def peak_memory(args: argparse.Namespace, steps: int, memory: str) -> dict[str, float]:
    """`probe` in a fresh process (nothing allocated by an earlier setting counts)."""
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    command = [sys.executable, __file__, "--probe", str(steps), memory, *passed_on(args)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def passed_on(args: argparse.Namespace) -> list[str]:
    """The settings a probe subprocess needs, as command-line arguments."""
    flags = ["--device", args.device, "--meta-batch", str(args.meta_batch)]
    flags += ["--chunk-size", str(args.chunk_size)] if args.chunk_size else []
    return flags + (["--first-order"] if args.first_order else [])


def interleaved(iterations: dict[str, Callable], batches: list, rounds: int, device: torch.device):
    """Median seconds per iteration of each contender, timed round-robin after a warm-up."""
    for it in iterations.values():
        it(batches[0])
    times: dict[str, list[float]] = {name: [] for name in iterations}
    for r in range(rounds):
        for name, it in iterations.items():
            sync(device)
            start = time.perf_counter()
            it(batches[r % len(batches)])
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20], help="inner steps to compare")
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per meta-batch")
    parser.add_argument("--chunk-size", type=int, default=None, help="tasks per vmapped chunk")
    parser.add_argument("--first-order", action="store_true", help="FOMAML instead of second order")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per setting (0: no timing)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared CPU)")
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the keep-by-torch.autograd reference rows"
    )
    parser.add_argument("--probe", nargs=2, metavar=("STEPS", "MEMORY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe:
        probe(args, int(args.probe[0]), args.probe[1])
        return

    device = torch.device(args.device)
    how = "peak allocated (CUDA)" if device.type == "cuda" else "peak RSS above the set-up process"
    order = "first" if args.first_order else "second"
    print(
        f"Omniglot {WAYS}-way 1-shot, conv4 (64 filters), synthetic 28x28 images, {order} order, "
        f"meta-batch {args.meta_batch}, chunk_size {args.chunk_size} [{device.type}, {how}]"
    )
    contenders = [*MODES, *([] if args.no_reference else [REFERENCE])]
    print(
        f"{'steps':>5} | {'memory':<34} | {'peak MiB':>9} | {'vs keep':>7} | {'torch MiB':>9} | "
        f"{'s/iter':>7} | {'vs keep':>7}"
    )
    g = torch.Generator(device=device).manual_seed(1)
    batches = [sample(args.meta_batch, g, device) for _ in range(2)]
    for steps in args.steps:
        mib = {c: peak_memory(args, steps, c) for c in contenders}
        iterations = {
            c: make_iteration(steps, c, args.first_order, args.chunk_size, device) for c in contenders
        }
        secs = interleaved(iterations, batches, args.rounds, device) if args.rounds else {}
        keep = mib["keep"]["peak_mib"]
        for c in contenders:
            name = c if c in MODES else "(reference: keep, torch.autograd)"
            peak, allocated = mib[c]["peak_mib"], mib[c]["allocated_mib"]
            time_text = (
                f"{secs[c]:>7.2f} | {secs[c] / secs['keep']:>7.2f}" if secs else f"{'-':>7} | {'-':>7}"
            )
            print(
                f"{steps:>5} | {name:<34} | {peak:>9.1f} | {peak / keep:>7.2f} | {allocated:>9.1f} | {time_text}",
                flush=True,
            )


if __name__ == "__main__":
    main()
