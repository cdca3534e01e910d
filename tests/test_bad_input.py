"""Bad input, table-driven: every case is a real `mamlrun` command that must end with exit code 2
and one line on stderr naming the bad value (and what is valid), print no traceback, and leave an
existing finished run directory byte for byte as it was, also when the command points at it.

Placeholders in a case's arguments: RUN is the finished run, TMP a folder holding a file, an empty
folder, a config folder with a YAML syntax error, three broken checkpoints and two copies of the run
whose eval/ cannot take a new folder. No case needs the
Omniglot images: data errors are caught before any image is read.

Each command runs in a process of its own forked from tests/cli_server.py (run_cli: the real entry
point, its own cwd, environment, stdio and exit code), without the 2 s of imports per case that a
fresh interpreter pays; test_presets.py runs every preset in fresh interpreters.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from mamlrun.runtime import checkpoint as ckpt
from tests.conftest import file_hashes, run_cli, smoke_overrides
from tests.test_checkpoint import RunsCode


class Case(NamedTuple):
    args: str  # the command line after `mamlrun`, with RUN and TMP placeholders
    message: str  # what the one stderr line must contain (after "mamlrun: error: ")
    env: dict[str, str] = {}  # noqa: RUF012 - read only


SMOKE = "train debug=smoke"
NAV = "train experiment=nav2d_smoke debug=smoke"
OMNIGLOT = "train experiment=omniglot_minimal debug=smoke"
ML1 = "train experiment=ml1_reach_smoke"  # Meta-World's cases skip where the extra is not installed
GROUPS = ["domain", "model", "optimizer", "order", "alpha", "logger", "experiment", "hparams_search"]

CASES: list[Case] = [
    # ---- the command line and Hydra
    Case("nonexistent_command", "unknown command 'nonexistent_command': choose train, eval, resume"),
    *[
        Case(f"{SMOKE} {group}=nope", f"{group}=nope: no such option in group {group}; valid: ")
        for group in GROUPS
    ],
    Case(
        f"{SMOKE} hydra/launcher=nope",
        "hydra/launcher=nope: no such option in group hydra/launcher; valid: basic",
    ),
    Case(
        f"{SMOKE} hydra/sweeper=nope",
        "hydra/sweeper=nope: no such option in group hydra/sweeper; valid: basic",
    ),
    Case(
        f"{SMOKE} meta_test=nope", "Could not override 'meta_test'. Did you mean to override meta_test@eval?"
    ),
    Case(f"{SMOKE} foo=1", "override 'foo=1': no setting named 'foo'; valid top-level keys: seed, device"),
    Case(
        f"{SMOKE} eval.taks=5",
        "override 'eval.taks=5': no setting named 'eval.taks'; valid keys under eval: steps",
    ),
    Case(
        f"{SMOKE} optimizer.betas=[2,0.9]", "no setting named 'optimizer.betas'; valid keys under optimizer: "
    ),
    Case(f"{SMOKE} +foo=1", "override '+foo=1': mamlrun reads no setting named 'foo'"),
    Case(f"{SMOKE} seed=1 seed=2", "seed is given twice ('seed=1' and 'seed=2'): give it once"),
    Case(f"{SMOKE} -m seed=1,2 --cfg hydra", "--multirun (-m) and --cfg hydra cannot be combined"),
    Case(f"{SMOKE} --bogus", "unrecognized arguments: --bogus"),
    Case(f"{SMOKE} seed=[1", "bad override: no viable alternative at input '[1'"),
    Case(f"{SMOKE} --config-dir TMP/nowhere", "Additional config directory 'TMP/nowhere' not found"),
    Case(
        f"{SMOKE} --config-dir TMP/user_conf domain=bad",
        "YAML syntax error in TMP/user_conf/domain/bad.yaml line 2",
    ),
    Case(
        f"{SMOKE} hydra.searchpath=[file://TMP/user_conf] domain=bad",
        "YAML syntax error in TMP/user_conf/domain/bad.yaml line 2",
    ),
    Case(
        f"{SMOKE} hydra.run.dir=TMP/a_file",
        "cannot write TMP/a_file (File exists): choose a place you can write",
    ),
    Case(
        f"{SMOKE} hydra.run.dir=/sys/mamlrun_run", "cannot write /sys/mamlrun_run (Operation not permitted)"
    ),
    Case(
        f"{SMOKE} -m hydra.sweep.dir=TMP/a_file seed=1",
        "cannot write TMP/a_file (File exists): choose a place you can write",
    ),
    Case("configs extra", "Got unexpected extra argument(s) (extra)"),
    Case("version --bogus", "No such option: --bogus"),
    Case("eval", "Missing argument 'target'"),
    # ---- run-level values
    Case(f"{SMOKE} seed=-1", "seed=-1 is invalid: the seed must be an integer >= 0"),
    Case(f"{SMOKE} seed={2**70}", f"seed={2**70} is invalid: a seed must be an integer >= 0 and below 2**63"),
    Case(f"{SMOKE} eval.seed={2**63}", f"eval.seed={2**63} is invalid: a seed must be"),
    Case(f"eval RUN eval.seed={2**64}", f"eval.seed={2**64} is invalid: a seed must be"),
    Case(
        f"{SMOKE} model._target_=os.system",
        "model: could not build os.system: Hydra refuses to instantiate it: Target 'os.system' is blocklisted",
    ),
    Case(f"{SMOKE} seed=1.5", "seed=1.5 is invalid"),
    Case(f"{SMOKE} seed=abc", "seed='abc' is invalid"),
    Case(f"{SMOKE} meta_batch=0", "meta_batch=0 is invalid: the meta-batch (tasks per meta-update) must be"),
    Case(f"{SMOKE} meta_batch=true", "meta_batch=True is invalid"),
    Case(f"{SMOKE} meta_iterations=-1", "meta_iterations=-1 is invalid"),
    Case(f"{SMOKE} inner_steps=-1", "inner_steps=-1 is invalid"),
    Case(f"{SMOKE} chunk_size=0", "chunk_size=0 is invalid: chunk_size (tasks per vmapped chunk) must be"),
    Case(f"{SMOKE} log_every=0", "log_every=0 is invalid"),
    Case(f"{SMOKE} eval.steps=-1", "eval.steps=-1 is invalid"),
    Case(f"{SMOKE} eval.tasks=0", "eval.tasks=0 is invalid"),
    Case(f"{SMOKE} eval.every=-1", "eval.every=-1 is invalid"),
    Case(f"{SMOKE} eval.val_tasks=0", "eval.val_tasks=0 is invalid"),
    Case(f"{SMOKE} eval.seed=-1", "eval.seed=-1 is invalid"),
    Case(f"{SMOKE} eval.use=worst", "eval.use='worst' is invalid: choose best or last"),
    Case(f"{SMOKE} eval.query=0", "eval.query=0 is invalid"),
    Case(f"{SMOKE} eval.shots=[5,0]", "eval.shots[1]=0 is invalid"),
    Case(
        f"{SMOKE} eval.support_range=[0,6]",
        "eval.support_range=[0.0, 6.0] is invalid: need x_range[0] <= low",
    ),
    Case(
        f"{SMOKE} eval.support_range=[-5,5]",
        "eval.support_range=[-5.0, 5.0] is invalid: covers all of x_range",
    ),
    Case(
        f"{SMOKE} eval.support_range=[3,1]", "eval.support_range=[3, 1] is invalid: need finite low <= high"
    ),
    Case(
        f"{SMOKE} eval.support_range=5",
        "eval.support_range=5 is invalid: give a [low, high] pair, e.g. [0, 5]",
    ),
    Case(f"{NAV} eval.support_range=[0,5]", "no setting named 'eval.support_range'; valid keys under eval: "),
    Case(f"{SMOKE} eval.alpha_values=0.2", "eval.alpha_values=0.2 is invalid: give a list of step sizes > 0"),
    Case(
        f"{NAV} eval.alpha_values=[0.2,-1]", "eval.alpha_values[1]=-1 is invalid: the inner step size must be"
    ),
    Case(
        f"{SMOKE} alpha=meta_sgd eval.alpha_values=[0.2]",
        "eval.alpha_values=[0.2] is invalid: MetaSGDAlpha meta-trains its own step sizes",
    ),
    Case(f"{OMNIGLOT} model.zero_head=maybe", "model.zero_head='maybe' is invalid: true or false"),
    Case(
        f"{OMNIGLOT} model.zero_head=true inner_steps=0",
        "model.zero_head=True is invalid: a zero head learns only in the inner loop, and inner_steps=0",
    ),
    Case(f"{SMOKE} checkpoint.every=-1", "checkpoint.every=-1 is invalid"),
    Case(f"{SMOKE} checkpoint.resume=perhaps", "checkpoint.resume='perhaps' is invalid: "),
    Case(f"{SMOKE} progress=2", "progress=2 is invalid: progress (the progress bar) is true or false"),
    Case(f"{SMOKE} device=tpu", "device='tpu' is invalid: choose auto, cpu, cuda or cuda:N"),
    Case(f"{SMOKE} compile=maybe", "compile='maybe' is invalid"),
    # ---- every group's own values
    Case(f"{SMOKE} model.hidden=[0]", "model.hidden[0]=0 is invalid: layer widths must be >= 1"),
    Case(f"{SMOKE} model.activation=swish", "model.activation='swish' is invalid"),
    Case(f"{NAV} model.std_head=both", "model.std_head='both' is invalid: choose parameter or shared"),
    Case(f"{NAV} model.mean_activation=relu", "model.mean_activation='relu' is invalid: choose null"),
    Case(f"{NAV} optimizer.curvature=gauss", "optimizer.curvature='gauss' is invalid: choose fisher"),
    Case(f"{NAV} model.min_std=1.5 model.max_std=0.5", "model.max_std=0.5 is invalid: must be above"),
    Case(f"{SMOKE} model=conv4", "model: needs domain.in_channels, which this configuration lacks"),
    Case(
        f"{SMOKE} optimizer.lr=inf",
        "optimizer.lr=inf is invalid: the meta learning rate must be a finite number > 0",
    ),
    Case(f"{SMOKE} optimizer.lr=0", "optimizer.lr=0 is invalid"),
    Case(f"{SMOKE} optimizer=sgd optimizer.lr=-1", "optimizer.lr=-1 is invalid"),
    Case(
        f"{SMOKE} optimizer=trpo",
        "is the meta-RL outer step (optimizer=trpo); domain sinusoid takes a torch optimizer",
    ),
    Case(
        f"{SMOKE} order.first_order=maybe",
        "order.first_order='maybe' is invalid: order.first_order (FOMAML) is true",
    ),
    Case(
        f"{SMOKE} alpha.value=inf",
        "alpha.value=inf is invalid: the inner step size must be a finite number > 0",
    ),
    Case(f"{SMOKE} alpha.value=-0.5", "alpha.value=-0.5 is invalid"),
    Case(f"{SMOKE} alpha=learned alpha.init=0", "alpha.init=0 is invalid"),
    Case(f"{SMOKE} alpha=per_step alpha.values=[0.1,-1]", "alpha.values[1]=-1 is invalid"),
    Case(f"{SMOKE} logger=wandb logger.mode=bogus", "logger.mode='bogus' is invalid: choose offline, online"),
    Case(f"{SMOKE} logger=wandb logger.init_timeout=0", "logger.init_timeout=0 is invalid: seconds to reach"),
    Case(f"{SMOKE} domain.shots=0", "domain.shots=0 is invalid: K (support examples per task) must be"),
    Case(f"{SMOKE} domain.tasks.amplitude=[5.0,0.1]", "domain.tasks.amplitude=[5.0, 0.1] is invalid"),
    Case(f"{SMOKE} domain.tasks.phase=[3.0,1.0]", "domain.tasks.phase=[3.0, 1.0] is invalid"),
    Case(f"{NAV} domain.rollouts=0", "domain.rollouts=0 is invalid: episodes per task per step must be"),
    Case(f"{NAV} domain.horizon=0", "domain.horizon=0 is invalid"),
    Case(f"{NAV} eval.episodes=0", "eval.episodes=0 is invalid"),
    Case(f"{NAV} optimizer.max_kl=0", "optimizer.max_kl=0 is invalid: the KL bound must be > 0"),
    Case(
        f"{NAV} domain.tasks.goal_range=[1,-1]",
        "domain.tasks.goal_range=[1, -1] is invalid: need low <= high",
    ),
    Case(
        "train experiment=halfcheetah_vel_smoke debug=smoke domain.tasks.env_id=Nope-v5",
        "domain.tasks.env_id='Nope-v5' is not a gymnasium environment here",
    ),
    # ---- data roots and files
    Case(f"{OMNIGLOT} domain.tasks.root=TMP/nowhere", "domain.tasks.root=TMP/nowhere: does not exist; get "),
    Case(
        f"{OMNIGLOT} domain.tasks.root=TMP/a_file",
        "domain.tasks.root=TMP/a_file: holds no <Alphabet>/<character>",
    ),
    Case(
        f"{OMNIGLOT} domain.tasks.root=TMP/empty",
        "domain.tasks.root=TMP/empty: holds no <Alphabet>/<character>",
    ),
    Case(f"{OMNIGLOT} domain.tasks.download=maybe", "domain.tasks.download='maybe' is invalid"),
    Case(
        f"{OMNIGLOT} domain.tasks.split=sideways",
        "domain.tasks.split='sideways' is invalid: choose paper or alphabet",
    ),
    Case(
        "train domain=miniimagenet debug=smoke domain.tasks.root=TMP/empty domain.tasks.download=false",
        "domain.tasks.root=TMP/empty: holds neither format; expected mini-imagenet-cache",
    ),
    # ---- checkpoints and run directories
    Case(
        f"{SMOKE} hydra.run.dir=RUN seed=5",
        "run directory RUN holds a run with other settings (seed=0 in the",
    ),
    Case(f"{SMOKE} hydra.run.dir=RUN model.hidden=[8]", "(model.hidden=[40, 40] in the checkpoint, [8] now)"),
    Case(
        "resume RUN seed=5",
        "run directory RUN holds a run with other settings (seed=0 in the checkpoint, 5 now)",
    ),
    Case("resume RUN domain=nonexistent", "domain=nonexistent: no such option in group domain; valid: "),
    Case("resume TMP/empty", "TMP/empty is not a mamlrun run directory (no TMP/empty/.hydra/overrides.yaml)"),
    Case("eval TMP/nowhere", "checkpoint not found: TMP/nowhere"),
    Case("eval TMP/empty", "no checkpoint in TMP/empty: expected TMP/empty/best.pt or TMP/empty/last.pt"),
    Case("eval TMP/junk.pt", "checkpoint TMP/junk.pt is corrupt or truncated"),
    Case("eval TMP/truncated.pt", "checkpoint TMP/truncated.pt is corrupt or truncated"),
    Case("eval TMP/runs_code.pt", "refusing to load TMP/runs_code.pt"),
    Case(
        "eval TMP/eval_is_a_file",
        "cannot write TMP/eval_is_a_file/eval (File exists): make the run's eval/ a folder you can write",
    ),
    Case("eval TMP/eval_in_sys", "cannot write TMP/eval_in_sys/eval/"),  # a link to /sys/kernel
    Case("eval RUN domain=omniglot", "override 'domain=omniglot' cannot take effect in mamlrun eval"),
    Case("eval RUN domain.ways=20", "override 'domain.ways=20': no setting named 'domain.ways'"),
    Case("eval RUN meta_batch=3", "override 'meta_batch=3' cannot take effect in mamlrun eval"),
    Case("eval RUN eval.tasks=abc", "eval.tasks='abc' is invalid"),
    Case(
        "eval RUN logger=nope", "override 'logger=nope': no such option in group logger; valid: none, wandb"
    ),
    Case(
        "eval RUN eval.support_range=[0,9]",
        "eval.support_range=[0.0, 9.0] is invalid: need x_range[0] <= low",
    ),
    Case("eval RUN eval.steps=1,2", "override 'eval.steps=1,2': only key=value is allowed here"),
    Case("eval RUN eval.steps=3 eval.steps=4", "eval.steps is given twice"),
    Case("eval RUN -m", "'-m': mamlrun eval takes key=value overrides only"),
    Case("eval RUN device=cuda", "device='cuda' is invalid: no CUDA device", {"CUDA_VISIBLE_DEVICES": ""}),
    # ---- MAML's variants (inner_params, MAML++'s settings)
    Case(
        f"{SMOKE} inner_params=nope",
        "inner_params='nope' is invalid: choose all (MAML: every parameter), head",
    ),
    Case(f"{SMOKE} inner_params=[zz*]", "inner_params=['zz*'] is invalid: 'zz*' matches no parameter of MLP"),
    Case(
        f"{OMNIGLOT} model.zero_head=true inner_params=body",
        "inner_params='body' is invalid: head.weight, head.bias learn only in the inner loop",
    ),
    Case(
        f"{SMOKE} multi_step_loss.enabled=yes",
        "multi_step_loss.enabled='yes' is invalid: the multi-step loss is on",
    ),
    Case(f"{SMOKE} multi_step_loss.anneal_iterations=-1", "multi_step_loss.anneal_iterations=-1 is invalid"),
    Case(f"{SMOKE} order.first_order_iterations=-5", "order.first_order_iterations=-5 is invalid"),
    Case(
        f"{SMOKE} order=first order.first_order_iterations=5",
        "no setting named 'order.first_order_iterations'",
    ),
    Case(
        f"{OMNIGLOT} model.norm_stats=mean",
        "model.norm_stats='mean' is invalid: choose batch (each batch's own statistics) or running",
    ),
    Case(
        f"{OMNIGLOT} model.norm_stats=running",
        "model.norm_stats='running' is invalid: running statistics are kept per inner step",
    ),
    Case(f"{SMOKE} lr_schedule.name=cos", "lr_schedule.name='cos' is invalid: choose constant or cosine"),
    Case(
        f"{SMOKE} lr_schedule.name=cosine lr_schedule.min_lr=1",
        "lr_schedule.min_lr=1 is invalid: the cosine ends",
    ),
    Case(
        f"{NAV} lr_schedule.name=cosine", "lr_schedule.name='cosine' is invalid: meta-RL's outer step keeps"
    ),
    Case(
        f"{NAV} multi_step_loss.enabled=true",
        "multi_step_loss.enabled=True is invalid: MAML-TRPO's outer terms",
    ),
    Case(f"{NAV} eval.select_by=best", "eval.select_by='best' is invalid: choose return or success"),
    Case(f"{NAV} eval.select_by=success", "eval.select_by='success' is invalid: nav2d reports no success"),
    # ---- Meta-World
    Case(
        f"{ML1} domain.tasks.env_name=reach-v9",
        "domain.tasks.env_name='reach-v9' is invalid: ML1 environments are",
    ),
    Case(
        f"{ML1} domain.tasks.benchmark=ML45", "domain.tasks.benchmark='ML45' is invalid: choose ML1 or ML10"
    ),
    Case(
        f"{ML1} domain.tasks.benchmark=ML10",
        "domain.tasks.env_name='reach-v3' is invalid: ML10 trains on its own 10 environments",
    ),
    Case(
        f"{ML1} domain.tasks.reward_version=v3",
        "domain.tasks.reward_version='v3' is invalid: choose v1 or v2",
    ),
    Case(f"{ML1} domain.tasks.task_seed=-1", "domain.tasks.task_seed=-1 is invalid"),
    # ---- the environment
    Case(f"{SMOKE} logger=wandb", "logger.mode='bogus' is invalid", {"WANDB_MODE": "bogus"}),
    Case(OMNIGLOT, "domain.tasks.root=TMP/nowhere/omniglot: does not exist", {"MAMLRUN_DATA": "TMP/nowhere"}),
    Case(
        f"{SMOKE} device=cuda",
        "device='cuda' is invalid: no CUDA device is available here",
        {"CUDA_VISIBLE_DEVICES": ""},
    ),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> tuple[Path, Path]:
    """(a finished smoke run, a folder of broken inputs)."""
    root = tmp_path_factory.mktemp("bad_input")
    run_dir, tmp = root / "run", root / "tmp"
    run_cli("train", *smoke_overrides(run_dir), cwd=root, check=True)
    (tmp / "empty").mkdir(parents=True)
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "user_conf" / "domain").mkdir(parents=True)
    (tmp / "user_conf" / "domain" / "bad.yaml").write_text("name: [unclosed\nkind: regression\n")
    (tmp / "junk.pt").write_text("not a checkpoint\n")
    for name in ("eval_is_a_file", "eval_in_sys"):  # copies of the run whose eval/ cannot take a folder
        shutil.copytree(run_dir, tmp / name)
    (tmp / "eval_is_a_file" / "eval").write_text("not a folder\n")
    (tmp / "eval_in_sys" / "eval").symlink_to("/sys/kernel")  # not writable, even by root
    (tmp / "truncated.pt").write_bytes((run_dir / "checkpoints" / "last.pt").read_bytes()[:3000])
    torch.save(
        {"format": ckpt.FORMAT, "version": ckpt.VERSION, "model": RunsCode(tmp / "pwned")},
        tmp / "runs_code.pt",
    )
    return run_dir, tmp


def case_id(case: Case) -> str:
    env = " ".join(f"{k}={v}" for k, v in case.env.items())
    return f"{env} {case.args}".strip()


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({case_id(c) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(places, case):
    run_dir, tmp = places
    if case.args.startswith(ML1) and importlib.util.find_spec("metaworld") is None:
        pytest.skip("Meta-World is not installed (pip install 'mamlrun[metaworld]'; make install has it)")

    def fill(text: str) -> str:
        return text.replace("RUN", str(run_dir)).replace("TMP", str(tmp))

    before = file_hashes(run_dir)
    env = {key: fill(value) for key, value in case.env.items()}
    proc = run_cli(*fill(case.args).split(), cwd=tmp.parent, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mamlrun: error: ") and fill(case.message) in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert file_hashes(run_dir) == before
    assert not (tmp / "pwned").exists()
