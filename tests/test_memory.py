"""The `memory` setting: `recompute` (each inner step recomputed in the backward pass) gives the same
meta-gradient as `keep` (every inner step's activations kept), and its peak memory does not grow with
the number of inner steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mamlrun.config_checks import check_run
from mamlrun.maml import (
    ConstantAlpha,
    LearnedAlpha,
    MetaObjective,
    MetaSGDAlpha,
    MetaTerms,
    PerStepAlpha,
    check_memory,
    task_meta_loss,
)
from mamlrun.models import Conv4
from mamlrun.runtime.errors import ConfigError
from mamlrun.trainers.supervised.parts import REGRESSION, build
from tests.conftest import compose_config
from tests.test_meta_gradient import make_data, make_model, shapes, task_loss_for

TOL = 1e-6  # the bar: the meta-gradients agree to 1e-6 (absolute)

SCHEDULES = {
    "constant": lambda s, steps: ConstantAlpha(0.05, s, steps),
    "per_step": lambda s, steps: PerStepAlpha([0.05, 0.02, 0.08], s, steps),
    "learned": lambda s, steps: LearnedAlpha(0.05, s, steps),
    "meta_sgd": lambda s, steps: MetaSGDAlpha(0.05, s, steps),
}


def make_alpha(schedule: str, model: nn.Module, steps: int, dtype: torch.dtype) -> nn.Module:
    """A schedule whose learned alphas differ per step and element, so a wrong index would show."""
    alpha = SCHEDULES[schedule](shapes(model), steps).to(dtype)
    with torch.no_grad():
        for p in alpha.parameters():
            p.mul_(torch.linspace(0.5, 1.5, p.numel(), dtype=p.dtype).reshape(p.shape))
    return alpha


def meta_gradient(model, alpha, task_loss, steps, first_order, support, query, memory, chunk_size=None):
    objective = MetaObjective(task_loss, alpha, steps, first_order, chunk_size, memory=memory)
    meta = {"model": dict(model.named_parameters()), "alpha": dict(alpha.named_parameters())}
    return objective(meta, support, query)


def assert_same_result(keep, recompute) -> None:
    torch.testing.assert_close(recompute.loss, keep.loss, atol=TOL, rtol=0)
    torch.testing.assert_close(recompute.pre_loss, keep.pre_loss, atol=TOL, rtol=0)
    assert keep.grads.keys() == recompute.grads.keys()
    for group in keep.grads:
        assert keep.grads[group].keys() == recompute.grads[group].keys()
        for name, g in keep.grads[group].items():
            assert g.abs().max() > 0 or group == "alpha", f"{group}.{name}: a zero gradient proves nothing"
            torch.testing.assert_close(recompute.grads[group][name], g, atol=TOL, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_recompute_meta_gradient_equals_keep(schedule, steps, first_order, chunk_size):
    model = make_model()
    alpha = make_alpha(schedule, model, steps, torch.float64)
    support, query = make_data()
    task_loss = task_loss_for(model)
    results = [
        meta_gradient(model, alpha, task_loss, steps, first_order, support, query, memory, chunk_size)
        for memory in ("keep", "recompute")
    ]
    assert_same_result(*results)
    if alpha.learnable:  # the learned alphas are meta-parameters: their gradient must be there
        assert all(g.abs().max() > 0 for g in results[1].grads["alpha"].values())


def image_tasks(tasks: int, ways: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """Random 28x28 `ways`-way 1-shot tasks: (support, query), each (images [T,N,1,28,28], labels [T,N])."""
    g = torch.Generator().manual_seed(seed)

    def one_set():
        x = torch.rand(tasks, ways, 1, 28, 28, generator=g, dtype=dtype)
        return x, torch.arange(ways).expand(tasks, ways).contiguous()

    return one_set(), one_set()


def image_loss(model: nn.Module):
    def task_loss(params, data):
        return F.cross_entropy(torch.func.functional_call(model, params, (data[0],)), data[1])

    return task_loss


@pytest.mark.parametrize("schedule", ["constant", "learned", "meta_sgd"])
def test_recompute_equals_keep_for_the_omniglot_network(schedule):
    """conv4 with BatchNorm on batch statistics (second order under vmap is where a naive recompute
    fails), float32 as in training, 4 inner steps, tasks in chunks."""
    torch.manual_seed(0)
    model = Conv4(1, 5, hidden=8)
    alpha = make_alpha(schedule, model, 4, torch.float32)
    support, query = image_tasks(3, 5)
    results = [
        meta_gradient(model, alpha, image_loss(model), 4, False, support, query, memory, chunk_size=2)
        for memory in ("keep", "recompute")
    ]
    assert_same_result(*results)


def test_recompute_under_nested_vmap_equals_keep():
    """Tasks in a 2 x 3 grid (vmap of vmap): each level passes its task dimension down."""
    model = make_model(hidden=8)
    alpha = make_alpha("learned", model, 3, torch.float64)
    support, query = make_data()
    grid = [tuple(t[:4].reshape(2, 2, *t.shape[1:]) for t in data) for data in (support, query)]
    meta = {
        "model": {n: p.detach() for n, p in model.named_parameters()},
        "alpha": {n: p.detach() for n, p in alpha.named_parameters()},
    }

    def grid_loss(meta_params, memory):
        def one(s, q):
            return task_meta_loss(
                meta_params,
                s,
                q,
                task_loss=task_loss_for(model),
                alpha=alpha,
                steps=3,
                first_order=False,
                memory=memory,
            )[0]

        return torch.func.vmap(torch.func.vmap(one))(*grid).sum()

    keep = torch.func.grad(grid_loss)(meta, "keep")
    recompute = torch.func.grad(grid_loss)(meta, "recompute")
    for group in keep:
        for name in keep[group]:
            torch.testing.assert_close(recompute[group][name], keep[group][name], atol=TOL, rtol=0)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_recompute_outer_terms_equal_keep(chunk_size):
    """Meta-RL's outer terms: values, the gradient of one term and Hessian-vector products of another
    (a second backward pass through the recomputed steps)."""
    model = make_model(hidden=8)
    steps = 2
    alpha = make_alpha("learned", model, steps, torch.float64)
    support, query = make_data()
    task_loss = task_loss_for(model)

    def two_terms(params, data):
        loss = task_loss(params, data)
        return torch.stack([loss, loss**2])

    names = [("model", n) for n, _ in model.named_parameters()] + [
        ("alpha", n) for n, _ in alpha.named_parameters()
    ]
    params = [*model.parameters(), *alpha.parameters()]
    direction = torch.linspace(-1, 1, sum(p.numel() for p in params), dtype=torch.float64)
    results = []
    for memory in ("keep", "recompute"):
        terms = MetaTerms(
            task_loss=task_loss,
            query_loss=two_terms,
            alpha=alpha,
            steps=steps,
            first_order=False,
            names=names,
            support=support,
            query=query,
            chunk_size=chunk_size,
            memory=memory,
        )
        values, grad, hvp = terms.grad_and_hvp(params, grad_term=0, hvp_term=1)
        results.append((values, grad, hvp(direction), terms.values(params)))
    for keep, recompute in zip(*results, strict=True):
        torch.testing.assert_close(recompute, keep, atol=TOL, rtol=TOL)


# ---------------------------------------------------------------------------------------------- memory
def peak_allocated_mib(fn) -> float:
    """Peak bytes of torch's CPU allocations while `fn` runs, in MiB: the running sum of the
    profiler's allocation and free events (independent of malloc and of other processes)."""
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
        key=lambda e: e.start_ns(),
    )
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 2**20


