"""Alpha schedules: the step sizes each one hands the inner loop, and its bad-value errors."""

from __future__ import annotations

import pytest
import torch

from mamlrun.maml import ConstantAlpha, HalvingAlpha, LearnedAlpha, MetaSGDAlpha, PerStepAlpha
from mamlrun.runtime.errors import ConfigError

SHAPES = {"net.0.weight": torch.Size([4, 1]), "net.0.bias": torch.Size([4])}


def rates(alpha, step):
    return {
        k: (v if v.ndim > 0 else float(v.detach())) if torch.is_tensor(v) else float(v)
        for k, v in alpha.rates(dict(alpha.named_parameters()), step).items()
    }


def test_constant_and_per_step_and_halving():
    assert rates(ConstantAlpha(0.3, SHAPES, 2), 5) == {"net.0.weight": 0.3, "net.0.bias": 0.3}
    per_step = PerStepAlpha([0.4, 0.2, 0.1], SHAPES, 3)
    assert [rates(per_step, k)["net.0.bias"] for k in range(5)] == [0.4, 0.2, 0.1, 0.1, 0.1]
    halving = HalvingAlpha(0.1, SHAPES, 1)
    assert [rates(halving, k)["net.0.weight"] for k in range(4)] == [0.1, 0.05, 0.05, 0.05]
    assert not list(halving.parameters())


def test_learned_alpha_is_one_per_step_and_tensor_and_reuses_the_last_step():
    alpha = LearnedAlpha(0.01, SHAPES, 3)
    assert sorted(p.shape for p in alpha.parameters()) == [torch.Size([3])] * 2
    with torch.no_grad():
        alpha.lrs[alpha.keys["net.0.bias"]].copy_(torch.tensor([1.0, 2.0, 3.0]))
    assert [rates(alpha, k)["net.0.bias"] for k in range(5)] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert rates(alpha, 0)["net.0.weight"] == pytest.approx(0.01)


def test_meta_sgd_alpha_is_one_per_element():
    alpha = MetaSGDAlpha(0.02, SHAPES, 1)
    got = rates(alpha, 4)
    assert got["net.0.weight"].shape == SHAPES["net.0.weight"]
    assert torch.allclose(got["net.0.bias"], torch.full((4,), 0.02))
    assert sum(p.numel() for p in alpha.parameters()) == 8


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: ConstantAlpha(0.0, SHAPES, 1), "alpha.value"),
        (lambda: ConstantAlpha(-0.1, SHAPES, 1), "alpha.value"),
        (lambda: ConstantAlpha(float("nan"), SHAPES, 1), "alpha.value"),
        (lambda: PerStepAlpha([0.1, -1.0], SHAPES, 2), "alpha.values[1]"),
        (lambda: PerStepAlpha([], SHAPES, 2), "alpha.values"),
        (lambda: HalvingAlpha(-0.1, SHAPES, 1), "alpha.value"),
        (lambda: LearnedAlpha(0.0, SHAPES, 1), "alpha.init"),
        (lambda: MetaSGDAlpha(-2, SHAPES, 1), "alpha.init"),
    ],
)
def test_non_positive_alpha_is_a_config_error_naming_the_key(make, key):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}=") and "> 0" in str(info.value)
