"""`mamlrun report` and the report at the end of every sweep: real sweeps of short runs, the
report's figures recomputed from the runs' own eval.json."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from mamlrun.report.aggregate import t975
from tests.conftest import needs_omniglot, run_cli

SMOKE = ("debug=smoke", "eval.tasks=6")


def sweep(tmp_path: Path, name: str, *overrides: str, expect: int = 0) -> Path:
    folder = tmp_path / name
    proc = run_cli("train", "-m", *SMOKE, *overrides, f"hydra.sweep.dir={folder}", cwd=tmp_path)
    assert proc.returncode == expect, proc.stderr
    return folder


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_students_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 41), 60, 100, 1000]:
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4), df


@pytest.fixture(scope="module")
def order_sweep(tmp_path_factory) -> Path:
    """order=first,second x seed=0,1,2 on the sinusoid: six short runs."""
    tmp_path = tmp_path_factory.mktemp("order_sweep")
    return sweep(tmp_path, "sweep", "order=first,second", "seed=0,1,2")


def test_a_sweep_ends_in_its_report_with_seeds_aggregated(order_sweep):
    for name in ("report.md", "report.csv", "report.png"):
        assert (order_sweep / name).is_file(), name
    rows = csv_rows(order_sweep / "report.csv")
    assert {r["group"] for r in rows} == {"order=first", "order=second"}
    assert {r["n"] for r in rows} == {"3"}
    # recompute every cell from the runs' own eval.json: the mean of the runs' means, Student t across them
    runs: dict[str, list[dict]] = {"first": [], "second": []}
    for job in sorted(p for p in order_sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        order = "first" if "order=first" in overrides else "second"
        runs[order].append(json.loads((job / "eval.json").read_text()))
    assert [len(v) for v in runs.values()] == [3, 3]
    for row in rows:
        payloads = runs[row["group"].split("=")[1]]
        curves = [next(c for c in p["results"] if c["shots"] == int(row["shots"])) for p in payloads]
        step = int(row["step"])
        means = [c["mean"][step] for c in curves]
        expected_ci = 4.302653 * statistics.stdev(means) / math.sqrt(3)  # t(0.975, 2)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(means), rel=1e-12)
        assert float(row["ci95"]) == pytest.approx(expected_ci, rel=1e-4)
        assert float(row["within_ci95"]) == pytest.approx(statistics.fmean(c["ci95"][step] for c in curves))
    # the best group per K and step is the lower MSE, and it is marked in the table
    for shots_step in {(r["shots"], r["step"]) for r in rows}:
        pair = [r for r in rows if (r["shots"], r["step"]) == shots_step]
        best = min(pair, key=lambda r: float(r["mean"]))
        assert [r["best"] for r in pair if r is best] == ["1"] and sum(int(r["best"]) for r in pair) == 1
    text = (order_sweep / "report.md").read_text()
    assert "6 run(s): 6 finished." in text and "**" in text and "| order=first | 5 | 3 |" in text


def test_report_command_groups_by_a_chosen_key_and_writes_latex(order_sweep, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(
        "report", str(order_sweep / "*"), "--by", "seed", "--over", "order", "--latex", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(out / "report.csv")
    assert {r["group"] for r in rows} == {"seed=0", "seed=1", "seed=2"} and {r["n"] for r in rows} == {"2"}
    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{" in tex and "seed=1" in tex
    assert "| seed=0 |" in proc.stdout  # the table on the terminal too


def test_a_single_run_group_shows_its_own_interval_and_n_1(order_sweep, tmp_path):
    job = order_sweep / "0"
    proc = run_cli("report", str(job), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    own = json.loads((job / "eval.json").read_text())["results"][0]
    row = next(
        r for r in csv_rows(tmp_path / "report.csv") if r["shots"] == str(own["shots"]) and r["step"] == "1"
    )
    assert row["n"] == "1" and float(row["ci95"]) == pytest.approx(own["ci95"][1])


def test_a_failed_and_a_diverged_job_are_listed_never_averaged(tmp_path):
    folder = sweep(tmp_path, "sweep", "optimizer.lr=0.001,inf", expect=2)  # the basic launcher stops on job 1
    text = (folder / "report.md").read_text()
    assert "2 run(s): 1 finished, 1 failed." in text
    assert "**failed**: optimizer.lr=inf is invalid" in text
    assert {r["n"] for r in csv_rows(folder / "report.csv")} == {"1"}
    diverged = sweep(
        tmp_path, "diverged", "optimizer.lr=1e8", "alpha.value=1e4", expect=3
    )  # exit 3: diverged
    text = (diverged / "report.md").read_text()
    assert "**diverged**: training diverged" in text and "|---|" not in text  # no table of nothing


def test_a_run_whose_meta_test_did_not_end_is_listed_with_where_it_saved(order_sweep, tmp_path):
    """A run killed after training (last.pt at its final iteration, no eval.json) is unfinished,
    with the line the sweep's stop prints too, never averaged."""
    import shutil

    from mamlrun.runtime import checkpoint as ckpt

    run = tmp_path / "run"
    shutil.copytree(order_sweep / "0", run)
    (run / "eval.json").unlink()
    total = ckpt.load_checkpoint(run / "checkpoints" / ckpt.LAST)["iteration"]
    proc = run_cli("report", str(run), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "out" / "report.md").read_text()
    assert f"**unfinished**: saved at iteration {total} of {total} (training done, the meta-test not)" in text
    assert "1 run(s): 1 unfinished." in text and "|---|" not in text  # no table of nothing


