"""Speed and memory benchmarks: mamlrun's meta-iteration against learn2learn's, side by side.

Every contender runs the same workload on the same pre-sampled meta-batches, and the contenders
are interleaved round by round (this machine is shared and noisy), so the printed ratios compare
like with like. A meta-iteration = meta-gradient of one meta-batch + one Adam step. Peak memory is
measured per contender in a fresh subprocess (peak RSS on the CPU, peak allocated on a GPU) above
what the same process holds once data and model are set up.

    python scripts/bench.py                      # every suite
    python scripts/bench.py --suite omniglot     # one suite
    python scripts/bench.py --rounds 9           # more rounds, steadier medians

torch.compile'd contenders compile before the clock starts (minutes the first time on a CPU; the
compiled kernels are cached on disk for the next run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.domains.fewshot import FewShotTasks, ImageSet
from mamlrun.domains.sinusoid import SinusoidTasks
from mamlrun.inner_params import head_names
from mamlrun.maml import ConstantAlpha, MetaObjective
from mamlrun.models import MLP, Conv4
from mamlrun.runtime.malloc import tune_malloc

L2L = "learn2learn MAML (clone/adapt)"
DATA = Path(os.environ.get("MAMLRUN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def import_learn2learn():
    """The contender; imported quietly (its `gym` import prints a banner)."""
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        import learn2learn
    return learn2learn


# --------------------------------------------------------------------------- workloads
@dataclass(frozen=True)
class Workload:
    """One benchmark setting: a model, a loss, a task sampler and MAML's settings."""

    title: str
    make_model: Callable[[], nn.Module]
    loss: Callable
    sample: Callable[[torch.Generator, torch.device], object]
    alpha: float
    steps: int


def sinusoid_workload() -> Workload:
    tasks = SinusoidTasks()
    return Workload(
        "sinusoid, MLP 40-40, meta-batch 25, K=10, 1 step",
        lambda: MLP(1, 1, [40, 40]),
        F.mse_loss,
        lambda g, device: tasks.sample(25, 10, 10, g, device),
        0.01,
        1,
    )


def omniglot_images() -> tuple[FewShotTasks, str]:
    """The real minimal Omniglot sets when present, else random 28x28 images (timing is the same)."""
    root = DATA / "omniglot"
    if any(root.glob("*.zip")):
        from mamlrun.domains.fewshot.omniglot import OmniglotTasks

        return OmniglotTasks(str(root), ways=5, split="paper", train_classes=150, val_classes=20), "real"
    labels = torch.arange(600).repeat_interleave(20)
    images = torch.randint(0, 256, (len(labels), 1, 28, 28), dtype=torch.uint8)
    return FewShotTasks(
        ImageSet(images, labels, [str(c) for c in range(600)]), {"train": list(range(600))}, 5, "random"
    ), "random"


def omniglot_workload(ways: int, meta_batch: int, steps: int, alpha: float) -> Workload:
    tasks, kind = omniglot_images()
    tasks.ways = ways

    return Workload(
        f"Omniglot {ways}-way 1-shot ({kind} images), conv4, meta-batch {meta_batch}, {steps} step(s)",
        lambda: Conv4(1, ways),
        F.cross_entropy,
        lambda g, device: tasks.sample(meta_batch, 1, 1, g, device),
        alpha,
        steps,
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "sinusoid": sinusoid_workload,
    "omniglot5": lambda: omniglot_workload(5, 32, 1, 0.4),
    "omniglot20": lambda: omniglot_workload(20, 16, 5, 0.1),
}


# --------------------------------------------------------------------------- contenders
def mamlrun_step(
    w: Workload,
    model: nn.Module,
    first_order: bool,
    compile: bool,
    chunk: int | None = None,
    adapts: frozenset[str] | None = None,
):
    """One mamlrun meta-iteration (MetaObjective + Adam), as the supervised trainer runs it;
    `adapts`: the parameters the inner loop moves (ANIL's head, BOIL's body; None: all)."""
    alpha = ConstantAlpha(w.alpha, {n: p.shape for n, p in model.named_parameters()}, w.steps)

    def task_loss(params, data):
        return w.loss(torch.func.functional_call(model, params, (data[0],)), data[1])

    objective = MetaObjective(task_loss, alpha, w.steps, first_order, chunk, compile=compile, adapts=adapts)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as conf/optimizer/adam.yaml

    def step(batch) -> None:
        result = objective({"model": dict(model.named_parameters()), "alpha": {}}, batch.support, batch.query)
        for name, p in model.named_parameters():
            p.grad = result.grads["model"][name]
        optimizer.step()

    return step


