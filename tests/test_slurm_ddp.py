"""Several nodes on Slurm (`hydra/launcher=slurm_ddp`) without a cluster: the preset composes with
one task per GPU, a task of a simulated multi-task Slurm job finds its place in the world from
the SLURM_* variables submitit reads, two such tasks join one gloo process group, and a whole
`mamlrun train -m hydra/launcher=slurm_ddp` on two simulated nodes (stand-in sbatch, srun and
sacct that run the tasks here) trains the sinusoid as one process does."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from mamlrun.runtime.errors import UserError
from mamlrun.runtime.slurm import WORLD_VARIABLES, export_world_from_slurm
from tests.conftest import compose_config, run_cli, smoke_overrides
from tests.test_distributed import SINUSOID, assert_same_run, train_losses

SLURM_VARIABLES = (
    "SUBMITIT_EXECUTOR",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_NTASKS",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NODEID",
    "SLURM_PROCID",
    "SLURM_LOCALID",
    "SLURM_JOB_NODELIST",
    "CUDA_VISIBLE_DEVICES",
)


def slurm_task(job: int, rank: int, nodes: int, per_node: int, hosts: str) -> dict[str, str]:
    """The variables Slurm (and submitit's sbatch script) give task `rank` of a job."""
    return {
        "SUBMITIT_EXECUTOR": "slurm",
        "SLURM_JOB_ID": str(job),
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODEID": str(rank // per_node),
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % per_node),
        "SLURM_JOB_NODELIST": hosts,
    }


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any world or Slurm description, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in (*WORLD_VARIABLES, *SLURM_VARIABLES)}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


# -- the preset -------------------------------------------------------------------------------


def test_the_preset_composes_with_one_task_per_gpu():
    cfg = compose_config(["hydra/launcher=slurm_ddp"], hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
    assert launcher.max_num_timeout > 0  # a timed-out job is requeued and resumes from last.pt

    cfg = compose_config(
        [
            "hydra/launcher=slurm_ddp",
            "hydra.launcher.nodes=3",
            "hydra.launcher.gpus_per_node=8",
            "experiment=omniglot_5w1s",
            "device=cuda",
        ],
        hydra_cfg=True,
    )
    assert (cfg.hydra.launcher.nodes, cfg.hydra.launcher.tasks_per_node) == (3, 8)
    assert cfg.domain.name == "omniglot"
    # what the launcher hands submitit: resolved, an integer
    params = instantiate(cfg.hydra.launcher).params
    assert (params["nodes"], params["gpus_per_node"], params["tasks_per_node"]) == (3, 8, 8)


# -- the world from Slurm's variables, in this process ---------------------------------------


@pytest.fixture
def env(monkeypatch):
    """No world or Slurm description; every variable set in the test is restored afterwards."""
    for key in (*WORLD_VARIABLES, *SLURM_VARIABLES):
        monkeypatch.setenv(key, "")  # remembers the value to restore, even when there was none
        monkeypatch.delenv(key)
    return monkeypatch


def world_in_environ() -> dict[str, str]:
    return {k: os.environ[k] for k in WORLD_VARIABLES if k in os.environ}


def test_a_task_of_a_two_node_job_exports_its_place_in_the_world(env):
    for key, value in slurm_task(4242, rank=5, nodes=2, per_node=4, hosts="gpu[07-08]").items():
        env.setenv(key, value)
    env.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    env.setenv("MASTER_ADDR", "login1")  # inherited from the submitting shell: not the job's master
    assert export_world_from_slurm("cuda") is True
    exported = world_in_environ()
    port = int(exported.pop("MASTER_PORT"))
    assert exported == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu07",
    }
    assert 1024 < port < 65536
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"  # every task sees its node's GPUs: cuda:LOCAL_RANK

    # rank 0, on the other node, meets it at the same address and port
    for key in WORLD_VARIABLES:
        env.delenv(key)
    for key, value in slurm_task(4242, rank=0, nodes=2, per_node=4, hosts="gpu[07-08]").items():
        env.setenv(key, value)
    assert export_world_from_slurm("cuda") is True
    assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["MASTER_ADDR"]) == ("0", "0", "gpu07")
    assert int(os.environ["MASTER_PORT"]) == port


def test_a_given_master_port_is_kept(env):
    for key, value in slurm_task(4242, rank=1, nodes=1, per_node=2, hosts="gpu07").items():
        env.setenv(key, value)
    env.setenv("MASTER_PORT", "29512")
    assert export_world_from_slurm("cpu") is True
    assert (os.environ["MASTER_PORT"], os.environ["MASTER_ADDR"], os.environ["RANK"]) == (
        "29512",
        "gpu07",
        "1",
    )


