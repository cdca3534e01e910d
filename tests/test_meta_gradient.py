"""The vmapped functional core's meta-gradient against independent implementations.

(a) a plain per-task autograd loop, (b) learn2learn's MAML and MetaSGD, (c) central finite
differences in float64. Each covers first and second order and 1 and 3 inner steps where it applies.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.maml import ConstantAlpha, LearnedAlpha, MetaObjective, MetaSGDAlpha, PerStepAlpha
from tests.conftest import import_learn2learn

TASKS, SHOTS, QUERY = 5, 7, 6


def make_model(hidden: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    ).double()


def make_data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(TASKS, SHOTS, 1, generator=g, dtype=torch.float64)
    xq = torch.randn(TASKS, QUERY, 1, generator=g, dtype=torch.float64)
    amp = torch.rand(TASKS, 1, 1, generator=g, dtype=torch.float64) * 3 + 0.5
    return (xs, amp * torch.sin(xs)), (xq, amp * torch.sin(xq))


def task_loss_for(model: nn.Module):
    def task_loss(params, data):
        return F.mse_loss(torch.func.functional_call(model, params, (data[0],)), data[1])

    return task_loss


def ours(model, alpha, steps, first_order, support, query, chunk_size=None, compile=False):
    objective = MetaObjective(task_loss_for(model), alpha, steps, first_order, chunk_size, compile=compile)
    meta = {"model": dict(model.named_parameters()), "alpha": dict(alpha.named_parameters())}
    return objective(meta, support, query)


def plain_loop(model, alpha, steps, first_order, support, query):
    """Per-task Python loop with torch.autograd.grad: the textbook MAML meta-gradient."""
    names = [n for n, _ in model.named_parameters()]
    theta = [p for _, p in model.named_parameters()]
    alpha_names = [n for n, _ in alpha.named_parameters()]
    alpha_p = [p for _, p in alpha.named_parameters()]
    alpha_params = dict(zip(alpha_names, alpha_p, strict=True))
    total = 0.0
    for t in range(TASKS):
        params = dict(zip(names, theta, strict=True))
        for k in range(steps):
            out = torch.func.functional_call(model, params, (support[0][t],))
            loss = F.mse_loss(out, support[1][t])
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
            rates = alpha.rates(alpha_params, k)
            params = {n: p - rates[n] * g for (n, p), g in zip(params.items(), grads, strict=True)}
        total = total + F.mse_loss(torch.func.functional_call(model, params, (query[0][t],)), query[1][t])
    meta_loss = total / TASKS
    grads = torch.autograd.grad(meta_loss, theta + alpha_p, allow_unused=True)
    return (
        meta_loss,
        dict(zip(names, grads[: len(names)], strict=True)),
        dict(zip(alpha_names, grads[len(names) :], strict=True)),
    )


def assert_close(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=tol, rtol=tol, msg=lambda m, n=name: f"{n}: {m}")


def shapes(model):
    return {n: p.shape for n, p in model.named_parameters()}


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("schedule", ["constant", "per_step", "learned", "meta_sgd"])
def test_matches_plain_autograd_loop(first_order, steps, schedule):
    model = make_model()
    alpha = {
        "constant": lambda: ConstantAlpha(0.05, shapes(model), steps),
        "per_step": lambda: PerStepAlpha([0.05, 0.02], shapes(model), steps),
        "learned": lambda: LearnedAlpha(0.05, shapes(model), steps),
        "meta_sgd": lambda: MetaSGDAlpha(0.05, shapes(model), steps),
    }[schedule]().double()
    with torch.no_grad():  # make learned alphas differ per step/element so indexing errors show
        for p in alpha.parameters():
            p.mul_(torch.linspace(0.5, 1.5, p.numel(), dtype=p.dtype).reshape(p.shape))
    support, query = make_data()
    result = ours(model, alpha, steps, first_order, support, query)
    ref_loss, ref_model, ref_alpha = plain_loop(model, alpha, steps, first_order, support, query)
    torch.testing.assert_close(result.loss, ref_loss.detach(), atol=1e-10, rtol=1e-10)
    assert_close(result.grads["model"], ref_model)
    assert_close(result.grads["alpha"], ref_alpha)


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("algorithm", ["MAML", "MetaSGD"])
def test_matches_learn2learn(algorithm, first_order, steps):
    l2l = import_learn2learn()
    model = make_model()
    support, query = make_data()
    if algorithm == "MAML":
        alpha = ConstantAlpha(0.05, shapes(model), steps)
        learner = l2l.algorithms.MAML(model, lr=0.05, first_order=first_order)
    else:
        alpha = MetaSGDAlpha(0.05, shapes(model), steps).double()
        for p in alpha.parameters():  # 0.05 exactly in float64, as learn2learn holds it
            p.data.fill_(0.05)
        learner = l2l.algorithms.MetaSGD(model, lr=0.05, first_order=first_order)
    result = ours(model, alpha, steps, first_order, support, query)

    learner.zero_grad()
    total = 0.0
    for t in range(TASKS):
        clone = learner.clone()
        for _ in range(steps):
            clone.adapt(F.mse_loss(clone(support[0][t]), support[1][t]))
        total = total + F.mse_loss(clone(query[0][t]), query[1][t])
    (total / TASKS).backward()

    torch.testing.assert_close(result.loss, (total / TASKS).detach(), atol=1e-10, rtol=1e-10)
    assert_close(result.grads["model"], {n: p.grad for n, p in model.named_parameters()})
    if algorithm == "MetaSGD":  # l2l keeps one lr tensor per parameter, in model order
        theirs = {
            f"lrs.{alpha.keys[n]}": lr.grad
            for (n, _), lr in zip(model.named_parameters(), learner.lrs, strict=True)
        }
        assert_close(result.grads["alpha"], theirs)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("schedule", ["constant", "learned"])
def test_second_order_matches_finite_differences(steps, schedule):
    model = make_model(hidden=6)
    alpha = (
        ConstantAlpha(0.1, shapes(model), steps)
        if schedule == "constant"
        else LearnedAlpha(0.1, shapes(model), steps).double()
    )
    support, query = make_data()
    result = ours(model, alpha, steps, False, support, query)
    objective = MetaObjective(task_loss_for(model), alpha, steps, False)

    def meta_loss() -> float:
        meta = {"model": dict(model.named_parameters()), "alpha": dict(alpha.named_parameters())}
        with torch.no_grad():
            return float(objective(meta, support, query).loss)

    eps = 1e-6
    for group, module in (("model", model), ("alpha", alpha)):
        for name, p in module.named_parameters():
            numeric = torch.zeros_like(p)
            flat = p.data.view(-1)
            for i in range(flat.numel()):
                orig = flat[i].item()
                flat[i] = orig + eps
                up = meta_loss()
                flat[i] = orig - eps
                down = meta_loss()
                flat[i] = orig
                numeric.view(-1)[i] = (up - down) / (2 * eps)
            torch.testing.assert_close(result.grads[group][name], numeric, atol=1e-6, rtol=1e-5)


def test_first_order_differs_from_second_order():
    """Guards the order flag itself: FOMAML drops a real term of the meta-gradient."""
    model = make_model()
    alpha = ConstantAlpha(0.1, shapes(model), 1)
    support, query = make_data()
    second = ours(model, alpha, 1, False, support, query).grads["model"]
    first = ours(model, alpha, 1, True, support, query).grads["model"]
    assert max(float((second[n] - first[n]).abs().max()) for n in second) > 1e-4


@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_chunked_meta_gradient_equals_unchunked(chunk_size):
    model = make_model()
    alpha = LearnedAlpha(0.05, shapes(model), 2).double()
    support, query = make_data()
    whole = ours(model, alpha, 2, False, support, query)
    chunked = ours(model, alpha, 2, False, support, query, chunk_size=chunk_size)
    torch.testing.assert_close(chunked.loss, whole.loss, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(chunked.pre_loss, whole.pre_loss, atol=1e-12, rtol=1e-12)
    assert_close(chunked.grads["model"], whole.grads["model"], tol=1e-12)
    assert_close(chunked.grads["alpha"], whole.grads["alpha"], tol=1e-12)


@pytest.mark.slow
def test_compiled_meta_gradient_equals_eager():
    model = make_model().float()
    alpha = ConstantAlpha(0.05, shapes(model), 2)
    support, query = (tuple(t.float() for t in pair) for pair in make_data())
    eager = ours(model, alpha, 2, False, support, query)
    compiled_objective = MetaObjective(task_loss_for(model), alpha, 2, False, compile=True)
    compiled = compiled_objective({"model": dict(model.named_parameters()), "alpha": {}}, support, query)
    assert compiled_objective.compiled, "torch.compile fell back to eager mode"
    assert_close(compiled.grads["model"], eager.grads["model"], tol=1e-5)
