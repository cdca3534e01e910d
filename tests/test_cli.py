"""The command line: eval, resume, configs and version work (bad input: test_bad_input.py)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import latest_eval, meta_test_results, run_cli, smoke_overrides


def test_eval_reruns_the_protocol_with_overrides(tmp_path):
    run_dir = tmp_path / "run"
    run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path, check=True)
    first = json.loads((run_dir / "eval.json").read_text())
    proc = run_cli("eval", str(run_dir), "eval.tasks=12", "eval.shots=[5]", "eval.steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((latest_eval(run_dir) / "eval.json").read_text())
    assert [(r["shots"], r["num_tasks"], len(r["steps"])) for r in again["results"]] == [(5, 12, 4)]
    assert again["checkpoint"] == first["checkpoint"]
    # the same checkpoint and the same seeded tasks give the same numbers as the end of training
    proc = run_cli("eval", str(run_dir / "checkpoints" / "best.pt"), cwd=tmp_path, check=True)
    assert meta_test_results(latest_eval(run_dir)) == first["results"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing_dir"], "checkpoint not found"),
        (["RUN", "no_such_key=3"], "no setting named 'no_such_key'"),
        (["RUN", "eval.tasks=0"], "eval.tasks=0 is invalid"),
    ],
)
def test_eval_bad_input(tmp_path, args, message):
    run_dir = tmp_path / "run"
    if "RUN" in args:
        run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path, check=True)
    proc = run_cli("eval", *[str(run_dir) if a == "RUN" else a for a in args], cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr.strip().splitlines()[-1] and "Traceback" not in proc.stderr


def test_bare_overrides_mean_train(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*smoke_overrides(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "eval.json").is_file()


def test_configs_and_version(tmp_path):
    proc = run_cli("configs", cwd=tmp_path, check=True)
    for text in ["alpha  (default: constant)", "meta_sgd", "sinusoid_paper", "hydra/launcher", "slurm_gpu"]:
        assert text in proc.stdout
    proc = run_cli("version", cwd=tmp_path, check=True)
    assert proc.stdout.startswith("mamlrun ") and "torch" in proc.stdout


def test_resume_of_a_directory_that_is_not_a_run(tmp_path):
    proc = run_cli("resume", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"mamlrun: error: {tmp_path / 'nowhere'} is not a mamlrun run directory "
        f"(no {tmp_path / 'nowhere' / '.hydra' / 'overrides.yaml'})"
    ]


def test_hydra_flags_pass_through(tmp_path):
    proc = run_cli("train", "--cfg", "job", "experiment=sinusoid_paper_k5", cwd=tmp_path, check=True)
    assert "shots: 5" in proc.stdout and "meta_iterations: 70000" in proc.stdout
    proc = run_cli("train", "--info", "defaults", cwd=tmp_path, check=True)
    assert "domain/sinusoid" in proc.stdout


def test_diverging_adaptation_is_reported_not_hidden(tmp_path):
    """A huge test-time alpha makes adaptation blow up: eval.json stays strict JSON and says so."""
    run_dir = tmp_path / "run"
    run_cli("train", *smoke_overrides(run_dir), cwd=tmp_path, check=True)
    proc = run_cli("eval", str(run_dir), "alpha.value=1e6", "eval.steps=6", "eval.shots=[5]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = meta_test_results(latest_eval(run_dir))[0]
    assert result["diverged_tasks"] == result["num_tasks"] == 8
    assert result["mean"][-1] is None and result["mean"][0] is not None
    assert "adaptation diverged (NaN/inf) on 8 of 8 tasks" in proc.stderr + proc.stdout


def test_a_built_wheel_carries_the_whole_config_tree(tmp_path):
    """`pip install git+...` (not editable) must still find conf/: the wheel ships it as mamlrun/conf.

    Built from a clean copy of the sources (setuptools reuses an in-tree build/ directory)."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(
        repo,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv", "build", "*.egg-info", ".git", "*_cache", "outputs", "multirun"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mamlrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("mamlrun/conf/") for n in names if n.startswith("mamlrun/conf/")}
    in_repo = {str(p.relative_to(repo / "conf")) for p in (repo / "conf").rglob("*.yaml")}
    assert in_repo and shipped == in_repo


def test_tab_completion_after_train(tmp_path):
    """Hydra's bash completion calls `mamlrun -sc query=bash` with the typed line in COMP_LINE."""
    for line in ("mamlrun train dom", "mamlrun dom"):
        proc = run_cli(
            "-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))}
        )
        assert proc.returncode == 0, proc.stderr
        assert "domain=" in proc.stdout.split(), (line, proc.stdout)
