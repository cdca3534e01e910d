"""One run on two processes (torchrun) vs one: meta-iterations per second, Omniglot 5-way 1-shot.

The same run (experiment=omniglot_5w1s: conv4, meta-batch 32, second order, 1 inner step; same
seed, validation off, a 4-task meta-test, W&B off, no compile) for --iterations meta-iterations,
once as one process (`python -m mamlrun train ...`) and once as
`torchrun --standalone --nproc_per_node=2 -m mamlrun train ...` (each rank trains on half of every
meta-batch; the meta-gradient is all-reduced). 1- and 2-process runs alternate for --rounds rounds
(1,2 then 2,1, ...) so that drift on a shared machine affects both alike; the table gives medians.
An untimed 2-iteration run goes first (it decodes and caches the images; --no-warmup skips it).

- it/s: the run's own `perf/iters_per_s` records in its metrics.jsonl (every --log-every
  iterations; the first window, which holds the warm-up, is left out), median over records and rounds.
- train s: the training loop's time (the sum of the recorded windows), median over rounds.
- process s: the whole command: start-up, data loading, process group, training, meta-test.
- max |diff|: the largest difference between the final parameters (model and alpha, last.pt) of
  the 2-process run and the 1-process run of a round. Read it on 2-3 iterations: Omniglot's conv
  net under Adam amplifies float rounding (one process with threads=1 and with threads=2 already
  differ by 1e-3 in the loss at iteration 3), so after tens of iterations it measures that, not
  the all-reduce. --max-diff turns it into a check (exit 1 above it).

Threads: the preset's `threads` (Omniglot: auto, each process its share of the usable cores: on
2 cores the single process gets 2 threads and each torchrun rank 1, LOCAL_WORLD_SIZE being the
divisor; the sinusoid: 1), or --threads N for every process. The runs' own `torch threads:` log
line is printed (rank 0's; every rank computes the same). On a 2-core CPU expect little from a
second process: it trades intra-op threads for a split meta-batch plus an all-reduce per
iteration. A busy machine favours the ranks (1 thread each) over the 2-thread single process,
which then waits on a preempted OpenMP thread (see bench_scaling.py): run it with nothing else on.

With --device cuda the 1-process run uses one GPU, and the 2-process run (nccl, one GPU per rank)
only when torch.cuda.device_count() >= 2; with one GPU it says so and skips it.

The Omniglot images are read from $MAMLRUN_DATA/omniglot (default ../shared/data, beside the
repository, as the tests). The paper split needs the full set (1623 characters); on a smaller
one (the two "minimal" background zips: 242 characters) the split is shrunk to 150 training and
20 validation characters, as the tests do, and the script says so. Speed depends on the shapes,
not on which characters.

    python scripts/bench_torchrun.py                           # CPU, 40 iterations, 3 rounds
    python scripts/bench_torchrun.py --device cuda --iterations 200
    python scripts/bench_torchrun.py --iterations 5 --rounds 1 # seconds: does it run?
    python scripts/bench_torchrun.py --experiment sinusoid_paper --iterations 6 --max-diff 1e-6
    python scripts/bench_torchrun.py meta_batch=8              # any further override, to both runs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mamlrun.domains.fewshot.omniglot import find_drawings
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.threads import usable_cores

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
QUIET = [
    "logger=none",
    "progress=false",
    "compile=false",
    "eval.every=0",
    "eval.tasks=4",
    "checkpoint.every=0",
]
PAPER_CHARACTERS = 1200  # the paper split: 1100 training + 100 validation characters, the rest meta-test
MINIMAL_SPLIT = ["domain.tasks.train_classes=150", "domain.tasks.val_classes=20"]


@dataclass
class Result:
    """One run's figures."""

    rates: list[float]  # perf/iters_per_s records after the first window
    train_s: float  # the training loop's recorded windows, summed
    process_s: float  # the whole command
    threads: str  # the run's `torch threads:` log line


