"""Scaling benchmarks that need whole `mamlrun` processes: throughput under load and sweep wall time.

1. Load: the sinusoid preset's iterations/s (its own `perf/iters_per_s` records, median) alone and
   beside one and two busy processes (each a torch matmul loop on every core, like a second job),
   with the old default (torch takes every core: threads=<cores>) and the new one (threads=1 for
   the sinusoid's small MLP).
2. Sweeps: wall time of a `-m` sweep of four short sinusoid jobs, Hydra's basic launcher vs
   `hydra/launcher=local_parallel`, with every job taking every core vs `threads=auto` (each job
   its share: cores / parallel jobs).

Run it with nothing else running (a second busy process is exactly what it measures):

    python scripts/bench_scaling.py              # both
    python scripts/bench_scaling.py --only load  # one
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mamlrun.runtime.threads import usable_cores

MAMLRUN = [sys.executable, "-m", "mamlrun", "train"]
QUIET = ["logger=none", "progress=false", "compile=false", "eval.every=0", "checkpoint.every=0"]
BUSY = "import torch\na = torch.randn(384, 384)\nwhile True:\n    a @ a\n"


def iterations_per_second(threads: int, busy: int, seconds: float, workdir: Path) -> float:
    """Median perf/iters_per_s of the sinusoid preset over `seconds`, beside `busy` busy processes."""
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(busy)]
    run_dir = workdir / f"load_t{threads}_b{busy}"
    try:
        time.sleep(1.0 if busy else 0.0)  # let the busy processes take their cores
        job = subprocess.Popen(
            [
                *MAMLRUN,
                "experiment=sinusoid_paper",
                *QUIET,
                "meta_iterations=100000000",
                "log_every=50",
                f"threads={threads}",
                f"hydra.run.dir={run_dir}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while not metrics.is_file() and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.2)
        time.sleep(seconds)
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    rates = [
        json.loads(line)["perf/iters_per_s"] for line in metrics.read_text().splitlines() if "perf/" in line
    ]
    return statistics.median(rates[1:] or rates)  # the first window includes the warm-up


def sweep_seconds(launcher: str, threads: str, workdir: Path) -> float:
    """Wall time of a four-job sinusoid sweep."""
    sweep = workdir / f"sweep_{launcher}_{threads}"
    started = time.monotonic()
    subprocess.run(
        [
            *MAMLRUN,
            "-m",
            f"hydra/launcher={launcher}",
            "experiment=sinusoid_paper",
            *QUIET,
            "meta_iterations=3000",
            "log_every=500",
            "eval.tasks=100",
            f"threads={threads}",
            "seed=0,1,2,3",
            f"hydra.sweep.dir={sweep}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["load", "sweep"], help="run one benchmark")
    parser.add_argument("--seconds", type=float, default=12.0, help="measuring time per load condition")
    args = parser.parse_args()
    cores = usable_cores()
    print(
        f"{cores} usable cores; python {sys.version.split()[0]}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.only in (None, "load"):
            print("\nsinusoid preset, iterations/s (median of its perf/iters_per_s records)")
            print(
                f"{'beside':<22}{'threads=' + str(cores) + ' (old)':>20}{'threads=1 (new)':>18}{'new/old':>10}"
            )
            alone = {}
            for busy in (0, 1, 2):
                old = iterations_per_second(cores, busy, args.seconds, workdir)
                new = iterations_per_second(1, busy, args.seconds, workdir)
                alone.setdefault("old", old)
                alone.setdefault("new", new)
                what = "nothing" if busy == 0 else f"{busy} busy process{'es' if busy > 1 else ''}"
                print(f"{what:<22}{old:>20.1f}{new:>18.1f}{new / old:>9.1f}x")
            print(
                f"(slowdown per busy process is measured against the same setting alone: old {alone['old']:.0f}/s, new {alone['new']:.0f}/s)"
            )
        if args.only in (None, "sweep"):
            print("\nfour sinusoid jobs (3000 iterations each), sweep wall time in seconds")
            print(f"{'launcher':<18}{'threads=' + str(cores) + ' (old)':>20}{'threads=auto (new)':>20}")
            for launcher in ("basic", "local_parallel"):
                old = sweep_seconds(launcher, str(cores), workdir)
                new = sweep_seconds(launcher, "auto", workdir)
                print(f"{launcher:<18}{old:>20.1f}{new:>20.1f}")


if __name__ == "__main__":
    main()
