"""MAML's modern variants on the one adaptation core, each against an independent implementation.

- ANIL and BOIL (`inner_params=head|body`): the inner step moves only the chosen parameters, the
  others stay bit for bit, and the meta-gradient equals a plain per-task autograd loop that adapts
  only those (kept and recomputed inner steps, first and second order).
- MAML++'s multi-step loss: the meta-gradient equals a plain loop summing the weighted query losses
  after every inner step (first and second order, 1 and 3 steps); the weights anneal to the last step.
- Per-step BatchNorm (MAML++'s BNWB): inner step k reads row k of the BatchNorm weights (a plain
  loop that indexes the rows by hand gives the same meta-gradient, every row gets its own gradient).
- Per-step running statistics (MAML++'s BNRS): row k holds step k's support and query statistics
  (a plain loop computing them by hand agrees), the meta-test's predictions no longer depend on the
  rest of the query batch, and they resume bit-identically.
- Derivative-order annealing and the cosine learning rate follow the iteration: the order switches
  at `order.first_order_iterations`, and a run stopped just before the switch and resumed from its
  checkpoint ends bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mamlrun.maml import ConstantAlpha, LearnedAlpha, MetaObjective, adaptation, inner_step
from mamlrun.models import Conv4
from mamlrun.models.norm import per_step_buffers, per_step_names
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.trainers.annealing import multi_step_weights
from mamlrun.trainers.supervised.meta_test import predictor
from mamlrun.trainers.supervised.parts import CLASSIFICATION, REGRESSION, build
from mamlrun.trainers.supervised.statistics import collect_statistics
from mamlrun.trainers.supervised.step import step
from tests.conftest import compose_config, needs_omniglot
from tests.test_meta_gradient import TASKS, assert_close, make_data, make_model, shapes, task_loss_for

HEAD = frozenset({"4.weight", "4.bias"})  # make_model's last Linear
BODY = frozenset({"0.weight", "0.bias", "2.weight", "2.bias"})


def plain_loop(model, alpha, steps, first_order, support, query, adapts=None, weights=None):
    """Per task: `steps` textbook inner steps of the parameters in `adapts` (all when None), each
    with torch.autograd.grad; the outer loss is the query loss after the last step, or with
    `weights` the weighted sum of the query losses after every step."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    alpha_params = dict(alpha.named_parameters())
    moving = [n for n in names if adapts is None or n in adapts]
    total = 0.0
    for t in range(TASKS):
        params = dict(zip(names, theta, strict=True))
        outer = 0.0
        for k in range(steps):
            loss = F.mse_loss(torch.func.functional_call(model, params, (support[0][t],)), support[1][t])
            grads = torch.autograd.grad(loss, [params[n] for n in moving], create_graph=not first_order)
            rates = alpha.rates(alpha_params, k)
            params = params | {n: params[n] - rates[n] * g for n, g in zip(moving, grads, strict=True)}
            if weights is not None:
                query_loss = F.mse_loss(
                    torch.func.functional_call(model, params, (query[0][t],)), query[1][t]
                )
                outer = outer + weights[k] * query_loss
        if weights is None:
            outer = F.mse_loss(torch.func.functional_call(model, params, (query[0][t],)), query[1][t])
        total = total + outer
    meta_loss = total / TASKS
    grads = torch.autograd.grad(meta_loss, theta, allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, theta, grads, strict=True)}


def ours(model, alpha, steps, first_order, support, query, adapts=None, weights=None, memory="keep"):
    objective = MetaObjective(task_loss_for(model), alpha, steps, first_order, memory=memory, adapts=adapts)
    meta = {"model": dict(model.named_parameters()), "alpha": dict(alpha.named_parameters())}
    return objective(meta, support, query, weights)


