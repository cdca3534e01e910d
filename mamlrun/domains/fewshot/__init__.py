"""Few-shot image classification: datasets (Omniglot, MiniImageNet) and the N-way K-shot sampler."""

from mamlrun.domains.fewshot.images import ImageSet
from mamlrun.domains.fewshot.sampler import FewShotTasks

__all__ = ["FewShotTasks", "ImageSet"]
