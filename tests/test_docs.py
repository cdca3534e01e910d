"""The Examples in the public core's docstrings (mamlrun.maml) run and print what they say.

A module's docstring may set up names its functions' examples use, so each module's examples run in
one namespace, the module docstring first (plain doctest gives every docstring a fresh copy).
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest

# by name: `mamlrun.maml.adapt` as an attribute is the function the package re-exports, not the module
MODULES = [
    "mamlrun.maml.adapt",
    "mamlrun.maml.alpha",
    "mamlrun.maml.chunks",
    "mamlrun.maml.objective",
    "mamlrun.maml.terms",
    "mamlrun.trainers.annealing",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str):
    module = importlib.import_module(name)
    tests = sorted(doctest.DocTestFinder().find(module), key=lambda t: t.lineno or 0)
    namespace = dict(module.__dict__)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    examples = 0
    for test in tests:
        test.globs = namespace
        runner.run(test, out=out.write, clear_globs=False)
        examples += len(test.examples)
    assert examples > 0, f"{module.__name__} has no docstring examples"
    assert runner.failures == 0, out.getvalue()
