"""Task distributions: what a task is and how a meta-batch of them is sampled."""

from mamlrun.domains.base import TaskBatch

__all__ = ["TaskBatch"]
