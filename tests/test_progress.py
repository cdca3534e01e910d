"""Progress in a log file: the rate and ETA of the last interval, not the first iteration's."""

from __future__ import annotations

import io
import re

from mamlrun.runtime.progress import LogProgress
from tests.conftest import run_cli


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_log_lines_show_the_rate_of_the_last_interval_not_the_compiling_first_iteration():
    clock, out = Clock(), io.StringIO()
    progress = LogProgress(total=70_000, desc="meta-train", every=30.0, stream=out, clock=clock)
    clock.now = 33.5  # the first iteration compiles
    progress.update()
    progress.set_postfix({"loss": 0.123456})
    for _ in range(6100):  # then 200 it/s
        clock.now += 0.005
        progress.update()
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("meta-train: 1/70000 (0.0%) | 33.50 s/it over the last 00:34")
    steady = lines[1]
    assert re.search(r"\| 200\.\d\d it/s over the last 00:30 \|", steady), steady
    done = int(steady.split(": ")[1].split("/")[0])
    eta_minutes = (70_000 - done) / 200 / 60  # about 5 min 20 s at 200 it/s, not 600 hours
    h, m, s = ["0", *re.search(r"ETA (\S+)", steady).group(1).split(":")][-3:]
    assert abs(int(h) * 60 + int(m) + int(s) / 60 - eta_minutes) < 0.05, steady
    assert lines[-1].startswith("meta-train: 6101/70000") and "loss=0.1235" in lines[-1]


def test_a_run_logged_to_a_file_ends_with_a_progress_line(tmp_path):
    proc = run_cli("train", "debug=smoke", "progress=true", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("meta-train: ")]
    assert lines and lines[-1].startswith("meta-train: 4/4 (100.0%) |") and "ETA 00:00" in lines[-1], (
        proc.stderr
    )
    assert "\r" not in proc.stderr  # no tqdm redraws in a log
