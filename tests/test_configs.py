"""Every option of every config group composes (and builds), presets hold the paper's values,
multirun makes one run per value, and a bad override fails cleanly."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mamlrun.build import build_alpha, build_model, build_optimizer, build_tasks, construct
from mamlrun.cli import describe_options
from mamlrun.runtime import checkpoint as ckpt
from tests.conftest import CONF_DIR, compose_config, meta_test_results, run_cli

GROUPS = describe_options(CONF_DIR)
JOB_GROUPS = ["domain", "model", "optimizer", "order", "alpha", "logger", "experiment", "debug"]


def options(group: str) -> list[str]:
    return [name for name, _ in GROUPS[group]]


def test_the_groups_of_the_design_exist():
    for group in [*JOB_GROUPS, "hparams_search", "hydra/launcher"]:
        assert options(group), f"config group {group} has no options"
    assert {"constant", "per_step", "halving", "learned", "meta_sgd"} <= set(options("alpha"))
    assert {"second", "first"} == set(options("order"))
    assert {"sinusoid_paper", "sinusoid_paper_k5", "sinusoid_paper_k20", "pretrain"} <= set(
        options("experiment")
    )


def test_every_option_has_a_description():
    for group, entries in GROUPS.items():
        for name, description in entries:
            assert len(description) > 10, (
                f"conf/{group}/{name}.yaml needs a first-line comment saying what it is"
            )


# The domain each option is built with when it does not fit the default (sinusoid) one.
NEEDS_DOMAIN = {
    ("model", "mlp"): "sinusoid",
    ("model", "conv4"): "omniglot",
    ("model", "conv4_pool"): "miniimagenet",
    ("model", "mlp_fc"): "omniglot",
    ("model", "policy"): "nav2d",
    ("model", "policy_metaworld"): "nav2d",  # metaworld's spaces need the extra; the policy does not
    ("optimizer", "trpo"): "nav2d",
}


@pytest.mark.parametrize("group,option", [(g, o) for g in JOB_GROUPS for o in options(g)])
def test_every_option_composes_and_builds(group, option):
    domain = NEEDS_DOMAIN.get((group, option))
    cfg = compose_config([f"{group}={option}", *([f"domain={domain}"] if domain else [])])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    model = build_model(cfg)
    alpha = build_alpha(cfg, model)
    if cfg.domain.kind == "rl":
        construct(cfg.optimizer, "optimizer")
        construct(cfg.domain.tasks, "domain.tasks")  # the task family (gymnasium envs for locomotion)
    else:
        build_optimizer(cfg, [*model.parameters(), *alpha.parameters()])
    if cfg.domain.name == "sinusoid":  # the image domains need their data: built in test_fewshot / presets
        build_tasks(cfg)
    assert cfg.domain.kind in ("regression", "classification", "rl")


def test_every_model_option_has_a_domain_here():
    assert {o for g, o in NEEDS_DOMAIN if g == "model"} == set(options("model"))


@pytest.mark.parametrize("experiment", options("experiment"))
def test_debug_smoke_shrinks_every_preset(experiment):
    cfg = compose_config([f"experiment={experiment}", "debug=smoke"])
    assert cfg.meta_iterations <= 5 and cfg.eval.tasks <= 10 and cfg.device == "cpu"
    assert cfg.logger.wandb is False


def test_paper_presets_hold_the_papers_settings():
    for name, shots in [("sinusoid_paper", 10), ("sinusoid_paper_k5", 5), ("sinusoid_paper_k20", 20)]:
        cfg = compose_config([f"experiment={name}"])
        assert (cfg.domain.shots, cfg.domain.query) == (shots, shots)
        assert (cfg.meta_batch, cfg.meta_iterations, cfg.inner_steps) == (25, 70000, 1)
        assert cfg.alpha.value == 0.01 and cfg.optimizer.lr == 0.001 and cfg.order.first_order is False
        assert list(cfg.model.hidden) == [40, 40] and cfg.model.activation == "relu"
        assert tuple(cfg.domain.tasks.amplitude) == (0.1, 5.0) and tuple(cfg.domain.tasks.x_range) == (
            -5.0,
            5.0,
        )
        assert cfg.eval.steps == 10 and list(cfg.eval.shots) == [5, 10, 20]
    assert compose_config(["experiment=pretrain"]).inner_steps == 0


def test_alpha_group_reads_the_domains_inner_lr():
    cfg = compose_config(["alpha=learned", "domain.inner_lr=0.2", "inner_steps=3"])
    alpha = build_alpha(cfg, build_model(cfg))
    assert all(float(p.detach().min()) == pytest.approx(0.2) and p.numel() == 3 for p in alpha.parameters())


@pytest.mark.parametrize("launcher,target", [("local_parallel", "joblib"), ("slurm_gpu", "submitit")])
def test_launcher_presets_compose(launcher, target):
    cfg = compose_config([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert target in cfg.hydra.launcher._target_.lower()
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1


OPTUNA_PRESETS = [
    ("sinusoid_optuna", "sinusoid", "minimize", {"alpha.value", "optimizer.lr"}),
    ("omniglot_minimal_optuna", "omniglot", "maximize", {"alpha.value", "optimizer.lr"}),
    ("nav2d_optuna", "nav2d", "maximize", {"alpha.value", "optimizer.max_kl"}),
]


@pytest.mark.parametrize("preset,domain,direction,params", OPTUNA_PRESETS)
def test_optuna_presets_compose_with_an_explicit_optimized_metric(preset, domain, direction, params):
    cfg = compose_config([f"hparams_search={preset}"], hydra_cfg=True)
    assert "optuna" in cfg.hydra.sweeper._target_.lower()
    assert cfg.domain.name == domain and cfg.optimized_metric == "best/val_metric"
    assert cfg.hydra.sweeper.direction == direction
    assert set(cfg.hydra.sweeper.params) == params
    for key in params:  # every searched key exists in the preset's config
        assert OmegaConf.select(cfg, key) is not None, key
    instantiate(cfg.hydra.sweeper.sampler)


def test_multirun_makes_one_run_per_value(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train", "-m", "order=first,second", "debug=smoke", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    orders = [OmegaConf.load(job / ".hydra" / "config.yaml").order.name for job in jobs]
    assert orders == ["first", "second"]
    for job in jobs:
        assert meta_test_results(job)
        assert (job / "checkpoints" / "last.pt").is_file()


def test_bad_group_option_exits_nonzero_naming_the_choices(tmp_path):
    proc = run_cli("train", "domain=nope", cwd=tmp_path)
    assert proc.returncode != 0
    assert "nope" in proc.stderr and "sinusoid" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_train_help_is_hydras_with_the_config_groups(tmp_path):
    proc = run_cli("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "mamlrun train" in proc.stdout
    for group in ["domain:", "alpha:", "order:", "experiment:"]:
        assert group in proc.stdout


@pytest.mark.slow
def test_optuna_sweep_runs_and_sees_the_returned_metric(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "hparams_search=sinusoid_optuna",
        "debug=smoke",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.name == "optuna" and set(best.best_params) == {"alpha.value", "optimizer.lr"}
    assert best.best_value > 0  # the validation MSE that train() returned

    # `mamlrun resume` of one trial continues that trial alone: no new sweep, its own sampled values
    trial = sweep / "0"
    assert "hparams_search=sinusoid_optuna" in (trial / ".hydra" / "overrides.yaml").read_text()
    alpha = OmegaConf.load(trial / ".hydra" / "config.yaml").alpha.value
    proc = run_cli("resume", str(trial), "meta_iterations=6", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ckpt.load_checkpoint(trial / "checkpoints" / "last.pt")["iteration"] == 6
    assert OmegaConf.load(trial / ".hydra" / "config.yaml").alpha.value == alpha
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == [
        "0",
        "1",
    ]  # no new trials
    assert not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_joblib_launcher_runs_jobs_in_worker_processes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "train",
        "-m",
        "hydra/launcher=local_parallel",
        "order=first,second",
        "debug=smoke",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for job in ("0", "1"):
        assert meta_test_results(sweep / job)
