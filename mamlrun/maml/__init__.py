"""The MAML algorithm as pure functions over a params dict; knows nothing about domains."""

from mamlrun.maml.adapt import Params, TaskLoss, adapt, adaptation_curve, inner_step, task_meta_loss
from mamlrun.maml.alpha import (
    AlphaSchedule,
    ConstantAlpha,
    HalvingAlpha,
    LearnedAlpha,
    MetaSGDAlpha,
    PerStepAlpha,
)
from mamlrun.maml.objective import MetaGradient, MetaObjective
from mamlrun.maml.terms import MetaTerms, QueryLoss

__all__ = [
    "AlphaSchedule",
    "ConstantAlpha",
    "HalvingAlpha",
    "LearnedAlpha",
    "MetaGradient",
    "MetaObjective",
    "MetaSGDAlpha",
    "MetaTerms",
    "Params",
    "PerStepAlpha",
    "QueryLoss",
    "TaskLoss",
    "adapt",
    "adaptation_curve",
    "inner_step",
    "task_meta_loss",
]
