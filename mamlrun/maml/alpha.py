"""Inner step-size (alpha) schedules.

A schedule answers one question: which step size does parameter `name` get at inner step `k`?
It is an `nn.Module` so that the learnable schedules (`LearnedAlpha`, `MetaSGDAlpha`) hold their
alphas as parameters that the meta-optimiser updates, the checkpoint saves and W&B logs.

`rates(alpha_params, step)` is a pure function of `alpha_params` (a dict of this module's
parameters), so the functional core can differentiate through it with `torch.func`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mamlrun.runtime.errors import ConfigError

Rates = dict[str, Tensor | float]


def _check_positive(key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:  # NaN too
        raise ConfigError(key, value, "the inner step size must be a finite number > 0")
    return float(value)


def _safe(name: str) -> str:
    """Parameter names like `net.0.weight` are not valid ParameterDict keys; '.' -> '__'."""
    return name.replace(".", "__")


class AlphaSchedule(nn.Module):
    """Base class: a schedule is bound to the model's parameter shapes and the step count.

    Args:
        param_shapes: name -> shape of every model parameter that is adapted.
        num_steps: inner steps at meta-training time (learned schedules hold one alpha per step;
            later test-time steps reuse the last one).

    Example:
        >>> import torch
        >>> shapes = {"weight": torch.Size([2, 3]), "bias": torch.Size([2])}
        >>> PerStepAlpha([0.1, 0.05], shapes, num_steps=2).rates({}, step=5)["weight"]
        0.05
        >>> learned = LearnedAlpha(0.1, shapes, num_steps=2)
        >>> rates = learned.rates(dict(learned.named_parameters()), step=1)
        >>> rates["bias"].requires_grad  # a meta-parameter: the outer step trains it
        True
    """

    learnable = False

    def __init__(self, param_shapes: Mapping[str, torch.Size], num_steps: int) -> None:
        super().__init__()
        self.param_names = list(param_shapes)
        self.num_steps = max(1, int(num_steps))

    def rates(self, alpha_params: Mapping[str, Tensor], step: int) -> Rates:
        """Step size per parameter name at inner step `step` (0-based)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short human-readable summary for logs."""
        return type(self).__name__


class ConstantAlpha(AlphaSchedule):
    """One fixed alpha for every step and parameter (the paper's setting)."""

    def __init__(self, value: float, param_shapes: Mapping[str, torch.Size], num_steps: int) -> None:
        super().__init__(param_shapes, num_steps)
        self.value = _check_positive("alpha.value", value)

    def rates(self, alpha_params: Mapping[str, Tensor], step: int) -> Rates:
        return dict.fromkeys(self.param_names, self.value)

    def describe(self) -> str:
        return f"constant alpha={self.value:g}"


class PerStepAlpha(AlphaSchedule):
    """A fixed alpha per inner step; steps past the end of the list reuse the last value."""

    def __init__(
        self,
        values: Sequence[float],
        param_shapes: Mapping[str, torch.Size],
        num_steps: int,
        key: str = "alpha.values",
    ) -> None:
        super().__init__(param_shapes, num_steps)
        if len(values) == 0:
            raise ConfigError(key, list(values), "give at least one step size > 0")
        self.values = [_check_positive(f"{key}[{i}]", v) for i, v in enumerate(values)]

    def rates(self, alpha_params: Mapping[str, Tensor], step: int) -> Rates:
        return dict.fromkeys(self.param_names, self.values[min(step, len(self.values) - 1)])

    def describe(self) -> str:
        return "per-step alpha=" + ",".join(f"{v:g}" for v in self.values) + " (last repeats)"


class HalvingAlpha(PerStepAlpha):
    """alpha at the first step, alpha/2 at every later one (the paper's RL test-time 0.1 -> 0.05)."""

    def __init__(self, value: float, param_shapes: Mapping[str, torch.Size], num_steps: int) -> None:
        value = _check_positive("alpha.value", value)
        super().__init__([value, value / 2], param_shapes, num_steps)


class LearnedAlpha(AlphaSchedule):
    """One learnable alpha per inner step and per parameter tensor (MAML++'s LSLR).

    Test-time steps beyond `num_steps` reuse the last step's alphas.
    """

    learnable = True

    def __init__(self, init: float, param_shapes: Mapping[str, torch.Size], num_steps: int) -> None:
        super().__init__(param_shapes, num_steps)
        init = _check_positive("alpha.init", init)
        self.keys = {name: _safe(name) for name in self.param_names}
        self.lrs = nn.ParameterDict(
            {key: nn.Parameter(torch.full((self.num_steps,), init)) for key in self.keys.values()}
        )

    def rates(self, alpha_params: Mapping[str, Tensor], step: int) -> Rates:
        k = min(step, self.num_steps - 1)
        return {name: alpha_params[f"lrs.{key}"][k] for name, key in self.keys.items()}

    def describe(self) -> str:
        return f"learned alpha per step x tensor ({self.num_steps} x {len(self.keys)})"


class MetaSGDAlpha(AlphaSchedule):
    """One learnable alpha per parameter element, shared by all steps (Meta-SGD)."""

    learnable = True

    def __init__(self, init: float, param_shapes: Mapping[str, torch.Size], num_steps: int) -> None:
        super().__init__(param_shapes, num_steps)
        init = _check_positive("alpha.init", init)
        self.keys = {name: _safe(name) for name in self.param_names}
        self.lrs = nn.ParameterDict(
            {self.keys[n]: nn.Parameter(torch.full(tuple(s), init)) for n, s in param_shapes.items()}
        )

    def rates(self, alpha_params: Mapping[str, Tensor], step: int) -> Rates:
        return {name: alpha_params[f"lrs.{key}"] for name, key in self.keys.items()}

    def describe(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"Meta-SGD alpha per element ({n} alphas)"


def alpha_at_test(trained: AlphaSchedule, values: Sequence[float] | None) -> AlphaSchedule:
    """The schedule validation and the meta-test adapt with: the trained one, or `eval.alpha_values`.

    A test-time step size may differ from the training one (the paper's 2D-navigation code trained
    with alpha 0.5 and adapted at test with 0.25); only a fixed schedule can be replaced, since a
    learned one is part of what meta-training produced.
    """
    if values is None:
        return trained
    key = "eval.alpha_values"
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(
            key,
            values,
            "give a list of step sizes > 0, one per test step (the last repeats), e.g. [0.25], or null",
        )
    if trained.learnable:
        raise ConfigError(
            key,
            list(values),
            f"{type(trained).__name__} meta-trains its own step sizes; a test-time list replaces only "
            "alpha=constant, per_step or halving: use null",
        )
    return PerStepAlpha(
        list(values), dict.fromkeys(trained.param_names, torch.Size()), trained.num_steps, key
    )