def test_a_run_with_a_damaged_overrides_file_is_still_reported(order_sweep, tmp_path):
    """.hydra/overrides.yaml edited into bytes that are not UTF-8: the report still reads the
    run's results (its settings then come from its config), no traceback."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(order_sweep / "0", run)
    (run / ".hydra" / "overrides.yaml").write_bytes(b"- seed=\xff\xfe\n")
    proc = run_cli("report", str(run), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 run(s): 1 finished." in (tmp_path / "out" / "report.md").read_text()


@needs_omniglot
def test_runs_of_two_domains_are_separated(order_sweep, tmp_path):
    omniglot = tmp_path / "omniglot"
    proc = run_cli("train", *SMOKE, "experiment=omniglot_minimal", f"hydra.run.dir={omniglot}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("report", str(order_sweep / "0"), str(omniglot), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    rows = csv_rows(tmp_path / "report.csv")
    assert {(r["domain"], r["metric"]) for r in rows} == {("sinusoid", "mse"), ("omniglot", "acc")}
    assert "one table each, never averaged together" in proc.stdout


def test_optuna_trials_are_listed_with_their_parameters(tmp_path):
    folder = sweep(tmp_path, "optuna", "hparams_search=sinusoid_optuna", "hydra.sweeper.n_trials=2")
    text = (folder / "report.md").read_text()
    assert "Optuna trials, best first (minimize best/val_metric)" in text
    assert "| trial | alpha.value | optimizer.lr | best/val_metric | state |" in text
    records = [json.loads(p.read_text()) for p in sorted((folder / ".mamlrun" / "jobs").glob("*.json"))]
    values = sorted(r["value"] for r in records)
    lines = [line for line in text.splitlines() if line.startswith("| ") and line.endswith("| finished |")]
    assert [float(line.split(" | ")[3]) for line in lines] == pytest.approx(values, rel=1e-5)  # best first


def test_the_sweep_report_goes_to_the_sweeps_wandb_group(tmp_path):
    folder = sweep(tmp_path, "wb", "logger=wandb", "seed=0,1")
    runs = list((folder / ".mamlrun" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # the report's run (the jobs log into their own folders)
    tables = list(runs[0].rglob("report/table*.table.json"))
    assert tables, list(runs[0].rglob("*"))
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["domain", "metric", "group"] and len(table["data"]) == 9  # 3 K x 3 steps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/dir"], "/no/such/dir does not exist"),
        (["--by", "no.such.key", "{sweep}"], "--by no.such.key: no run has this setting"),
        (["--eval", "a/b", "{sweep}"], "--eval='a/b' is invalid"),
    ],
)
def test_bad_report_arguments_end_in_one_line(order_sweep, args, message):
    proc = run_cli("report", *(a.format(sweep=order_sweep) for a in args))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
