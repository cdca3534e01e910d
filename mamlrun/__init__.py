"""mamlrun: a Hydra-configured runner for Model-Agnostic Meta-Learning experiments.

Importing the package does nothing else: the console script (`mamlrun.entry`) must be able to
answer a signal from its first moment, so `__version__` is looked up only when asked for.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("mamlrun")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0.0.0+source"
    raise AttributeError(f"module 'mamlrun' has no attribute {name!r}")
