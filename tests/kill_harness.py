"""Kill-anywhere harness: SIGKILL real `mamlrun train` processes at chosen moments, re-run the same
command until it finishes, and compare what it leaves with an uninterrupted run of that command.

A kill point is one SIGKILL of a live process. Triggers pick the moment: a random delay after the
start (imports, Hydra, building, resuming), a random moment after a number of new training steps, the
last step (final validation, last.pt, meta-test), or the inside of a checkpoint write. The last one
SIGSTOPs the process when a `.last.pt.*`/`.best.pt.*` temporary file appears, checks that the file is
still there while the process is frozen, and only then SIGKILLs it (else it lets it go on and waits
for the next write), so "killed during a checkpoint write" is a fact, not a hope.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from mamlrun.runtime import checkpoint as ckpt
from mamlrun.runtime.lock import LOCK_FILE

POLL_S = 0.002
HOT_S = 0.5  # DuringWrite polls without pause this long after each metric record
TEMP_PREFIXES = tuple(f".{name}." for name in (ckpt.LAST, ckpt.BEST))


@dataclass(frozen=True)
class Preset:
    """One `mamlrun train` command (without hydra.run.dir) and how long one attempt may take."""

    name: str
    overrides: tuple[str, ...]
    total: int  # meta_iterations
    timeout_s: float = 300.0
    # Seconds each checkpoint write holds its temporary file before the rename (ckpt.WRITE_PAUSE_ENV):
    # a run whose writes take a millisecond is otherwise hard to freeze inside one on a busy machine.
    write_pause_s: float = 0.0

    def environment(self, base: dict[str, str]) -> dict[str, str]:
        """`base` with this preset's write pause, if any."""
        return {**base, ckpt.WRITE_PAUSE_ENV: str(self.write_pause_s)} if self.write_pause_s else base

    def command(self, run_dir: Path) -> list[str]:
        return [sys.executable, "-m", "mamlrun", "train", *self.overrides, f"hydra.run.dir={run_dir}"]


@dataclass
class Attempt:
    """One process started in a run directory: what was there before, and how it ended."""

    preset: str
    trigger: str
    resumed_from: int | None  # last.pt's iteration before the start (None: no last.pt)
    returncode: int | None = None
    killed: bool = False
    seconds: float = 0.0  # from the start to the kill (or to the exit)
    last_after: int | None = None  # last.pt's iteration after the process ended
    partial_writes: list[str] = field(default_factory=list)  # temporary checkpoint files it left
    log: Path | None = None

    @property
    def hit_write(self) -> bool:
        """The SIGKILL landed inside a checkpoint write (between the temporary file and the rename)."""
        return self.killed and bool(self.partial_writes)

    def describe(self) -> str:
        what = "SIGKILL" if self.killed else f"exit {self.returncode}"
        during = f", inside the write of {', '.join(self.partial_writes)}" if self.hit_write else ""
        return (
            f"{self.preset}: {self.trigger}: {what} after {self.seconds:.2f}s "
            f"(last.pt {self.resumed_from} -> {self.last_after}{during})"
        )