@pytest.mark.parametrize(
    "case",
    ["not a submitit job", "a one-task job", "torchrun set the world", "an executor submitit does not know"],
)
def test_nothing_is_exported_where_slurm_describes_no_world(env, case):
    if case != "not a submitit job":
        tasks = 1 if case == "a one-task job" else 2
        for key, value in slurm_task(4242, rank=0, nodes=1, per_node=tasks, hosts="gpu07").items():
            env.setenv(key, value)
    if case == "torchrun set the world":
        env.setenv("RANK", "1")
        env.setenv("WORLD_SIZE", "4")
    if case == "an executor submitit does not know":
        env.setenv("SUBMITIT_EXECUTOR", "elsewhere")
    before = world_in_environ()
    assert export_world_from_slurm("cpu") is False
    assert world_in_environ() == before


def test_a_task_that_cannot_see_gpu_local_rank_is_refused_in_one_line(env):
    for key, value in slurm_task(4242, rank=0, nodes=1, per_node=2, hosts="gpu07").items():
        env.setenv(key, value)
    env.setenv("CUDA_VISIBLE_DEVICES", "3")  # Slurm bound one GPU to each task (gpus_per_task=1)
    with pytest.raises(
        UserError, match=r"sees 1 GPU\(s\) \(CUDA_VISIBLE_DEVICES=3\) but its node runs 2 tasks"
    ):
        export_world_from_slurm("cuda")
    assert "RANK" not in os.environ
    assert export_world_from_slurm("cpu") is True  # on the CPU the GPUs do not matter


def test_submitits_local_executor_describes_its_tasks_the_same_way(env):
    """`hydra/launcher=submitit_local` with tasks_per_node > 1 (one machine)."""
    env.setenv("SUBMITIT_EXECUTOR", "local")
    for key, value in {
        "SUBMITIT_LOCAL_JOB_ID": "31337",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1",
        "SUBMITIT_LOCAL_NODEID": "0",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
    }.items():
        env.setenv(key, value)
    assert export_world_from_slurm("cpu") is True
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_WORLD_SIZE"]) == ("1", "2", "2")


# -- two simulated Slurm tasks join one process group ----------------------------------------

JOIN = """
import json, os, sys, torch
from mamlrun.runtime import distributed
from mamlrun.runtime.slurm import WORLD_VARIABLES, export_world_from_slurm
if sys.argv[1] == "export first":
    assert export_world_from_slurm("cpu")
world = distributed.start("cpu")  # its hook exports the world when nothing did
total = torch.tensor([float(world.rank + 1)])
world.sum([total])
print(json.dumps({"size": world.size, "rank": world.rank, "sum": total.item(),
                  **{k: os.environ.get(k) for k in WORLD_VARIABLES}}))
distributed.stop()
"""


@pytest.mark.parametrize("how", ["export first", "distributed.start alone"])
def test_two_simulated_slurm_tasks_join_one_gloo_process_group(tmp_path, how):
    """Two tasks of a job on two nodes (both here): one world of 2, the sum over both ranks."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", JOIN, how],
            env=clean_env(**slurm_task(5151, rank, nodes=2, per_node=1, hosts="localhost,localhost")),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    for rank, seen in enumerate(outputs):
        assert (seen["rank"], seen["size"], seen["sum"]) == (rank, 2, 3.0), seen  # 1 + 2, all-reduced
        assert (seen["RANK"], seen["WORLD_SIZE"]) == (str(rank), "2")
        assert (seen["LOCAL_RANK"], seen["LOCAL_WORLD_SIZE"]) == ("0", "1")  # one task per node
        assert seen["MASTER_ADDR"] == "localhost"
    assert outputs[0]["MASTER_PORT"] == outputs[1]["MASTER_PORT"]


# -- the whole command on two simulated nodes ------------------------------------------------

# Stand-ins for Slurm's commands, as submitit calls them: `sbatch FILE` starts the job (each element
# of an array) in the background and prints its id; the script's `srun ... python -m
# submitit.core._submit` starts nodes x ntasks-per-node tasks with the variables Slurm gives each;
# `sacct` knows a job once its script has ended (COMPLETED or FAILED: a job that fails without a
# result file then fails the command instead of leaving submitit waiting).
SBATCH = """#!{python}
import os, shlex, subprocess, sys
from pathlib import Path
home = Path(os.environ["FAKE_SLURM_DIR"])
script = Path(sys.argv[-1]).read_text()
(home / "sbatch.sh").write_text(script)
flags = {{}}
for line in script.splitlines():
    if line.startswith("#SBATCH --"):
        key, _, value = line[len("#SBATCH --"):].partition("=")
        flags[key] = shlex.split(value)[0] if value else True
nodes, per_node = int(flags.get("nodes", 1)), int(flags.get("ntasks-per-node", 1))
job = 7000
job_env = {{"SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NTASKS": str(nodes * per_node),
           "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_JOB_NODELIST": ",".join(["localhost"] * nodes)}}
if "array" in flags:
    first, last = (int(i) for i in flags["array"].split("%")[0].split("-"))
    elements = [({{"SLURM_JOB_ID": str(job + 1 + i), "SLURM_ARRAY_JOB_ID": str(job),
                  "SLURM_ARRAY_TASK_ID": str(i)}}, f"{{job}}_{{i}}") for i in range(first, last + 1)]