@pytest.mark.parametrize("memory", ["keep", "recompute"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("adapts", [HEAD, BODY], ids=["anil", "boil"])
def test_anil_and_boil_meta_gradient_matches_a_plain_loop_that_adapts_only_those(adapts, first_order, memory):
    model = make_model()
    alpha = ConstantAlpha(0.05, shapes(model), 3).double()
    support, query = make_data()
    result = ours(model, alpha, 3, first_order, support, query, adapts=adapts, memory=memory)
    assert_close(
        result.grads["model"], plain_loop(model, alpha, 3, first_order, support, query, adapts=adapts)
    )
    full = ours(model, alpha, 3, first_order, support, query)  # and it is not MAML's
    assert not torch.allclose(full.grads["model"]["0.weight"], result.grads["model"]["0.weight"])


@pytest.mark.parametrize(("adapts", "kept"), [(HEAD, BODY), (BODY, HEAD)], ids=["anil", "boil"])
def test_an_inner_step_moves_only_what_adapts(adapts, kept):
    model = make_model()
    alpha = LearnedAlpha(0.05, shapes(model), 1).double()  # a rate for every tensor, kept ones too
    theta = dict(model.named_parameters())
    support, _ = make_data()
    data = (support[0][0], support[1][0])
    adapted, _ = inner_step(
        theta,
        dict(alpha.named_parameters()),
        0,
        data,
        task_loss=task_loss_for(model),
        alpha=alpha,
        first_order=False,
        adapts=adapts,
    )
    assert list(adapted) == list(theta)  # the model's order
    assert all(torch.equal(adapted[n], theta[n]) for n in kept)
    assert all(not torch.equal(adapted[n], theta[n]) for n in adapts)


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
def test_multi_step_loss_matches_a_plain_loop_of_weighted_step_losses(steps, first_order):
    model = make_model()
    alpha = ConstantAlpha(0.05, shapes(model), steps).double()
    support, query = make_data()
    weights = torch.tensor([0.2, 0.3, 0.5][-steps:] if steps == 3 else [0.7], dtype=torch.float64)
    result = ours(model, alpha, steps, first_order, support, query, weights=weights)
    reference = plain_loop(model, alpha, steps, first_order, support, query, weights=weights)
    assert_close(result.grads["model"], reference)
    last_only = ours(model, alpha, steps, first_order, support, query)
    # the logged loss is the last step's query loss either way
    torch.testing.assert_close(result.loss, last_only.loss, rtol=0, atol=0)


def test_multi_step_weights_sum_to_one_and_move_to_the_last_step():
    schedule = [multi_step_weights(5, it, 1000) for it in (0, 250, 500, 1000, 5000)]
    assert schedule[0] == pytest.approx([0.2] * 5)
    assert all(math.isclose(sum(w), 1.0) for w in schedule)
    lasts = [w[-1] for w in schedule]
    assert lasts == sorted(lasts) and lasts[3] == lasts[4] and math.isclose(schedule[3][0], 0.03 / 5)


ANNEALED = [
    "debug=smoke",
    "inner_steps=2",
    "meta_batch=3",
    "alpha=learned",
    "order.first_order_iterations=3",
    "lr_schedule.name=cosine",
    "lr_schedule.min_lr=0.0001",
    "multi_step_loss.enabled=true",
    "multi_step_loss.anneal_iterations=4",
    "meta_iterations=6",
]


def flat(parts) -> dict[str, torch.Tensor]:
    state = parts.state_dict()
    tensors = {f"model.{k}": v for k, v in state["model"].items()} | {
        f"alpha.{k}": v for k, v in state["alpha"].items()
    }
    for i, s in state["optimizer"]["state"].items():
        tensors |= {f"adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)}
    tensors["lr"] = torch.tensor([g["lr"] for g in parts.optimizer.param_groups])
    return tensors


def test_order_annealing_switches_at_its_iteration_and_a_resume_before_the_switch_is_bit_identical(tmp_path):
    cfg = compose_config(ANNEALED)
    straight = build(cfg, REGRESSION)
    assert [straight.objective_at(it) is straight.warmup for it in range(6)] == [True] * 3 + [False] * 3
    assert straight.warmup is not None and straight.objective is not straight.warmup
    lrs = []
    for it in range(6):
        step(straight, it)
        lrs.append(straight.optimizer.param_groups[0]["lr"])
    assert lrs == sorted(lrs, reverse=True) and math.isclose(lrs[-1], 0.0001)

    stopped = build(cfg, REGRESSION)
    for it in range(3):  # stopped just before the switch to second order
        step(stopped, it)
    ckpt.save_checkpoint(tmp_path / "last.pt", stopped.state_dict())
    resumed = build(cfg, REGRESSION)
    resumed.load_state_dict(ckpt.load_checkpoint(tmp_path / "last.pt"), tmp_path / "last.pt")
    for it in range(3, 6):
        step(resumed, it)
    a, b = flat(straight), flat(resumed)
    assert a.keys() == b.keys() and len(a) > 6
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


def per_step_conv():
    torch.manual_seed(0)
    model = Conv4(1, 3, hidden=4, image_size=28, per_step_norm=True, norm_steps=3).double()
    with torch.no_grad():  # rows that differ, so a step reading another step's row shows
        for name, p in model.named_parameters():
            if name in per_step_names(model):
                p.copy_(
                    torch.rand(p.shape, dtype=p.dtype, generator=torch.Generator().manual_seed(len(name)))
                    + 0.5
                )
    return model


def image_tasks(tasks: int = 2, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tasks, 6, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(2).expand(tasks, 6)
    return (x, y), (x.flip(1), y.flip(1))


def per_step_plain_loop(model, alpha, steps, support, query):
    """Per task, textbook second-order steps where step k (and the query after it) reads row k of
    every per-step BatchNorm parameter, written out by hand; those rows are never adapted."""
    rows = per_step_names(model)
    theta = dict(model.named_parameters())
    total = 0.0
    for t in range(support[0].shape[0]):
        params = dict(theta)
        for k in range(steps):
            seen = {n: p[k] if n in rows else p for n, p in params.items()}
            loss = F.cross_entropy(torch.func.functional_call(model, seen, (support[0][t],)), support[1][t])
            moving = [n for n in params if n not in rows]
            grads = torch.autograd.grad(loss, [seen[n] for n in moving], create_graph=True)
            params |= {n: params[n] - alpha * g for n, g in zip(moving, grads, strict=True)}
        seen = {n: p[steps - 1] if n in rows else p for n, p in params.items()}
        total = total + F.cross_entropy(torch.func.functional_call(model, seen, (query[0][t],)), query[1][t])
    grads = torch.autograd.grad(total / support[0].shape[0], list(theta.values()))
    return dict(zip(theta, grads, strict=True))


def test_per_step_batchnorm_gives_each_step_its_own_weights_and_matches_a_plain_loop():
    model = per_step_conv()
    rows = per_step_names(model)
    assert rows and all(p.shape[0] == 3 for n, p in model.named_parameters() if n in rows)
    support, query = image_tasks()
    alpha = ConstantAlpha(0.1, shapes(model), 3).double()

    def task_loss(params, data):
        return F.cross_entropy(torch.func.functional_call(model, params, (data[0],)), data[1])

    objective = MetaObjective(task_loss, alpha, 3, False, per_step=rows)
    result = objective({"model": dict(model.named_parameters()), "alpha": {}}, support, query)
    assert_close(result.grads["model"], per_step_plain_loop(model, 0.1, 3, support, query), tol=1e-7)
    for name in rows:  # every step's row is trained: a shared row would leave rows 1 and 2 at zero
        assert all(bool(result.grads["model"][name][k].abs().sum() > 0) for k in range(3)), name


def test_test_time_steps_past_training_reuse_the_last_row():
    model = per_step_conv()
    rows = per_step_names(model)
    params = dict(model.named_parameters())
    support, _ = image_tasks(1)
    data = (support[0][0], support[1][0])
    seen = [
        adapted for adapted, _ in adaptation(
            params, {}, data, 5, task_loss=lambda p, d: F.cross_entropy(torch.func.functional_call(model, p, (d[0],)), d[1]),
            alpha=ConstantAlpha(0.1, shapes(model), 5), first_order=True, per_step=rows,
        )
    ]  # fmt: skip
    name = sorted(rows)[0]
    assert [int(next(k for k in range(3) if torch.equal(s[name], params[name][k]))) for s in seen] == [
        0,
        1,
        2,
        2,
        2,
    ]


def changed(base: str, preset: str) -> dict[str, tuple]:
    """The settings where `preset` differs from `base` (flattened keys: (base's, preset's))."""
    from omegaconf import OmegaConf

    from mamlrun.config_checks import flatten

    a, b = (
        flatten(OmegaConf.to_container(compose_config([f"experiment={e}"]), resolve=True))
        for e in (base, preset)
    )
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


@pytest.mark.parametrize(
    ("base", "preset", "want"),
    [
        ("omniglot_minimal", "omniglot_minimal_anil", {"inner_params": ("all", "head")}),
        ("omniglot_minimal_20w1s", "omniglot_minimal_20w1s_anil", {"inner_params": ("all", "head")}),
        ("omniglot_minimal_20w1s", "omniglot_minimal_20w1s_boil", {"inner_params": ("all", "body")}),
    ],
)
def test_anil_and_boil_presets_are_their_base_with_only_the_inner_parameters_changed(base, preset, want):
    assert changed(base, preset) == want


def test_the_mamlpp_preset_switches_on_each_fix_it_names():
    diff = changed("omniglot_minimal_20w1s", "omniglot_minimal_20w1s_mamlpp")
    assert diff["alpha._target_"] == ("mamlrun.maml.ConstantAlpha", "mamlrun.maml.LearnedAlpha")
    assert diff["multi_step_loss.enabled"] == (False, True)
    assert diff["order.first_order_iterations"] == (0, 500)
    assert diff["lr_schedule.name"] == ("constant", "cosine")
    assert diff["inner_steps"] == (1, 2) and diff["model.norm_steps"] == (1, 2)


# ------------------------------------------------------------------ per-step running statistics (BNRS)
RUNNING = [
    "experiment=omniglot_minimal_20w1s_mamlpp",
    "debug=smoke",
    "model.hidden=8",
    "meta_batch=2",
    "meta_iterations=3",
    "order.first_order_iterations=1",
]


def running_parts(stats: str = "running"):
    parts = build(compose_config([*RUNNING, f"model.norm_stats={stats}"]), CLASSIFICATION)
    batch = parts.sample(2, parts.sizes.shots, parts.sizes.query, torch.Generator().manual_seed(1), "train")
    return parts, batch


def plain_first_layer_statistics(parts, support, query, momentum=0.1):
    """The first BatchNorm's per-step running mean and variance, written out by hand: per task in
    order, textbook first-order inner steps (step k reads row k of the per-step weights), and for
    step k the first conv's output on the support before it and on the query after it folded into
    row k with the momentum (the variance unbiased, as BatchNorm's running variance is)."""
    rows_named = parts.per_step
    steps = int(parts.cfg.inner_steps)
    channels = parts.model.features[0].out_channels
    mean, var = torch.zeros(steps, channels), torch.ones(steps, channels)
    alpha_params = {n: p.detach() for n, p in parts.alpha.named_parameters()}

    def fold(k, params, x):
        h = F.conv2d(x, params["features.0.weight"], params["features.0.bias"], stride=2, padding=1)
        mean[k] = (1 - momentum) * mean[k] + momentum * h.mean((0, 2, 3))
        var[k] = (1 - momentum) * var[k] + momentum * h.var((0, 2, 3), unbiased=True)

    for t in range(support[0].shape[0]):
        params = {
            n: p.detach().requires_grad_(n not in rows_named) for n, p in parts.model.named_parameters()
        }
        for k in range(steps):
            with torch.no_grad():
                fold(k, params, support[0][t])
            seen = {n: p[k] if n in rows_named else p for n, p in params.items()}
            logits = torch.func.functional_call(parts.model, seen, (support[0][t],))
            moving = [n for n in params if n not in rows_named]
            grads = torch.autograd.grad(F.cross_entropy(logits, support[1][t]), [params[n] for n in moving])
            rates = parts.alpha.rates(alpha_params, k)
            params |= {
                n: (params[n] - rates[n] * g).detach().requires_grad_()
                for n, g in zip(moving, grads, strict=True)
            }
            with torch.no_grad():
                fold(k, params, query[0][t])
    return mean, var


@needs_omniglot
def test_per_step_running_statistics_fold_each_steps_own_batches_like_a_plain_loop():
    parts, batch = running_parts()
    norm = parts.model.features[1]
    assert norm.running_mean.shape == (2, 8) and torch.equal(norm.running_mean, torch.zeros(2, 8))
    want_mean, want_var = plain_first_layer_statistics(parts, batch.support, batch.query)
    collect_statistics(parts, batch.support, batch.query)
    torch.testing.assert_close(norm.running_mean, want_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, want_var, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(norm.running_mean[0], norm.running_mean[1])  # one shared row would be equal


@needs_omniglot
@pytest.mark.parametrize("stats", ["running", "batch"])
def test_with_running_statistics_a_query_images_prediction_ignores_the_rest_of_its_batch(stats):
    """BNRS makes the meta-test non-transductive: an image's logits are the same alone as among the
    task's other query images; with the batch's statistics (the default) they are not."""
    parts, batch = running_parts(stats)
    collect_statistics(parts, batch.support, batch.query)
    predict = predictor(parts)
    support, images = (batch.support[0][0], batch.support[1][0]), batch.query[0][0]
    together, alone = predict(support, 2, images)[:1], predict(support, 2, images[:1])
    assert torch.allclose(together, alone, atol=1e-5) == (stats == "running")


@needs_omniglot
def test_running_statistics_move_with_training_and_resume_bit_identical(tmp_path):
    straight, _ = running_parts()
    for it in range(3):
        step(straight, it)
    assert not torch.equal(straight.model.features[1].running_mean, torch.zeros(2, 8))
    stopped, _ = running_parts()
    for it in range(2):
        step(stopped, it)
    ckpt.save_checkpoint(tmp_path / "last.pt", stopped.state_dict())
    resumed, _ = running_parts()
    resumed.load_state_dict(ckpt.load_checkpoint(tmp_path / "last.pt"), tmp_path / "last.pt")
    step(resumed, 2)
    a, b = flat(straight), flat(resumed)
    assert "model.features.1.running_var" in a and a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after resume"


@needs_omniglot
def test_the_meta_test_normalises_step_k_with_row_k_of_the_running_statistics():
    """Changing row 1 of every running statistic leaves a one-step prediction as it was (step 0
    and the query after it read row 0) and changes a two-step one (step 1 reads row 1)."""
    parts, batch = running_parts()
    collect_statistics(parts, batch.support, batch.query)
    support, images = (batch.support[0][0], batch.support[1][0]), batch.query[0][0]
    before = [predictor(parts)(support, steps, images) for steps in (1, 2)]
    with torch.no_grad():
        for name, buffer in per_step_buffers(parts.model).items():
            buffer[1] = buffer[1] * 3 + (1 if name.endswith("var") else 0.5)
    after = [predictor(parts)(support, steps, images) for steps in (1, 2)]
    assert torch.equal(before[0], after[0])
    assert not torch.allclose(before[1], after[1], atol=1e-3)
