"""Networks. Any `nn.Module` works with mamlrun (a model config with its `_target_`); these are the paper's."""

from mamlrun.models.conv import Conv4, FCNet
from mamlrun.models.mlp import MLP
from mamlrun.models.policy import GaussianPolicy

__all__ = ["MLP", "Conv4", "FCNet", "GaussianPolicy"]
