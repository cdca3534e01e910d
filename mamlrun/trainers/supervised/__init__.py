"""Supervised MAML (regression and classification): one recipe per kind, the same functions with
a different loss and metric."""

from __future__ import annotations

import functools

from mamlrun.trainers.recipe import Recipe
from mamlrun.trainers.supervised.meta_test import meta_test, validate
from mamlrun.trainers.supervised.parts import CLASSIFICATION, REGRESSION, SupervisedKind, build, check_config
from mamlrun.trainers.supervised.step import step


def recipe(kind: SupervisedKind) -> Recipe:
    """The supervised recipe for one loss/metric pair."""
    return Recipe(
        check_config=check_config,
        build=functools.partial(build, kind=kind),
        step=step,
        validate=validate,
        meta_test=meta_test,
    )


REGRESSION_RECIPE = recipe(REGRESSION)
CLASSIFICATION_RECIPE = recipe(CLASSIFICATION)

__all__ = ["CLASSIFICATION_RECIPE", "REGRESSION_RECIPE"]