else:
    elements = [({{"SLURM_JOB_ID": str(job)}}, str(job))]
run = 'bash "$0"; [ $? = 0 ] && s=COMPLETED || s=FAILED; echo "$FAKE_SLURM_ID|$s|localhost" >> "$FAKE_SLURM_DIR/states"'
for element_env, element_id in elements:
    env = {{**os.environ, **job_env, **element_env, "FAKE_SLURM_ID": element_id}}
    with open(home / "batch.log", "a") as log:
        proc = subprocess.Popen(["bash", "-c", run, sys.argv[-1]], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    with open(home / "pids", "a") as pids:
        pids.write(f"{{proc.pid}}\\n")
print(f"Submitted batch job {{job}}")
"""

SRUN = """#!{python}
import os, subprocess, sys
from pathlib import Path
args, streams = sys.argv[1:], {{}}
while args[0].startswith("--"):
    flag = args.pop(0)
    if flag in ("--output", "--error"):
        streams[flag] = args.pop(0)
nodes, per_node = int(os.environ["SLURM_JOB_NUM_NODES"]), int(os.environ["SLURM_NTASKS_PER_NODE"])
procs = []
for rank in range(nodes * per_node):
    def named(pattern):
        for code, key in (("%A", "SLURM_ARRAY_JOB_ID"), ("%a", "SLURM_ARRAY_TASK_ID"), ("%j", "SLURM_JOB_ID")):
            pattern = pattern.replace(code, os.environ.get(key, ""))
        path = Path(pattern.replace("%t", str(rank)))
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a")
    out = named(streams["--output"])
    err = named(streams["--error"]) if "--error" in streams else subprocess.STDOUT
    env = {{**os.environ, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % per_node),
           "SLURM_NODEID": str(rank // per_node)}}
    procs.append(subprocess.Popen(args, env=env, stdout=out, stderr=err))
sys.exit(max(p.wait() for p in procs))
"""

SACCT = """#!/bin/sh
echo 'JobID|State|NodeList'
cat "$FAKE_SLURM_DIR/states" 2>/dev/null
exit 0
"""


def fake_slurm(folder: Path) -> Path:
    """A bin/ folder holding the stand-in sbatch, srun and sacct."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in [("sbatch", SBATCH), ("srun", SRUN), ("sacct", SACCT)]:
        path = bin_dir / name
        path.write_text(text.format(python=sys.executable) if name != "sacct" else text)
        path.chmod(0o755)
    return bin_dir


def end_jobs(folder: Path) -> None:
    """Kill what is left of the jobs the stand-in sbatch started (each in its own session)."""
    pids = folder / "pids"
    for pid in pids.read_text().split() if pids.is_file() else []:
        with contextlib.suppress(ProcessLookupError):  # the job's session has ended
            os.killpg(int(pid), signal.SIGKILL)


def test_slurm_ddp_on_two_simulated_nodes_trains_the_sinusoid_as_one_process(tmp_path):
    one, sweep, slurm = tmp_path / "one", tmp_path / "sweep", tmp_path / "slurm"
    bin_dir = fake_slurm(slurm)
    run_cli("train", *smoke_overrides(one, *SINUSOID), cwd=tmp_path, check=True)
    try:
        proc = run_cli(
            "train",
            "-m",
            "hydra/launcher=slurm_ddp",
            "hydra.launcher.nodes=2",
            "hydra.launcher.gpus_per_node=1",
            f"hydra.sweep.dir={sweep}",
            "debug=smoke",
            *SINUSOID,
            cwd=tmp_path,
            timeout=180,
            env={
                **clean_env(),
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "FAKE_SLURM_DIR": str(slurm),
            },
        )
    finally:
        end_jobs(slurm)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the job Slurm was asked for: 2 nodes, a task per GPU
    sbatch = (slurm / "sbatch.sh").read_text()
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=1", "--signal=USR2@120"):
        assert f"#SBATCH {flag}\n" in sbatch, sbatch
    # both tasks ran to the end in the world of two; rank 0 alone wrote the one run directory
    logs = sorted(sweep.glob(".submitit/7000/7000_*_log.out"))
    assert [p.name for p in logs] == ["7000_0_log.out", "7000_1_log.out"]
    for task_log in logs:
        assert "Job completed successfully" in task_log.read_text(), task_log.read_text()
    run = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir()) == [
        ".mamlrun", ".submitit", "0", "multirun.yaml", "report.csv", "report.md", "report.png"
    ]  # fmt: skip
    log_text = (run / "mamlrun.log").read_text()
    assert log_text.count("world size 2 (torch.distributed, cpu per rank)") == 1, log_text
    assert log_text.count("torch threads:") == 1, log_text  # rank 1's records never reach the file
    assert json.loads((run / "eval.json").read_text())["world_size"] == 2
    assert (run / ".hydra" / "config.yaml").is_file()
    # the same result as one process
    assert_same_run(one, run)
    assert train_losses(run) == pytest.approx(train_losses(one), abs=1e-6)
    assert len(train_losses(run)) == 6
