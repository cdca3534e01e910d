"""The paper's policy: a Gaussian with an MLP mean (2 x 100 ReLU) and a learned state-independent log-std.

`forward(obs)` returns (mean, log_std broadcast to the mean's shape), so the policy can be called with
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
        init_std: the initial standard deviation of every action dimension.
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_std: float = 1.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError("model.activation", activation, f"choose one of {', '.join(ACTIVATIONS)}")
        if not init_std > 0:
            raise ConfigError("model.init_std", init_std, "must be > 0")
        layers: list[nn.Module] = []
        width = int(obs_dim)
        for i, h in enumerate(hidden):
            if int(h) < 1:
                raise ConfigError(f"model.hidden[{i}]", h, "layer widths must be >= 1")
            layers += [nn.Linear(width, int(h)), ACTIVATIONS[activation]()]
            width = int(h)
        layers.append(nn.Linear(width, int(act_dim)))
        self.mean = nn.Sequential(*layers)
        self.log_std = nn.Parameter(torch.full((int(act_dim),), math.log(init_std)))
        self.obs_dim, self.act_dim = int(obs_dim), int(act_dim)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.expand_as(mean)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, actions: Tensor) -> Tensor:
    """log N(actions; mean, exp(log_std)), summed over the last (action) dimension."""
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p: Tensor, log_std_p: Tensor, mean_q: Tensor, log_std_q: Tensor) -> Tensor:
    """KL(p || q) of diagonal Gaussians, summed over the last (action) dimension."""
    var_p, var_q = torch.exp(2 * log_std_p), torch.exp(2 * log_std_q)
    return (log_std_q - log_std_p + (var_p + (mean_p - mean_q).pow(2)) / (2 * var_q) - 0.5).sum(-1)
