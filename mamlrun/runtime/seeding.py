"""Seeds every global random number generator from one integer."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A dedicated generator (task samplers and evaluation sets each own one)."""
    return torch.Generator(device=device).manual_seed(int(seed))
