"""The paper's few-shot image classifiers.

- `Conv4`: 4 blocks of [3x3 conv, BatchNorm, ReLU] with either stride 2 (Omniglot, 64 filters; the
  features are averaged over space) or 2x2 max-pooling (MiniImageNet, 32 filters; flattened).
- `FCNet`: the paper's fully connected Omniglot baseline, 256-128-64-64 with BatchNorm and ReLU.

BatchNorm keeps no running statistics (`track_running_stats=False`): it always normalises with the
statistics of the batch it sees, in meta-training and at meta-test, as the paper's code does. That
also keeps the networks stateless, which `torch.func.vmap` over tasks needs. The exception is
`norm_stats=running` (MAML++'s per-step running statistics, `models.norm`), which only validation
and the meta-test read.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from mamlrun.models.norm import NORM_STATS, StepBatchNorm
from mamlrun.runtime.errors import ConfigError, require_int


def _positive(key: str, value: int) -> int:
    """A layer size: an integer >= 1."""
    return require_int(key, value, 1, "a layer size")


def check_norm_stats(norm_stats: object, per_step_norm: bool) -> bool:
    """Whether `model.norm_stats` asks for running statistics; a one-line ConfigError when it names
    no choice, or asks for them without per-step BatchNorm (whose rows hold them)."""
    if not isinstance(norm_stats, str) or norm_stats not in NORM_STATS:
        raise ConfigError(
            "model.norm_stats",
            norm_stats,
            "choose batch (each batch's own statistics) or running (per-step running statistics, MAML++'s BNRS)",
        )
    if norm_stats == "running" and not per_step_norm:
        raise ConfigError(
            "model.norm_stats",
            norm_stats,
            "running statistics are kept per inner step, beside per-step BatchNorm weights: "
            "set model.per_step_norm=true too, or use batch",
        )
    return norm_stats == "running"


class Conv4(nn.Module):
    """Four conv blocks and a linear head.

    Args:
        in_channels: 1 for Omniglot, 3 for MiniImageNet.
        out_features: N, the ways.
        hidden: filters per conv layer (64 Omniglot, 32 MiniImageNet).
        image_size: input height = width (only needed with max-pooling, to size the head).
        pool: 2x2 max-pooling after each block (MiniImageNet) instead of stride-2 convolutions (Omniglot).
        zero_head: every task starts from a zero head (Kao et al. 2022's zeroing trick): the head is
            adapted in the inner loop but never meta-trained, so no class label starts ahead of
            another; one inner step makes class c's row alpha / N times (its support images' mean
            feature minus the mean over all support images).
        per_step_norm: a BatchNorm weight and bias per inner step (MAML++'s BNWB, `StepBatchNorm`)
            for `norm_steps` steps (the run's inner steps).
        norm_stats: what validation and the meta-test normalise with: "batch" (each batch's own
            statistics, as in meta-training) or "running" (per-step running statistics collected in
            meta-training, MAML++'s BNRS; needs `per_step_norm`).
    """

    def __init__(
        self,
        in_channels: int,
        out_features: int,
        hidden: int = 64,
        image_size: int = 28,
        pool: bool = False,
        zero_head: bool = False,
        per_step_norm: bool = False,
        norm_steps: int = 1,
        norm_stats: str = "batch",
    ) -> None:
        super().__init__()
        _positive("model.hidden", hidden)
        _positive("model.out_features", out_features)
        if not isinstance(per_step_norm, bool):
            raise ConfigError("model.per_step_norm", per_step_norm, "true or false")
        steps = require_int("model.norm_steps", norm_steps, 0, "the inner steps of per-step BatchNorm")
        running = check_norm_stats(norm_stats, per_step_norm)
        self.pool = pool
        blocks: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(4):
            blocks += [
                nn.Conv2d(channels, hidden, 3, stride=1 if pool else 2, padding=1),
                StepBatchNorm(hidden, steps, running_stats=running)
                if per_step_norm
                else nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
            ]
            if pool:
                blocks.append(nn.MaxPool2d(2))
            channels = hidden
            size = size // 2 if pool else (size + 1) // 2
        self.features = nn.Sequential(*blocks)
        if pool and size < 1:
            raise ConfigError(
                "model.image_size", image_size, "images must be at least 16x16 for four 2x2 poolings"
            )
        self.head = nn.Linear(hidden * size * size if pool else hidden, out_features)
        if not isinstance(zero_head, bool):
            raise ConfigError("model.zero_head", zero_head, "true or false")
        self.not_meta_trained: tuple[str, ...] = ()  # parameters the outer step leaves at their init
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.not_meta_trained = ("head.weight", "head.bias")

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        h = h.flatten(1) if self.pool else h.mean(dim=(2, 3))
        return self.head(h)


class FCNet(nn.Module):
    """Flattened image -> hidden layers with BatchNorm and ReLU -> N logits (the paper's 256-128-64-64).

    Args:
        in_channels, image_size: the input images' shape (in_channels x image_size x image_size).
        out_features: N, the ways.
        hidden: the hidden layer widths.
    """

    def __init__(
        self, in_channels: int, image_size: int, out_features: int, hidden: Sequence[int] = (256, 128, 64, 64)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = _positive("model.in_channels", in_channels) * _positive("model.image_size", image_size) ** 2
        for i, h in enumerate(hidden):
            _positive(f"model.hidden[{i}]", h)
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h, track_running_stats=False), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, _positive("model.out_features", out_features)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
