"""The MAML algorithm as pure functions over a params dict; knows nothing about domains."""

from mamlrun.maml.adapt import (
    MEMORY_MODES,
    Adapts,
    Params,
    TaskLoss,
    adapt,
    adaptation,
    adaptation_curve,
    check_memory,
    inner_step,
    recomputed_step,
    task_meta_loss,
)
from mamlrun.maml.alpha import (
    AlphaSchedule,
    ConstantAlpha,
    HalvingAlpha,
    LearnedAlpha,
    MetaSGDAlpha,
    PerStepAlpha,
    alpha_at_test,
)
from mamlrun.maml.objective import MetaGradient, MetaObjective
from mamlrun.maml.terms import MetaTerms, QueryLoss

__all__ = [
    "MEMORY_MODES",
    "Adapts",
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
    "adaptation",
    "adaptation_curve",
    "alpha_at_test",
    "check_memory",
    "inner_step",
    "recomputed_step",
    "task_meta_loss",
]
