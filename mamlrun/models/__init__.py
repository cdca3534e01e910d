"""Networks. Any `nn.Module` works with mamlrun (`model._target_=my.pkg.Net`); these are the paper's."""

from mamlrun.models.mlp import MLP

__all__ = ["MLP"]