def data_dir() -> Path:
    """The data folder the runs read: MAMLRUN_DATA, default ../shared/data beside the repository."""
    return Path(os.environ.get("MAMLRUN_DATA", REPO.parent / "shared" / "data")).resolve()


def split_overrides(experiment: str) -> list[str]:
    """Shrink an Omniglot preset's paper split when the data hold fewer characters than it needs."""
    if not experiment.startswith("omniglot") or experiment == "omniglot_minimal":  # alphabet split
        return []
    root = data_dir() / "omniglot"
    drawings, _ = find_drawings(root) if root.is_dir() else ({}, [])
    characters = len({(alphabet, character) for alphabet, character, _ in drawings})
    if characters == 0:
        sys.exit(f"no Omniglot images in {root}: set MAMLRUN_DATA to a folder holding omniglot/")
    if characters > PAPER_CHARACTERS:
        return []
    print(f"Omniglot: {characters} characters in {root}: the paper split shrunk to {' '.join(MINIMAL_SPLIT)}")
    return MINIMAL_SPLIT


def read_metrics(run_dir: Path) -> tuple[list[float], float]:
    """(perf/iters_per_s of each record after the first, seconds of all recorded windows)."""
    rates, seconds, last_step = [], 0.0, 0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "perf/iters_per_s" in record:
            rate = float(record["perf/iters_per_s"])
            seconds += (record["step"] - last_step) / rate
            rates.append(rate)
            last_step = record["step"]
    return rates[1:] or rates, seconds


def threads_line(run_dir: Path) -> str:
    """The run's `torch threads: N (...)` log line (rank 0's under torchrun)."""
    found = re.search(r"torch threads: .*", (run_dir / "mamlrun.log").read_text())
    return found.group(0) if found else "torch threads: (not in the log)"


def train(processes: int, overrides: list[str], run_dir: Path, timeout: float) -> Result:
    """Run `mamlrun train` on `processes` processes in `run_dir`; its figures."""
    launcher = TORCHRUN if processes == 2 else [sys.executable]
    command = [*launcher, "-m", "mamlrun", "train", *overrides, f"hydra.run.dir={run_dir}"]
    env = os.environ | {"MAMLRUN_DATA": str(data_dir()), "WANDB_MODE": "disabled"}
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    process_s = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)}\nexited {proc.returncode}:\n{proc.stderr[-3000:]}")
    rates, train_s = read_metrics(run_dir)
    return Result(rates, train_s, process_s, threads_line(run_dir))


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's and alpha's tensors in the run's last.pt."""
    state = ckpt.load_checkpoint(run_dir / "checkpoints" / ckpt.LAST)
    return {f"{part}.{k}": v for part in ("model", "alpha") for k, v in state.get(part, {}).items()}