class Watch:
    """The live process of an attempt and what triggers read: its run directory and timings."""

    def __init__(self, proc: subprocess.Popen, run_dir: Path, resumed_from: int | None, total: int) -> None:
        self.proc = proc
        self.run_dir = run_dir
        self.folder = ckpt.checkpoint_dir(run_dir)
        self.resumed_from = resumed_from
        self.total = total
        self.start = time.monotonic()
        self.stale = set(temp_files(self.folder))  # left by an earlier kill; the run removes them

    def alive(self) -> bool:
        return self.proc.poll() is None

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def sleep_while_alive(self, seconds: float) -> bool:
        """Sleep `seconds` unless the process ends first; True if it is still alive."""
        end = time.monotonic() + seconds
        while self.alive():
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, POLL_S))
        return False

    def until_locked(self) -> bool:
        """Wait (polling slowly) until the process holds the run directory's lock, i.e. its imports
        and Hydra are done, so tight polling does not slow its startup; True if it is alive."""
        lock = self.run_dir / LOCK_FILE
        while self.alive():
            try:
                if lock.read_text().strip() == str(self.proc.pid):
                    return True
            except FileNotFoundError:
                pass
            time.sleep(5 * POLL_S)
        return False

    def newest_step(self) -> int:
        """The highest training step in metrics.jsonl (a killed attempt's records included until the
        new process truncates them: see `AfterSteps`)."""
        return last_train_step(self.run_dir / "metrics.jsonl")

    def freeze(self) -> bool:
        """SIGSTOP the process and wait until it is stopped; False if it ended first."""
        try:
            os.kill(self.proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            return False
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            state = process_state(self.proc.pid)
            if state is None or state == "Z":
                return False
            if state in "Tt":
                return True
            time.sleep(0.0002)
        raise AssertionError(f"process {self.proc.pid} did not stop within 5 s of SIGSTOP")

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


# ------------------------------------------------------------------------------------------ triggers


@dataclass(frozen=True)
class Delay:
    """Kill `seconds` after the process starts (startup, resume, or training, as it falls)."""

    seconds: float

    def describe(self) -> str:
        return f"{self.seconds:.2f}s after the start"

    def wait(self, watch: Watch) -> bool:
        return watch.sleep_while_alive(self.seconds)


@dataclass(frozen=True)
class AfterSteps:
    """Kill `jitter` seconds after the attempt logs `steps` new training steps (`final`: after the
    last step, i.e. during the final validation, the final last.pt or the meta-test).

    metrics.jsonl may still hold records of the killed attempt beyond last.pt until the new process
    truncates it; with checkpoint.every=1 that is at most step resumed_from + 1, so a target of at least
    resumed_from + 2 is only reached by records of this attempt.
    """

    steps: int = 2
    jitter: float = 0.0
    final: bool = False

    def describe(self) -> str:
        where = "the last step" if self.final else f"{self.steps} new steps"
        return f"{self.jitter * 1000:.0f} ms after {where}"

    def wait(self, watch: Watch) -> bool:
        start = watch.resumed_from or 0
        target = watch.total if self.final else start + max(self.steps, 2)
        if target < start + 2:  # too close to tell records of this attempt from stale ones
            return False
        while watch.alive() and watch.newest_step() < min(target, watch.total):
            time.sleep(POLL_S)
        return watch.sleep_while_alive(self.jitter)


@dataclass(frozen=True)
class DuringWrite:
    """Kill inside a write of checkpoints/`name` (last.pt or best.pt), skipping the first `skip`
    writes caught in progress, so different writes are hit."""

    name: str = ckpt.LAST
    skip: int = 0

    def describe(self) -> str:
        return f"inside write {self.skip + 1} of {self.name}"

    def wait(self, watch: Watch) -> bool:
        prefix, caught, seen = f".{self.name}.", 0, set(watch.stale)
        metrics, size, hot_until = watch.run_dir / "metrics.jsonl", -1, 0.0
        watch.until_locked()
        while watch.alive():
            # A checkpoint is written in a millisecond or two, right after a metric record (the step's
            # or the validation's): poll without pause for a while after metrics.jsonl changes.
            now, new_size = time.monotonic(), file_size(metrics)
            if new_size != size:
                size, hot_until = new_size, now + HOT_S
            fresh = [n for n in temp_files(watch.folder) if n.startswith(prefix) and n not in seen]
            if not fresh:
                if now > hot_until:
                    time.sleep(POLL_S / 2)
                continue
            if not watch.freeze():
                return False
            if any((watch.folder / n).exists() for n in fresh):  # frozen mid-write
                if caught == self.skip:
                    return True
                caught += 1
            seen.update(fresh)
            watch.thaw()
        return False


@dataclass(frozen=True)
class WhenFileAppears:
    """Kill as soon as the run directory holds `name` (e.g. eval.json: the meta-test's report)."""

    name: str

    def describe(self) -> str:
        return f"when {self.name} appears"

    def wait(self, watch: Watch) -> bool:
        path = watch.run_dir / self.name
        already = path.exists()
        watch.until_locked()
        while watch.alive():
            if path.exists() and not already:
                return True
            already = already and path.exists()
            time.sleep(POLL_S / 4)
        return False


class Stopwatch:
    """Never kills: times the run (start to first training record, last training record to exit),
    so kill moments can be drawn from an uninterrupted run's own timings."""

    def __init__(self) -> None:
        self.first_step_s = math.nan
        self.last_step_s = math.nan

    def describe(self) -> str:
        return "to the end (timed)"

    def wait(self, watch: Watch) -> bool:
        while watch.alive():
            step = watch.newest_step()
            if step >= 1 and math.isnan(self.first_step_s):
                self.first_step_s = watch.elapsed()
            if step >= watch.total and math.isnan(self.last_step_s):
                self.last_step_s = watch.elapsed()
            time.sleep(POLL_S)
        return False


class Trigger(Protocol):
    """Waits for the moment to kill: True to kill now (the process may be SIGSTOPped), False when
    the process ended first."""

    def describe(self) -> str: ...

    def wait(self, watch: Watch) -> bool: ...


# ------------------------------------------------------------------------------------------ running


def attempt(preset: Preset, run_dir: Path, trigger: Trigger | None, logs: Path, env: dict) -> Attempt:
    """Start `mamlrun train` in `run_dir`; SIGKILL it when `trigger` fires (None: let it finish)."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"attempt-{len(list(logs.iterdir())):02d}.log"
    record = Attempt(
        preset.name,
        trigger.describe() if trigger else "to the end",
        last_iteration(run_dir),
        log=log,
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            preset.command(run_dir),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=preset.environment(env),
            cwd=run_dir.parent,
        )
        watch = Watch(proc, run_dir, record.resumed_from, preset.total)
        try:
            if trigger is not None and trigger.wait(watch):
                proc.send_signal(signal.SIGKILL)  # a stopped process dies at once, in the state it was in
                record.seconds = watch.elapsed()
            record.returncode = proc.wait(timeout=preset.timeout_s)
            if not record.seconds:
                record.seconds = watch.elapsed()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    record.killed = record.returncode == -signal.SIGKILL
    record.last_after = last_iteration(run_dir)
    record.partial_writes = sorted(set(temp_files(watch.folder)) - watch.stale)
    return record


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run of a preset and its timings, to compare with and to draw moments from."""

    preset: Preset
    run_dir: Path
    startup_s: float  # from the start to the first training record
    step_s: float  # per training step
    final_s: float  # from the last training record to the exit (validation, last.pt, meta-test)
    best_iteration: int  # the last step that wrote best.pt (-1: none)


def reference_run(preset: Preset, run_dir: Path, env: dict) -> Reference:
    """Run `preset` once without a kill, timed."""
    clock = Stopwatch()
    done = attempt(preset, run_dir, clock, run_dir.parent / f"{run_dir.name}-logs", env)
    assert done.returncode == 0, f"the reference run failed:\n{tail(done.log)}"
    assert done.last_after == preset.total, (
        f"{preset.name} ran {done.last_after} iterations, not {preset.total}"
    )
    best = ckpt.checkpoint_dir(run_dir) / ckpt.BEST
    return Reference(
        preset,
        run_dir,
        startup_s=clock.first_step_s,
        step_s=(clock.last_step_s - clock.first_step_s) / max(preset.total - 1, 1),
        final_s=done.seconds - clock.last_step_s,
        best_iteration=int(ckpt.load_checkpoint(best)["best"]["iteration"]) if best.is_file() else -1,
    )


KINDS = ("delay", "write-last", "write-best", "steps", "final")


def choose(kind: str, done: int, ref: Reference, rng: random.Random) -> Trigger:
    """A trigger of `kind` (one of KINDS) that fires in a run resuming at iteration `done`; where
    `kind` cannot (no best.pt write or too few steps left), a kill inside a last.pt write, else a delay.
    Moments are drawn from `rng` and the reference run's timings."""
    left = ref.preset.total - done
    if kind == "write-best" and done < ref.best_iteration:  # the same steps improve as in the reference
        return DuringWrite(ckpt.BEST)
    if kind == "steps" and left >= 2:
        return AfterSteps(rng.randint(2, left), jitter=rng.uniform(0, ref.step_s))
    if kind == "final" and left >= 2:
        return AfterSteps(final=True, jitter=rng.uniform(0, 0.4 * ref.final_s))
    if kind != "delay" and left >= 1:
        return DuringWrite(ckpt.LAST, skip=rng.randrange(max(1, left // 3)))
    return Delay(rng.uniform(0.1, 0.5) * ref.startup_s)


def kill_and_finish(
    ref: Reference, run_dir: Path, kinds: Sequence[str], rng: random.Random, env: dict
) -> tuple[list[Attempt], Attempt]:
    """Run the reference's command in `run_dir` once per kind of kill (each SIGKILLed at a moment
    `choose` draws), then once more to the end; the killed attempts and the final one (which must
    succeed)."""
    logs = run_dir.parent / f"{run_dir.name}-logs"
    attempts = []
    for kind in kinds:
        trigger = choose(kind, last_iteration(run_dir) or 0, ref, rng)
        attempts.append(attempt(ref.preset, run_dir, trigger, logs, env))
    final = attempt(ref.preset, run_dir, None, logs, env)
    history = describe(*attempts, final)
    assert final.returncode == 0, f"the final run failed:\n{history}\n{tail(final.log)}"
    for a in attempts:
        assert a.killed, f"not killed: {a.describe()}:\n{history}\n{tail(a.log)}"
        if a.trigger.startswith("inside write"):  # frozen with the temporary file there, then killed
            assert a.hit_write, f"{a.describe()} left no temporary file\n{history}"
    return attempts, final


def describe(*attempts: Attempt) -> str:
    return "\n".join(a.describe() for a in attempts)


# ------------------------------------------------------------------------------------------ checks


def assert_same_as_reference(run_dir: Path, reference: Path, total: int, history: str = "") -> None:
    """The killed-and-rerun directory ends as the uninterrupted one: last.pt and best.pt bit for bit
    (every tensor, RNG state and value), no temporary checkpoint file, the same meta-test results,
    and metrics.jsonl with each training and validation record once and equal (timings aside).
    The meta-test's own record may be missing (see `assert_report_complete`), never doubled."""
    where = f"\nkill history:\n{history}" if history else ""
    for name in (ckpt.LAST, ckpt.BEST):
        ours, theirs = run_dir / "checkpoints" / name, reference / "checkpoints" / name
        assert ours.is_file() == theirs.is_file(), (
            f"{name}: here {ours.is_file()}, reference {theirs.is_file()}"
        )
        if theirs.is_file():
            differences = diff_states(ckpt.load_checkpoint(theirs), ckpt.load_checkpoint(ours), name)
            assert not differences, f"{name} differs from the uninterrupted run: {differences[:6]}{where}"
    assert ckpt.load_checkpoint(run_dir / "checkpoints" / ckpt.LAST)["iteration"] == total
    left = temp_files(run_dir / "checkpoints")
    assert not left, f"temporary checkpoint files left: {left}{where}"

    ours_eval, ref_eval = (json.loads((d / "eval.json").read_text()) for d in (run_dir, reference))
    for key in ("results", "headline", "iteration"):
        assert ours_eval[key] == ref_eval[key], f"eval.json {key} differs{where}"

    records = metric_records(run_dir / "metrics.jsonl")
    train_steps = [r["step"] for r in records if any(k.startswith("train/") for k in r)]
    assert train_steps == list(range(1, total + 1)), f"training steps logged: {train_steps}{where}"
    expected = metric_records(reference / "metrics.jsonl")
    training = [r for r in records if not is_meta_test(r)]
    assert training == [r for r in expected if not is_meta_test(r)], (
        f"metrics.jsonl differs: {first_difference(training, expected)}{where}"
    )
    tested = [r for r in records if is_meta_test(r)]
    assert tested in ([], [r for r in expected if is_meta_test(r)]), f"meta-test records: {tested}{where}"


def assert_report_complete(run_dir: Path, reference: Path, history: str = "") -> None:
    """Everything the meta-test reports is there as in the uninterrupted run: its metrics.jsonl
    record once, every file of the run directory (figures, table.txt), table.txt equal."""
    where = f"\nkill history:\n{history}" if history else ""
    records = [r for r in metric_records(run_dir / "metrics.jsonl") if is_meta_test(r)]
    expected = [r for r in metric_records(reference / "metrics.jsonl") if is_meta_test(r)]
    assert records == expected, (
        f"meta-test records in metrics.jsonl: {len(records)}, reference {len(expected)}{where}"
    )
    for theirs in reference.iterdir():
        ours = run_dir / theirs.name
        assert ours.exists(), f"{theirs.name} is missing{where}"
        if theirs.is_file():
            assert ours.stat().st_size > 0 or theirs.stat().st_size == 0, f"{theirs.name} is empty{where}"
    if (reference / "table.txt").is_file():
        assert (run_dir / "table.txt").read_text() == (reference / "table.txt").read_text(), (
            f"table.txt{where}"
        )


def is_meta_test(record: dict) -> bool:
    return any(k.startswith("eval/") for k in record)


def diff_states(a: Any, b: Any, path: str) -> list[str]:
    """Where two checkpoint values differ: tensors bit for bit (dtype and shape too), the rest by ==."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))} in one only"]
        return [d for k in a for d in diff_states(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in diff_states(x, y, f"{path}[{i}]")
        ]
    if torch.is_tensor(a) and torch.is_tensor(b):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [f"{path}: tensors differ"]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if type(a) is type(b) and a == b else [f"{path}: {a!r} vs {b!r}"]


def metric_records(path: Path) -> list[dict]:
    """metrics.jsonl without the timing values (perf/*), which no two runs share."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]


def first_difference(ours: list[dict], theirs: list[dict]) -> str:
    for i, (a, b) in enumerate(zip(ours, theirs, strict=False)):
        if a != b:
            return f"record {i}: {a} vs the reference's {b}"
    return f"{len(ours)} records vs the reference's {len(theirs)}"


# ------------------------------------------------------------------------------------------ helpers


def temp_files(folder: Path) -> list[str]:
    """Names of temporary checkpoint files (`.last.pt.XXXX`, `.best.pt.XXXX`) in `folder`."""
    try:
        return [n for n in os.listdir(folder) if n.startswith(TEMP_PREFIXES)]
    except FileNotFoundError:
        return []


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def last_iteration(run_dir: Path) -> int | None:
    path = ckpt.checkpoint_dir(run_dir) / ckpt.LAST
    return int(ckpt.load_checkpoint(path)["iteration"]) if path.is_file() else None


def last_train_step(path: Path) -> int:
    """The highest step of a training record (train/* keys) in metrics.jsonl; 0 if none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return 0
    for line in reversed(text.splitlines()):
        if '"train/' in line:
            try:
                return int(json.loads(line)["step"])
            except (json.JSONDecodeError, KeyError):
                continue  # being written
    return 0


def process_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat (R, S, T, Z, ...); None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def tail(log: Path | None, lines: int = 30) -> str:
    return "" if log is None else "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
