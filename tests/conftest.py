"""Shared helpers: real Hydra composition of conf/, the real CLI in a subprocess, W&B offline."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"

# No test may talk to W&B's servers; offline runs still write real local run files.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
# The suite runs two pytest-xdist workers on two cores, and the CLI runs they start take their
# `threads` (2 by default here): OpenMP's idle threads then yield their core instead of spinning on it
# (a 2-thread preset run took 32 s beside one busy process with spinning threads, 15 s without, 10 s
# alone). Only how idle threads wait changes: not the thread count, not a number.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# In-process tests run torch on one thread, whatever ran before them: two pytest-xdist workers on two
# cores then do not fight over them. (The CLI in a subprocess sets its own budget, `threads`.)
torch.set_num_threads(1)

# The one data setting: MAMLRUN_DATA (default ../shared/data, beside the repository). Made absolute
# here so CLI tests that run in a temporary directory find the same data.
DATA_DIR = Path(os.environ.get("MAMLRUN_DATA", REPO.parent / "shared" / "data")).resolve()
os.environ["MAMLRUN_DATA"] = str(DATA_DIR)
OMNIGLOT = DATA_DIR / "omniglot"
needs_omniglot = pytest.mark.skipif(
    not any(OMNIGLOT.glob("*.zip")) and not any(OMNIGLOT.rglob("*.png")),
    reason=f"real Omniglot images not found in {OMNIGLOT}: set MAMLRUN_DATA to a folder holding omniglot/ "
    "(CI has ../shared/data/omniglot)",
)
# Settings that let the full-Omniglot presets (1623 characters) run on the 242 minimal-set characters.
MINIMAL_PAPER_SPLIT = ["domain.tasks.train_classes=150", "domain.tasks.val_classes=20"]


def import_learn2learn() -> ModuleType:
    """The reference implementation the meta-gradient and sampler tests compare against. Imported
    quietly (it imports the unmaintained `gym`, which prints a banner); `make install` installs it."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            import learn2learn
    except ImportError as exc:
        raise ImportError(
            f"learn2learn is not installed ({exc}); run scripts/install_learn2learn.sh"
        ) from None
    return learn2learn


def compose_config(overrides: Sequence[str] = (), hydra_cfg: bool = False) -> DictConfig:
    """The config `mamlrun train <overrides>` would run, composed by Hydra from conf/."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def run_cli(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    env: dict | None = None,
    check: bool = False,
    launcher: Sequence[str] = (),
    fresh: bool = False,
) -> subprocess.CompletedProcess:
    """Run the real `mamlrun` command line in a process of its own: forked from the session's CLI fork
    server (tests/cli_server.py, the same entry point without 2 s of imports), or with `fresh` or a
    `launcher` (e.g. torchrun's `python -m torch.distributed.run --nproc_per_node=2`) as
    `python -m mamlrun` in a new interpreter, the way a user runs it."""
    # Hydra launchers that start worker processes (joblib's loky re-imports __main__) get a new
    # interpreter too.
    if fresh or launcher or any(arg.startswith("hydra/launcher=") for arg in args):
        full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
        proc = subprocess.run(
            [*(launcher or [sys.executable]), "-m", "mamlrun", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=full_env,
            stdin=subprocess.DEVNULL,
        )
    else:
        proc = forked_cli()(*args, cwd=cwd, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mamlrun {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


class ForkedCli:
    """The real CLI through tests/cli_server.py: each command a forked process of its own, without the
    2 s of imports a fresh interpreter pays; what run_cli uses unless told `fresh`."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.count = 0
        self.server = subprocess.Popen(
            [sys.executable, "-m", "tests.cli_server"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "WANDB_MODE": "offline"},
        )

    def __call__(
        self, *args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
    ) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = self.scratch / f"{self.count}.out", self.scratch / f"{self.count}.err"
        request = {
            "args": list(args),
            "cwd": str(cwd or Path.cwd()),
            "env": {**os.environ, "WANDB_MODE": "offline", **(env or {})},
            "stdout": str(out),
            "stderr": str(err),
            "timeout": timeout,
        }
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        reply = self.server.stdout.readline()
        assert reply, f"the CLI fork server exited ({self.server.poll()})"
        result = json.loads(reply)
        if result["timed_out"]:
            raise subprocess.TimeoutExpired(["mamlrun", *args], timeout)
        return subprocess.CompletedProcess(
            ["mamlrun", *args], result["returncode"], out.read_text(), err.read_text()
        )

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


_FORKED_CLI: list[ForkedCli] = []


def forked_cli() -> ForkedCli:
    """This process's CLI fork server, started on first use and stopped at exit."""
    if not _FORKED_CLI:
        scratch = Path(tempfile.mkdtemp(prefix="mamlrun-forked-cli-"))
        _FORKED_CLI.append(ForkedCli(scratch))
        atexit.register(_FORKED_CLI[0].close)
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return _FORKED_CLI[0]


def meta_test_results(run_dir: Path) -> list[dict]:
    """The `results` of a run's eval.json: one entry per K (supervised) or the return curve (RL)."""
    return json.loads((run_dir / "eval.json").read_text())["results"]


def latest_eval(run_dir: Path) -> Path:
    """The folder the latest `mamlrun eval` of `run_dir` wrote (RUN/eval/<date>_<time>)."""
    folders = sorted((Path(run_dir) / "eval").iterdir())
    assert folders, f"no evaluation under {run_dir / 'eval'}"
    return folders[-1]


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file below `folder`, by relative path (a run directory left alone keeps them).
    Links are left out: W&B's `logs/debug-core.log` points at its service's log in ~/.cache, which
    any later W&B process may write to."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def smoke_overrides(run_dir: Path, *extra: str) -> list[str]:
    """A seconds-long CPU run in `run_dir`."""
    return ["debug=smoke", f"hydra.run.dir={run_dir}", *extra]


@pytest.fixture
def smoke_cfg():
    """Compose a debug=smoke config with extra overrides (for in-process trainer calls)."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(["debug=smoke", *overrides])

    return make
