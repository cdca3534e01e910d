"""What a command writes into a run directory before the run is accepted: nothing.

Hydra writes `.hydra/` and starts the run's log file before the task function runs, so a rejected
command (a bad value, a second process, a checkpoint with other settings) would rewrite an existing
run's record. mamlrun turns Hydra's `.hydra/` off (`hydra.output_subdir: null`) and writes the same
three files itself once the run is accepted, and holds the log file's records until then: a
rejected command leaves an existing run directory byte for byte as it was.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from datetime import datetime
from logging.handlers import BufferingHandler
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mamlrun.runtime.errors import UserError, naming

HYDRA_DIR = ".hydra"
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job logging format


def read_record(path: Path, advice: str, as_config: bool = False) -> Any:
    """A `.hydra/` file's contents (`as_config`: parsed as OmegaConf parses a config); a file
    edited into something unreadable is a one-line error naming it, and `advice` says what to do."""
    try:
        text = path.read_text(encoding="utf-8")
        return OmegaConf.create(text) if as_config else yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = f"is not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__}{where})"
    except (OSError, UnicodeDecodeError, OmegaConfBaseException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        problem = f"cannot be read ({first})"
    raise UserError(f"{path} {problem}: mamlrun wrote it when the run started; {advice}")


def write_hydra_files(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra itself writes them."""
    folder = Path(run_dir) / HYDRA_DIR
    folder.mkdir(parents=True, exist_ok=True)
    records = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_cfg}),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
    }
    for name, text in records.items():
        with naming(folder / name):
            (folder / name).write_text(text, encoding="utf-8")


class HeldLogFile:
    """Holds back the records meant for the log file(s) until `accept()`; on a rejection they are
    dropped (the terminal still shows them: only file handlers are held)."""

    def __init__(self) -> None:
        self.root = logging.getLogger()
        self.files = [h for h in self.root.handlers if isinstance(h, logging.FileHandler)]
        self.buffer = BufferingHandler(capacity=1_000_000)
        self.accepted = False
        for handler in self.files:
            self.root.removeHandler(handler)
        if self.files:
            self.buffer.setLevel(min(h.level for h in self.files))
            self.root.addHandler(self.buffer)

    def accept(self) -> None:
        """The run is accepted: write what was held, and log to the file(s) from now on."""
        if self.accepted:
            return
        self.accepted = True
        self.root.removeHandler(self.buffer)
        for handler in self.files:
            self.root.addHandler(handler)
            for record in self.buffer.buffer:
                if record.levelno >= handler.level:
                    handler.handle(record)
        self.buffer.buffer.clear()

    def release(self) -> None:
        """Stop holding (the command ends): held records of a rejected run are dropped."""
        self.root.removeHandler(self.buffer)
        self.buffer.buffer.clear()


EVAL_DIR = "eval"


def new_eval_dir(run_dir: Path, now: datetime | None = None) -> Path:
    """A fresh `RUN/eval/<date>_<time>/` for one `mamlrun eval` (a suffix when two start in one second):
    each evaluation keeps its own results and leaves the training run's eval.json and figures alone."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    parent = Path(run_dir) / EVAL_DIR
    parent.mkdir(parents=True, exist_ok=True)
    for suffix in ["", *(f"_{n}" for n in range(1, 1000))]:
        folder = parent / f"{stamp}{suffix}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent / stamp}: a thousand evaluations started in one second")


def remove_eval_dir(folder: Path) -> None:
    """Remove the folder of an evaluation that failed (and `eval/` when it is left empty)."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only when empty


@contextlib.contextmanager
def log_file(path: Path) -> Iterator[None]:
    """Send the root logger's records to `path` too, while the block runs (an evaluation's log)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