def learn2learn_step(w: Workload, model: nn.Module, first_order: bool):
    """One learn2learn meta-iteration: clone and adapt per task (its documented usage) + Adam."""
    l2l = import_learn2learn()
    maml = l2l.algorithms.MAML(model, lr=w.alpha, first_order=first_order)
    optimizer = torch.optim.Adam(maml.parameters(), lr=1e-3, fused=True)  # the same optimizer

    def step(batch) -> None:
        optimizer.zero_grad()
        (xs, ys), (xq, yq) = batch.support, batch.query
        total = 0.0
        for t in range(xs.shape[0]):
            learner = maml.clone()
            for _ in range(w.steps):
                learner.adapt(w.loss(learner(xs[t]), ys[t]))
            total = total + w.loss(learner(xq[t]), yq[t])
        (total / xs.shape[0]).backward()
        optimizer.step()

    return step


def make_contender(w: Workload, spec: str, device: torch.device):
    """spec: 'l2l[:first]' or 'mamlrun:<eager|compiled>[:first][:chunk=N][:anil|:boil]'."""
    parts = spec.split(":")
    first = "first" in parts
    torch.manual_seed(0)
    model = w.make_model().to(device)
    if parts[0] == "l2l":
        return learn2learn_step(w, model, first)
    chunk = next((int(p.split("=")[1]) for p in parts if p.startswith("chunk=")), None)
    head = frozenset(head_names(model))
    adapts = (
        head
        if "anil" in parts
        else frozenset(dict(model.named_parameters())) - head
        if "boil" in parts
        else None
    )
    return mamlrun_step(w, model, first, compile="compiled" in parts, chunk=chunk, adapts=adapts)


def label(spec: str) -> str:
    parts = spec.split(":")
    if parts[0] == "l2l":
        return L2L + (" first order" if "first" in parts else "")
    text = "mamlrun " + parts[1] + (" first order" if "first" in parts else "")
    text += "".join(f" {v.upper()}" for v in ("anil", "boil") if v in parts)
    chunk = next((p for p in parts if p.startswith("chunk=")), None)
    return text + (f" ({chunk.replace('=', ' ')})" if chunk else "")


