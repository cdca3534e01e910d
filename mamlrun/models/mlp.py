"""A plain multi-layer perceptron: the paper's sinusoid regressor (1-40-40-1, ReLU)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from torch import Tensor, nn

from mamlrun.runtime.errors import ConfigError

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


class MLP(nn.Module):
    """Linear layers of the given hidden widths with an activation between them.

    Args:
        in_features: input size (1 for the sinusoid).
        out_features: output size.
        hidden: widths of the hidden layers, e.g. [40, 40].
        activation: one of relu, tanh, elu, gelu.
    """

    def __init__(
        self, in_features: int, out_features: int, hidden: Sequence[int] = (40, 40), activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError("model.activation", activation, f"choose one of {', '.join(ACTIVATIONS)}")
        for i, width in enumerate(hidden):
            if int(width) < 1:
                raise ConfigError(f"model.hidden[{i}]", width, "layer widths must be >= 1")
        widths = [int(in_features), *map(int, hidden), int(out_features)]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(widths)):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
