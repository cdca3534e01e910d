"""Meta-RL with MAML-TRPO: REINFORCE inside, TRPO (or a torch optimizer) outside."""

from __future__ import annotations

from mamlrun.trainers.recipe import Recipe
from mamlrun.trainers.rl.meta_test import meta_test, validate
from mamlrun.trainers.rl.parts import build, check_config
from mamlrun.trainers.rl.step import step

RL_RECIPE = Recipe(check_config=check_config, build=build, step=step, validate=validate, meta_test=meta_test)

__all__ = ["RL_RECIPE"]
