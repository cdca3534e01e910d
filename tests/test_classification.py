"""Few-shot classification end to end: presets smoke-run, real Omniglot learning, bad input."""

from __future__ import annotations

import pytest
import torch

from mamlrun.maml import adapt
from mamlrun.run import train_in
from mamlrun.runtime.seeding import generator
from mamlrun.trainers.supervised.parts import CLASSIFICATION, build
from mamlrun.trainers.supervised.step import step
from tests.conftest import (
    MINIMAL_PAPER_SPLIT,
    compose_config,
    meta_test_results,
    needs_omniglot,
    run_cli,
    smoke_overrides,
)
from tests.test_configs import options

OMNIGLOT_PRESETS = [e for e in options("experiment") if e.startswith("omniglot")]
MINIIMAGENET_PRESETS = [e for e in options("experiment") if e.startswith("miniimagenet")]


def test_presets_hold_the_papers_settings():
    expect = {  # preset: (ways, shots, meta-batch, inner steps, alpha, test steps, order, model, paper)
        "omniglot_5w1s": (5, 1, 32, 1, 0.4, 3, "second", "conv4", 98.7),
        "omniglot_5w5s": (5, 5, 32, 1, 0.4, 3, "second", "conv4", 99.9),
        "omniglot_20w1s": (20, 1, 16, 5, 0.1, 5, "second", "conv4", 95.8),
        "omniglot_20w5s": (20, 5, 16, 5, 0.1, 5, "second", "conv4", 98.9),
        "omniglot_fc_5w1s": (5, 1, 32, 1, 0.4, 3, "second", "mlp_fc", 89.7),
        "omniglot_fc_5w5s": (5, 5, 32, 1, 0.4, 3, "second", "mlp_fc", 97.5),
        "miniimagenet_5w1s": (5, 1, 4, 5, 0.01, 10, "second", "conv4_pool", 48.70),
        "miniimagenet_5w5s": (5, 5, 2, 5, 0.01, 10, "second", "conv4_pool", 63.11),
        "miniimagenet_5w1s_first": (5, 1, 4, 5, 0.01, 10, "first", "conv4_pool", 48.07),
        "miniimagenet_5w5s_first": (5, 5, 2, 5, 0.01, 10, "first", "conv4_pool", 63.15),
    }
    variants = {f"omniglot_minimal_{v}" for v in ("anil", "20w1s_anil", "20w1s_boil", "20w1s_mamlpp")}
    assert set(expect) | {"omniglot_minimal", "omniglot_minimal_20w1s"} | variants == set(
        OMNIGLOT_PRESETS + MINIIMAGENET_PRESETS
    )  # the variants' presets: tests/test_variants.py
    for name, (ways, shots, mb, steps, alpha, test_steps, order, model, paper) in expect.items():
        cfg = compose_config([f"experiment={name}"])
        got = (
            cfg.domain.ways,
            cfg.domain.shots,
            cfg.meta_batch,
            cfg.inner_steps,
            cfg.alpha.value,
            cfg.eval.steps,
            cfg.order.name,
        )
        assert got == (ways, shots, mb, steps, alpha, test_steps, order), name
        assert cfg.model._target_.endswith("FCNet" if model == "mlp_fc" else "Conv4")
        assert cfg.model.get("pool", False) == (model == "conv4_pool")
        assert cfg.model.get("hidden") == (
            32 if model == "conv4_pool" else 64 if model == "conv4" else cfg.model.hidden
        )
        assert cfg.meta_iterations == 60000 and list(cfg.eval.shots) == [shots]
        assert cfg.eval.paper[shots][test_steps] == paper
        if name.startswith("miniimagenet"):
            assert cfg.domain.query == 15 and cfg.eval.query == 15


@needs_omniglot
@pytest.mark.slow
def test_minimal_omniglot_learns_far_above_chance_on_held_out_alphabets(tmp_path):
    """5-way 1-shot on alphabets never seen in meta-training; chance is 20%."""
    cfg = compose_config(
        [
            "experiment=omniglot_minimal",
            "logger=none",
            "progress=false",
            "meta_iterations=120",
            "meta_batch=8",
            "eval.tasks=200",
            "eval.query=5",
            "eval.every=60",
            "eval.val_tasks=40",
        ]
    )
    train_in(cfg, tmp_path)
    result = meta_test_results(tmp_path)[0]
    before, after = result["mean"][0], result["mean"][-1]
    # Measured here: chance-level before adaptation (~20%), about 70% after 3 steps from 120 iterations.
    assert 15.0 < before < 25.0
    assert after > 55.0, result["mean"]
    assert (tmp_path / "meta_test.png").stat().st_size > 10_000


@needs_omniglot
def test_zero_head_is_adapted_in_the_inner_loop_but_never_meta_trained():
    """model.zero_head: meta-training moves the features and leaves the head exactly zero; one
    inner step from the zero head gives each class a row of its own (no label starts ahead)."""
    cfg = compose_config(["experiment=omniglot_minimal_20w1s", "debug=smoke", "model.zero_head=true"])
    parts = build(cfg, CLASSIFICATION)
    features = {k: v.detach().clone() for k, v in parts.model.named_parameters() if k.startswith("features")}
    for _ in range(2):
        step(parts, 0)
    params = dict(parts.model.named_parameters())
    assert torch.equal(params["head.weight"], torch.zeros_like(params["head.weight"]))
    assert torch.equal(params["head.bias"], torch.zeros_like(params["head.bias"]))
    assert all(not torch.equal(params[k], v) for k, v in features.items())
    tasks = parts.sample(1, 1, 1, generator(0, parts.device), "train")
    support = (tasks.support[0][0], tasks.support[1][0])
    frozen = {k: v.detach() for k, v in params.items()}
    alpha_params = {k: v.detach() for k, v in parts.alpha.named_parameters()}
    adapted, _ = adapt(
        frozen, alpha_params, support, 1, task_loss=parts.task_loss, alpha=parts.alpha, first_order=True
    )
    rows = adapted["head.weight"]
    assert rows.shape == (20, 64) and torch.linalg.matrix_rank(rows) >= 19  # 20 rows summing to ~0


@needs_omniglot
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["domain.ways=100"], "domain.ways=100 is invalid: the val split of Omniglot"),
        (
            ["domain.shots=10", "domain.query=11"],
            "domain.shots+domain.query=21 is invalid: shots + query must be <= 20",
        ),
        (["domain.shots=5", "eval.query=16"], "domain.shots+eval.query=21 is invalid"),
        (
            ["model=mlp_fc", "model.image_size=32"],
            "model mamlrun.models.FCNet cannot take omniglot inputs of shape (5, 1, 28, 28)",
        ),
        (["model=mlp"], "model: needs domain.in_features"),
        (
            ["domain.tasks.test_alphabets=[Klingon]", "domain.tasks.split=alphabet"],
            "domain.tasks.test_alphabets=['Klingon'] is invalid: choose from Balinese",
        ),
        (
            ["domain.tasks.root=/nonexistent/omniglot"],
            "domain.tasks.root=/nonexistent/omniglot: does not exist",
        ),
    ],
)
def test_bad_classification_input_is_one_line(tmp_path, overrides, message):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "train", *smoke_overrides(run_dir, "domain=omniglot", *MINIMAL_PAPER_SPLIT, *overrides), cwd=tmp_path
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"mamlrun: error: {message}"), proc.stderr
    assert "Traceback" not in proc.stderr
