"""Checkpoints: atomic save, safe load, and the RNG state needed for exact resume.

A checkpoint is a dict of tensors and plain values (no pickled objects), so it can be loaded with
`torch.load(weights_only=True)`: opening a checkpoint can never run code. Writes go to a temporary
file in the same directory, are fsync'ed, then renamed over the target, so a crash mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlrun.runtime.errors import CheckpointError

FORMAT = "mamlrun-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"
# Seconds a write holds its finished temporary file before the rename (0: none). A fault-injection
# aid for the kill-anywhere tests: a small checkpoint is written in about a millisecond, too short
# for a test to freeze the writer inside the write on a loaded machine. Never set it in real runs.
WRITE_PAUSE_ENV = "MAMLRUN_FAULT_WRITE_PAUSE_S"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write `state` (plus format tags) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    buffer = io.BytesIO()  # serialised first: a failed write then reports the OS's reason (torch's would not)
    torch.save(payload, buffer)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        pause_before_rename()
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a file-size limit
        Path(tmp).unlink(missing_ok=True)
        kept = f"the previous {path.name} is intact" if path.is_file() else f"no {path.name} was written"
        raise CheckpointError(f"could not write checkpoint {path} ({exc.strerror or exc}); {kept}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def pause_before_rename() -> None:
    """Sleep `MAMLRUN_FAULT_WRITE_PAUSE_S` seconds where it is set (see WRITE_PAUSE_ENV)."""
    pause = os.environ.get(WRITE_PAUSE_ENV)
    if pause:
        time.sleep(float(pause))


def remove_partial_writes(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (a SIGKILL between
    `mkstemp` and the rename leaves `.last.pt.XXXX`); returns what was removed. Call it only while
    holding the run's lock: a live writer's temporary file looks the same."""
    removed = []
    for name in (LAST, BEST):
        for tmp in Path(folder).glob(f".{name}.*"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a mamlrun checkpoint safely; every failure is a one-line `CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        unsafe = next((line for line in lines if "GLOBAL" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and unsafe:
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects that could run code "
                f"({unsafe}); mamlrun checkpoints hold only tensors and plain values"
            ) from None
        detail = next((line for line in lines if "Weights only load failed" not in line), "")
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {detail})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mamlrun checkpoint (no '{FORMAT}' format tag)")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state.get('version')}; this mamlrun reads version {VERSION}"
        )
    return state


def saved_position(path: Path) -> str:
    """Where the checkpoint at `path` stands, as the sweep's and the report's lines say it:
    "saved at iteration I of N" (N: the run's meta_iterations, where recorded); a CheckpointError
    where it is missing or unreadable."""
    from omegaconf import OmegaConf

    state = load_checkpoint(path)
    iteration = state.get("iteration")
    total = OmegaConf.create(state["config"]).get("meta_iterations") if "config" in state else None
    where = f"saved at iteration {iteration}" + (f" of {total}" if total else "")
    if total and iteration == total:
        where += " (training done, the meta-test not)"
    return where


def chosen_checkpoint(run_dir: Path, use: str) -> Path:
    """The checkpoint a run's meta-test uses: best.pt when `use` is "best" and validation wrote one,
    else last.pt (eval.use)."""
    folder = checkpoint_dir(run_dir)
    if use == "best" and (folder / BEST).is_file():
        return folder / BEST
    return folder / LAST


def find_checkpoint(path: Path) -> Path:
    """A checkpoint file from a run directory (best.pt, else last.pt) or a file path as given."""
    path = Path(path)
    if path.is_dir():
        folder = checkpoint_dir(path) if checkpoint_dir(path).is_dir() else path
        for name in (BEST, LAST):
            if (folder / name).is_file():
                return folder / name
        raise CheckpointError(f"no checkpoint in {path}: expected {folder / BEST} or {folder / LAST}")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def load_state_strict(
    module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path
) -> None:
    """`module.load_state_dict` with a one-line error when names or shapes do not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if extra:
            parts.append(f"unexpected {extra[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{k} is {tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} here")
        raise CheckpointError(f"checkpoint {path} does not fit the configured {what}: " + "; ".join(parts))
    module.load_state_dict(state)


# ---------------------------------------------------------------- RNG state (exact resume)


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state as tensors and plain values (weights_only-safe)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name].cpu())
