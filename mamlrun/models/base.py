"""What the trainers ask of a model beyond `nn.Module`, as a protocol (never `hasattr`).

Any `nn.Module` can be a mamlrun model (`model._target_`); `build_model` gives one that does not
declare `not_meta_trained` the default, nothing, so every later reader asks the attribute itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class MetaModel(Protocol):
    """A model that names the parameters the outer step leaves at their initial values
    (`Conv4(zero_head=True)`'s head, which learns only in the inner loop); empty for most."""

    not_meta_trained: tuple[str, ...]


def not_meta_trained(model: object) -> tuple[str, ...]:
    """The parameter names the outer step leaves at init: the model's own list when it declares one
    (`MetaModel`), else none (any other `nn.Module`)."""
    return tuple(model.not_meta_trained) if isinstance(model, MetaModel) else ()
