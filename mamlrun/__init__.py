"""mamlrun: a Hydra-configured runner for Model-Agnostic Meta-Learning experiments."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mamlrun")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