def max_difference(one: Path, two: Path) -> float:
    """The largest absolute difference between two runs' final parameters."""
    a, b = final_parameters(one), final_parameters(two)
    if a.keys() != b.keys():
        raise RuntimeError(f"the runs' checkpoints hold different tensors: {sorted(a.keys() ^ b.keys())}")
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def device_text(device: str, processes: int) -> str:
    if device == "cpu":
        return f"cpu ({usable_cores()} cores)"
    return f"{processes}x {torch.cuda.get_device_name(0)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="cuda: 2 processes need 2 GPUs"
    )
    parser.add_argument("--iterations", type=int, default=40, help="meta-iterations per run")
    parser.add_argument("--rounds", type=int, default=3, help="1- and 2-process runs, alternating")
    parser.add_argument("--log-every", type=int, default=5, help="iterations per perf/iters_per_s record")
    parser.add_argument("--experiment", default="omniglot_5w1s", help="the preset to run")
    parser.add_argument(
        "--threads", default=None, help="threads=N (or auto) for every run; default: the preset's own"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run before giving up")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed 2-iteration first run")
    parser.add_argument(
        "--max-diff",
        type=float,
        default=None,
        help="exit 1 when the final parameters differ by more than this",
    )
    parser.add_argument("--keep", type=Path, default=None, help="write the run directories here (kept)")
    parser.add_argument("overrides", nargs="*", help="further KEY=VALUE overrides, given to every run")
    args = parser.parse_args()
    if args.rounds < 1 or args.iterations < 1:
        parser.error("--rounds and --iterations must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU")
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        sys.exit(f"--keep {args.keep}: not empty (a run directory holding last.pt would resume, not train)")
    if args.iterations < 2 * args.log_every:
        args.log_every = max(1, args.iterations // 2)  # two records at least: the first is the warm-up

    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    arms = [1, 2] if args.device == "cpu" or gpus >= 2 else [1]
    print(
        f"python {sys.version.split()[0]}, torch {torch.__version__}; {usable_cores()} usable cores; "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} (torchrun sets 1 for its ranks when unset)"
    )
    if arms == [1]:
        print(f"2 processes: skipped ({gpus} GPU; torchrun with device=cuda needs one GPU per rank)")
    overrides = [
        f"experiment={args.experiment}",
        *split_overrides(args.experiment),
        *QUIET,
        f"device={args.device}",
        *([f"threads={args.threads}"] if args.threads else []),
        f"seed={args.seed}",
        *args.overrides,
    ]
    timed = [f"meta_iterations={args.iterations}", f"log_every={args.log_every}"]
    print("overrides:", " ".join([*overrides, *timed]))

    results: dict[int, list[Result]] = {n: [] for n in arms}
    diffs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench_torchrun-") as tmp:
        workdir = args.keep.resolve() if args.keep else Path(tmp)
        if not args.no_warmup:  # builds the decoded-image cache, fills the page cache
            warm = [*overrides, "meta_iterations=2", "log_every=1"]
            train(1, warm, workdir / "warmup", args.timeout)
        for r in range(args.rounds):
            for n in arms if r % 2 == 0 else arms[::-1]:
                results[n].append(train(n, [*overrides, *timed], workdir / f"round{r}_{n}proc", args.timeout))
            if len(arms) == 2:
                diffs.append(max_difference(workdir / f"round{r}_1proc", workdir / f"round{r}_2proc"))

    for n in arms:
        print(f"{n} process{'es' if n > 1 else ''}: {results[n][0].threads}{' (each rank)' if n > 1 else ''}")
    print(
        f"\n{args.experiment}, {args.iterations} iterations, it/s = median of perf/iters_per_s records "
        f"(every {args.log_every}, the first left out), {args.rounds} round(s)"
    )
    print(
        f"{'processes':>9} | {'device':<28} | {'it/s':>7} | {'vs 1':>6} | {'train s':>7} | "
        f"{'process s':>9} | {'max |diff|':>10}"
    )
    base = statistics.median(rate for res in results[1] for rate in res.rates)
    for n in arms:
        rate = statistics.median(x for res in results[n] for x in res.rates)
        train_s = statistics.median(res.train_s for res in results[n])
        process_s = statistics.median(res.process_s for res in results[n])
        diff = f"{max(diffs):>10.2e}" if n == 2 else f"{'-':>10}"
        print(
            f"{n:>9} | {device_text(args.device, n):<28} | {rate:>7.2f} | {rate / base:>5.2f}x | "
            f"{train_s:>7.1f} | {process_s:>9.1f} | {diff}"
        )
    if args.max_diff is not None and diffs:
        ok = max(diffs) <= args.max_diff
        print(
            f"final parameters, 2 processes vs 1: max |diff| {max(diffs):.2e} {'<=' if ok else '>'} {args.max_diff}"
        )
        if not ok:
            sys.exit(1)
    elif args.max_diff is not None:
        print("final parameters: not compared (no 2-process run)")


if __name__ == "__main__":
    main()