# --------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    steps: dict[str, Callable], batches: list, rounds: int, iters: int, device
) -> dict[str, float]:
    """Median ms per iteration of each contender, timed round-robin after a warm-up."""
    for step in steps.values():  # warm-up (and compilation) outside the clock
        for batch in batches[:3]:
            step(batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(rounds):
        for name, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for i in range(iters):
                step(batches[(r * iters + i) % len(batches)])
            sync(device)
            times[name].append((time.perf_counter() - start) / iters * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_probe(workload: str, spec: str, device: str) -> None:
    """(subprocess) Print the peak memory, in MiB, that a meta-iteration adds to a warmed-up process.

    CPU: one warm-up iteration (and compilation) first, then freed memory goes back to the OS
    (malloc_trim), the kernel's peak-RSS mark is reset (/proc/self/clear_refs) and three iterations
    run; the peak RSS above the RSS before them is reported. GPU: peak allocated bytes likewise.
    """
    dev = torch.device(device)
    w = WORKLOADS[workload]()
    g = torch.Generator(device=dev).manual_seed(0)
    batches = [w.sample(g, dev) for _ in range(4)]
    step = make_contender(w, spec, dev)
    step(batches[0])  # warm-up: compilation and lazily built state are not the iteration's memory
    print(json.dumps({"peak_mib": peak_mib_above_base(step, batches[1:], dev)}))


def peak_mib_above_base(step: Callable[[Any], object], batches: Sequence[Any], dev: torch.device) -> float:
    """The peak memory `step` adds over `batches`, in MiB, above what the (warmed-up) process holds
    before them: CPU peak RSS (freed memory returned with malloc_trim, the kernel's peak mark reset
    through /proc/self/clear_refs), GPU peak allocated bytes."""
    import ctypes

    gc.collect()
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
        base = _status_kib("VmRSS") * 1024
    for batch in batches:
        step(batch)
    sync(dev)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else _status_kib("VmHWM") * 1024
    return (peak - base) / 2**20


def peak_memory(workload: str, spec: str, device: torch.device) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--probe", workload, spec, "--device", str(device)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def suite(
    workload: str, specs: list[str], rounds: int, iters: int, device: torch.device, memory: bool
) -> dict:
    w = WORKLOADS[workload]()
    g = torch.Generator(device=device).manual_seed(0)
    batches = [w.sample(g, device) for _ in range(max(8, iters))]
    steps = {label(s): make_contender(w, s, device) for s in specs}
    medians = interleaved(steps, batches, rounds, iters, device)
    mem = {label(s): peak_memory(workload, s, device) for s in specs} if memory else {}
    base = next((ms for name, ms in medians.items() if name.startswith(L2L)), None)  # of the same order
    print(f"\n{w.title} [{device.type}]")
    print(f"  {'contender':<40} {'ms/iter':>9} {'vs learn2learn':>15} {'peak MiB':>10}")
    for name, ms in medians.items():
        ratio = f"{base / ms:14.2f}x" if base else "-"
        peak = f"{mem[name]:10.0f}" if name in mem else ""
        print(f"  {name:<40} {ms:9.2f} {ratio:>15} {peak}")
    return medians


# --------------------------------------------------------------------------- meta-RL cost split
def rl_suite(device: torch.device) -> None:
    """Sampler throughput against the bare-gymnasium floor, and one MAML-TRPO iteration's time split."""
    import gymnasium as gym
    import numpy as np

    from mamlrun.domains.rl.locomotion import LocomotionFamily
    from mamlrun.domains.rl.nav2d import Nav2DFamily
    from mamlrun.domains.rl.sampler import EpisodeSampler
    from mamlrun.models import GaussianPolicy
    from mamlrun.trainers.rl.objective import outer_terms, validation_data
    from mamlrun.trainers.rl.parts import build as build_rl_parts
    from mamlrun.trainers.rl.trpo import TRPO, natural_gradient, trpo_step

    print(f"\nmeta-RL [{device.type}]")
    # 1. HalfCheetah: mamlrun's sampler (policy on the device, masks, task rewards) vs random actions
    #    in a bare SyncVectorEnv of the same environments: the sampling floor.
    family = LocomotionFamily("HalfCheetah-v5", "velocity", horizon=200)
    tasks, rollouts = 4, 10
    policy = GaussianPolicy(family.obs_dim, family.act_dim).to(device)
    sampler = EpisodeSampler(family, policy, rollouts, device)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    rng, noise = np.random.default_rng(0), torch.Generator(device=device).manual_seed(0)
    task_list = family.sample_tasks(tasks, rng)
    bare = gym.vector.SyncVectorEnv(
        [lambda: gym.make("HalfCheetah-v5", max_episode_steps=200)] * (tasks * rollouts)
    )
    bare.reset(seed=0)
    sampler.sample(task_list, theta, False, rng, noise)  # builds the vector env
    ours, floor = [], []
    for _ in range(3):
        start = time.perf_counter()
        eps = sampler.sample(task_list, theta, False, rng, noise)
        ours.append(eps.env_steps / (time.perf_counter() - start))
        start = time.perf_counter()
        bare.reset(seed=1)
        for _ in range(200):
            bare.step(bare.action_space.sample())
        floor.append(tasks * rollouts * 200 / (time.perf_counter() - start))
    o, f = statistics.median(ours), statistics.median(floor)
    print(
        f"  HalfCheetah-v5, {tasks * rollouts} envs x 200 steps: sampler {o:,.0f} steps/s, bare SyncVectorEnv "
        f"with random actions {f:,.0f} steps/s: the sampler takes {f / o:.2f}x the floor's time"
    )
    bare.close()
    sampler.close()

    # 2. nav2d, batched in torch: raw sampler throughput at the paper's size (20 tasks x 20 episodes).
    nav = Nav2DFamily()
    policy = GaussianPolicy(2, 2).to(device)
    sampler = EpisodeSampler(nav, policy, 20, device)
    theta = {k: v.detach() for k, v in policy.named_parameters()}
    goals = nav.sample_tasks(20, rng)
    sampler.sample(goals, theta, False, rng, noise)
    start = time.perf_counter()
    steps = sum(sampler.sample(goals, theta, False, rng, noise).env_steps for _ in range(3))
    print(
        f"  nav2d, 400 envs: {steps / (time.perf_counter() - start):,.0f} steps/s (policy forward included)"
    )

    # 3. One MAML-TRPO iteration at the paper's nav2d size, split into its parts.
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(
            config_name="config",
            # the paper text's alpha 0.1, with which the README's figures were measured
            overrides=["experiment=nav2d_paper", "domain.inner_lr=0.1", "logger=none", f"device={device}"],
        )
    OmegaConf.resolve(cfg)
    parts = build_rl_parts(cfg)
    times: dict[str, list[float]] = {"sampling": [], "inner updates": [], "TRPO": []}
    params = [p for m in parts.modules() for p in m.parameters()]
    for _ in range(3):
        goals = parts.tasks.sample_tasks(20, rng)
        theta = {k: v.detach() for k, v in parts.params().items()}
        t0 = time.perf_counter()
        train_eps = parts.sampler.sample(goals, theta, False, rng, noise)
        t1 = time.perf_counter()
        data = parts.task_data(train_eps)
        adapted = parts.adapt_tasks({k: v.expand(20, *v.shape) for k, v in theta.items()}, data, 0)
        sync(device)
        t2 = time.perf_counter()
        valid_eps = parts.sampler.sample(goals, adapted, True, rng, noise)
        t3 = time.perf_counter()
        valid = validation_data(parts, adapted, valid_eps)
        trpo_step(params, outer_terms(parts, 1, False, data, valid), TRPO())
        sync(device)
        t4 = time.perf_counter()
        times["sampling"].append((t1 - t0) + (t3 - t2))
        times["inner updates"].append(t2 - t1)
        times["TRPO"].append(t4 - t3)
    parts.sampler.close()
    total = sum(statistics.median(v) for v in times.values())
    print("  one MAML-TRPO iteration, nav2d paper size (20 tasks x 20 episodes x 100 steps, 10 CG steps):")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"    {name:<14} {median:7.2f} s  ({median / total:5.1%})")

    # 4. The natural gradient (the CG's 11 KL-curvature products and the surrogate's gradient) on
    #    the last batch, with the KL's Hessian products (double backward) vs the Fisher's (J^T M J v),
    #    interleaved, with 1 and 2 threads.
    terms = outer_terms(parts, 1, False, data, valid)
    threads = torch.get_num_threads()
    print(
        "  natural gradient on that batch, optimizer.curvature=hessian vs fisher (median of 3, interleaved):"
    )
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        took: dict[str, list[float]] = {"hessian": [], "fisher": []}
        for _ in range(3):
            for curvature, values in took.items():
                start = time.perf_counter()
                natural_gradient(params, terms, TRPO(curvature=curvature))
                values.append(time.perf_counter() - start)
        hessian, fisher = (statistics.median(v) for v in took.values())
        print(f"    {n} thread(s): hessian {hessian:6.2f} s, fisher {fisher:6.2f} s: {hessian / fisher:.2f}x")
    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--suite", choices=["sinusoid", "omniglot", "rl"], action="append", help="run only these suites"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved timing rounds (median is reported)"
    )
    parser.add_argument(
        "--iters", type=int, default=0, help="iterations per contender per round (0: per suite)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--probe", nargs=2, metavar=("WORKLOAD", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        peak_memory_probe(*args.probe, args.device)
        return
    tune_malloc()
    device = torch.device(args.device)
    try:
        import_learn2learn()
    except ImportError as exc:
        sys.exit(f"bench: learn2learn is not installed ({exc}); run scripts/install_learn2learn.sh")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {gpu}, python {sys.version.split()[0]}"
    )
    chosen = args.suite or ["sinusoid", "omniglot", "rl"]
    if "sinusoid" in chosen:
        for order in ("", ":first"):
            suite(
                "sinusoid",
                [f"l2l{order}", f"mamlrun:eager{order}", f"mamlrun:compiled{order}"],
                args.rounds,
                args.iters or 40,
                device,
                memory=False,
            )
    if "omniglot" in chosen:
        five = suite(
            "omniglot5",
            [
                "l2l",
                "mamlrun:eager",
                "mamlrun:compiled",
                "mamlrun:compiled:first",
                "mamlrun:eager:anil",
                "mamlrun:eager:boil",
            ],
            args.rounds,
            args.iters or 3,
            device,
            memory=not args.no_memory,
        )
        ratio = five["mamlrun compiled"] / five["mamlrun compiled first order"]
        print(f"  second / first order time: {ratio:.2f}x (the paper reports about 1.33x)")
        anil = five["mamlrun eager"] / five["mamlrun eager ANIL"]
        print(
            f"  MAML / ANIL time (eager, second order): {anil:.2f}x (ANIL's inner gradient is the head's only)"
        )
        suite(
            "omniglot20",
            ["l2l", "mamlrun:eager:chunk=2", "mamlrun:compiled:chunk=2", "mamlrun:compiled:chunk=4"],
            max(3, args.rounds // 2),
            args.iters or 1,
            device,
            memory=not args.no_memory,
        )
    if "rl" in chosen:
        rl_suite(device)


if __name__ == "__main__":
    main()