def omniglot_peak(memory: str, steps: int) -> float:
    """Peak memory of one second-order meta-gradient: 20-way 1-shot, 2 tasks, a narrow conv4."""
    torch.manual_seed(0)
    model = Conv4(1, 20, hidden=16)
    alpha = ConstantAlpha(0.1, shapes(model), steps)
    objective = MetaObjective(image_loss(model), alpha, steps, False, memory=memory)
    meta = {"model": dict(model.named_parameters()), "alpha": {}}
    support, query = image_tasks(2, 20)
    objective(meta, support, query)  # warm-up: lazily built state is not the meta-gradient's memory
    return peak_allocated_mib(lambda: objective(meta, support, query))


def test_recompute_memory_does_not_grow_with_inner_steps():
    keep = {steps: omniglot_peak("keep", steps) for steps in (2, 8)}
    recompute = {steps: omniglot_peak("recompute", steps) for steps in (2, 8)}
    assert keep[8] > 2 * keep[2], f"the measurement should see keep's growth: {keep}"
    assert recompute[8] < 1.2 * recompute[2], f"recompute grows with inner steps: {recompute}"
    assert recompute[8] < 0.5 * keep[8], f"recompute {recompute} vs keep {keep}"


# ---------------------------------------------------------------------------------------------- the setting
def test_the_setting_defaults_to_keep_and_reaches_the_meta_gradient(smoke_cfg):
    assert compose_config([]).memory == "keep"
    parts = build(smoke_cfg("memory=recompute"), REGRESSION)
    assert parts.objective.memory == "recompute"
    # eager: torch.compile would trace the recomputation into one graph (and is not asked to)
    objective = MetaObjective(
        lambda p, d: d, ConstantAlpha(0.1, {}, 1), 1, False, compile=True, memory="recompute"
    )
    assert objective.compiled is False


@pytest.mark.parametrize("value", ["low", "Keep", 1, None])
def test_a_bad_value_is_a_one_line_config_error(value):
    with pytest.raises(ConfigError) as excinfo:
        check_memory(value)
    message = str(excinfo.value)
    assert message.startswith(f"memory={value!r} is invalid: choose keep") and "recompute" in message
    assert "\n" not in message
    with pytest.raises(ConfigError):
        MetaObjective(lambda p, d: d, ConstantAlpha(0.1, {}, 1), 1, False, memory=value)


def test_the_run_check_refuses_a_bad_value_before_anything_is_built():
    cfg = compose_config(["memory=lots"])
    with pytest.raises(ConfigError, match="memory='lots' is invalid"):
        check_run(cfg, ("regression", "classification", "rl"))
    check_run(compose_config(["memory=recompute"]), ("regression", "classification", "rl"))
