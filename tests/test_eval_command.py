"""`mamlrun eval` writes each evaluation into its own folder and W&B run, and refuses what cannot
take effect: the training run's results stay as they were."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import file_hashes, latest_eval, run_cli, smoke_overrides
from tests.test_wandb import offline_run, read_records


def test_eval_writes_its_own_folder_and_wandb_run_in_the_training_runs_group(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-02" / "03-04-05"
    overrides = smoke_overrides(tmp_path / "unused", "logger=wandb", "seed=0", f"hydra.sweep.dir={sweep}")
    run_cli("train", "-m", *overrides, cwd=tmp_path, check=True)
    run_dir = sweep / "0"
    before = file_hashes(run_dir)
    trained = json.loads((run_dir / "eval.json").read_text())

    proc = run_cli("eval", str(run_dir), "eval.tasks=12", "eval.steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = file_hashes(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before  # training results intact

    folder = latest_eval(run_dir)
    assert folder.parent == run_dir / "eval"
    for name in ("eval.json", "table.txt", "meta_test.png", "adaptation.png", "eval.log", "metrics.jsonl"):
        assert (folder / name).is_file(), name
    again = json.loads((folder / "eval.json").read_text())
    assert {r["num_tasks"] for r in again["results"]} == {12} and len(again["results"][0]["steps"]) == 4
    assert again["checkpoint"] == trained["checkpoint"]
    assert "mse K=5 (n=12)" in (folder / "table.txt").read_text()
    assert f"results in {folder}" in proc.stderr + proc.stdout

    run = next(r.run for r in read_records(offline_run(folder)) if r.HasField("run"))
    train_id = (run_dir / "wandb_run_id.txt").read_text().strip()
    assert run.job_type == "eval" and run.run_id != train_id
    assert run.run_group == "2026-01-02_03-04-05"  # the training run's group
    assert run.display_name == f"2026-01-02_03-04-05-0-eval-{folder.name}"


def test_eval_takes_a_logger_option_as_train_does(tmp_path):
    """`logger=none` picks the logger group's option (no W&B run), as on `mamlrun train`."""
    run_dir = tmp_path / "run"
    run_cli("train", *smoke_overrides(run_dir, "logger=wandb"), cwd=tmp_path, check=True)
    proc = run_cli("eval", str(run_dir), "logger=none", "eval.tasks=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = latest_eval(run_dir)
    assert (folder / "eval.json").is_file() and not (folder / "wandb").exists()


def test_a_checkpoint_of_another_domain_in_a_run_directory_is_refused(tmp_path):
    sinusoid, nav = tmp_path / "sinusoid", tmp_path / "nav"
    run_cli("train", *smoke_overrides(sinusoid), cwd=tmp_path, check=True)
    run_cli(
        "train",
        "experiment=nav2d_smoke",
        *smoke_overrides(nav, "meta_iterations=1", "eval.every=0", "eval.tasks=2"),
        cwd=tmp_path,
        check=True,
    )
    shutil.copy(nav / "checkpoints" / "last.pt", sinusoid / "checkpoints" / "best.pt")
    before = file_hashes(sinusoid)
    proc = run_cli("eval", str(sinusoid), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"mamlrun: error: checkpoint {sinusoid / 'checkpoints' / 'best.pt'} does not fit")
    assert (
        f"(domain.name='nav2d' in the checkpoint, 'sinusoid' in {sinusoid / '.hydra' / 'config.yaml'};"
        in line
    )
    assert "Traceback" not in proc.stderr and file_hashes(sinusoid) == before


BAD_EVAL_OVERRIDES = [
    ("domain=omniglot", "override 'domain=omniglot' cannot take effect in mamlrun eval"),
    ("model.hidden=[8]", "override 'model.hidden=[8]' cannot take effect in mamlrun eval"),
    ("meta_batch=3", "override 'meta_batch=3' cannot take effect in mamlrun eval"),
    ("alpha.value=0", "alpha.value=0 is invalid"),
    ("+foo=1", "override '+foo=1': only key=value is allowed here"),
    ("eval.taks=5", "override 'eval.taks=5': no setting named 'eval.taks'"),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    run_cli("train", *smoke_overrides(run_dir), cwd=run_dir.parent, check=True)
    return run_dir


@pytest.mark.parametrize("override,message", BAD_EVAL_OVERRIDES, ids=[b[0] for b in BAD_EVAL_OVERRIDES])
def test_an_eval_override_that_cannot_take_effect_is_refused(finished_run, override, message):
    before = file_hashes(finished_run)
    proc = run_cli("eval", str(finished_run), override, cwd=finished_run.parent)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mamlrun: error: {message}"), proc.stderr
    assert file_hashes(finished_run) == before and not (finished_run / "eval").exists()


@pytest.mark.parametrize(
    "command, record, text, message",
    [
        ("eval", "config.yaml", "eval:\n  steps: 3\n - oops\n", "config.yaml is not valid YAML"),
        ("eval", "config.yaml", "- a list\n", "config.yaml holds no run settings"),
        ("resume", "overrides.yaml", "- debug=smoke\nkey: [\n", "overrides.yaml is not valid YAML"),
        ("resume", "overrides.yaml", "debug: smoke\n", "overrides.yaml holds no list of overrides"),
    ],
)
def test_a_hand_edited_run_record_is_a_one_line_error(finished_run, tmp_path, command, record, text, message):
    """A `.hydra/` file edited into something else: one line naming the file, exit 2, nothing written."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / ".hydra" / record).write_text(text)
    before = file_hashes(run_dir)
    proc = run_cli(command, str(run_dir), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and str(run_dir) in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert file_hashes(run_dir) == before
