"""The paper's policy: a Gaussian with an MLP mean (2 x 100 ReLU) and a learned state-independent log-std,
and the options of garage's Meta-World MAML-TRPO policy (Yu et al. 2019's baselines): a tanh on the
mean, a log-std head on the same MLP (`std_head=shared`, garage's share_mean_std) and bounds on the std.

`forward(obs)` returns (mean, log_std of the mean's shape), so the policy can be called with
`torch.func.functional_call` under `vmap` like any other model; `gaussian_log_prob` and
`gaussian_kl` are the two formulas the RL trainer needs, summed over action dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mamlrun.models.mlp import ACTIVATIONS
from mamlrun.runtime.errors import ConfigError


class GaussianPolicy(nn.Module):
    """N(mean(obs), exp(log_std)^2) over actions.

    Args:
        obs_dim, act_dim: observation and action sizes (from the domain).
        hidden: hidden layer widths ([100, 100] in the paper).
        activation: relu | tanh | elu | gelu.
        init_std: the initial standard deviation of every action dimension (with `std_head=shared`,
            the log-std head's bias, so the std starts near it for every observation).
        mean_activation: null (a linear mean, the paper's) | tanh (means in [-1, 1], garage's).
        std_head: parameter (one learned log-std per action dimension, the paper's) | shared (the
            MLP's last layer outputs the mean and the log-std, the std depends on the observation).
        min_std, max_std: bounds on the std (null: none); the log-std is clamped into them, so it
            gets no gradient outside them (garage's Meta-World policy: 0.5 and 1.5).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_std: float = 1.0,
        mean_activation: str | None = None,
        std_head: str = "parameter",
        min_std: float | None = None,
        max_std: float | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError("model.activation", activation, f"choose one of {', '.join(ACTIVATIONS)}")
        if not init_std > 0:
            raise ConfigError("model.init_std", init_std, "must be > 0")
        if mean_activation not in MEAN_ACTIVATIONS:
            raise ConfigError("model.mean_activation", mean_activation, "choose null (linear) or tanh")
        if std_head not in STD_HEADS:
            raise ConfigError("model.std_head", std_head, f"choose {' or '.join(STD_HEADS)}")
        self.log_std_bounds = std_bounds(min_std, max_std)
        layers: list[nn.Module] = []
        width = int(obs_dim)
        for i, h in enumerate(hidden):
            if int(h) < 1:
                raise ConfigError(f"model.hidden[{i}]", h, "layer widths must be >= 1")
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        shared = std_head == "shared"
        layers.append(nn.Linear(width, int(act_dim) * (2 if shared else 1)))
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)
        self.squash = mean_activation == "tanh"
        if shared:
            self.net = nn.Sequential(*layers)  # outputs [mean, log_std]
            with torch.no_grad():
                self.net[-1].bias[self.act_dim :].fill_(math.log(init_std))
        else:
            self.mean = nn.Sequential(*layers)
            self.log_std = nn.Parameter(torch.full((int(act_dim),), math.log(init_std)))

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        if hasattr(self, "net"):
            mean, log_std = self.net(obs).split(self.act_dim, dim=-1)
        else:
            mean = self.mean(obs)
            log_std = self.log_std.expand_as(mean)
        if self.squash:
            mean = torch.tanh(mean)
        if self.log_std_bounds is not None:
            log_std = log_std.clamp(*self.log_std_bounds)
        return mean, log_std


MEAN_ACTIVATIONS = (None, "tanh")
STD_HEADS = ("parameter", "shared")


def std_bounds(min_std: float | None, max_std: float | None) -> tuple[float | None, float | None] | None:
    """(log min_std, log max_std) for the clamp, None where there is no bound; checks the bounds."""
    if min_std is None and max_std is None:
        return None
    for key, value in (("model.min_std", min_std), ("model.max_std", max_std)):
        if value is not None and not value > 0:
            raise ConfigError(key, value, "must be > 0 (or null: no bound)")
    if min_std is not None and max_std is not None and not min_std < max_std:
        raise ConfigError("model.max_std", max_std, f"must be above model.min_std={min_std}")
    return (
        None if min_std is None else math.log(min_std),
        None if max_std is None else math.log(max_std),
    )


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)), summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last (action) dimension."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)
