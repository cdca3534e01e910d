"""Which parameters the inner loop adapts (`inner_params`): MAML's all, ANIL's head, BOIL's body,
or the parameters whose names match a list of patterns.

ANIL (Raghu et al. 2020) adapts only the head and meta-learns the body as a frozen feature
extractor inside the loop; BOIL (Oh et al. 2021) adapts only the body and keeps the head as it was
meta-learned. Every parameter is still meta-trained by the outer step; the inner gradient is
computed only for the adapted ones (`maml.adapt.inner_step`), so ANIL's inner backward pass stops
at the head. The head is the model's last `nn.Linear`: the classifier of the conv nets and the MLPs,
the mean's output layer of the Gaussian policy (whose log-std then belongs to the body).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from omegaconf import DictConfig, ListConfig
from torch import nn

from mamlrun.maml import Adapts
from mamlrun.models.base import not_meta_trained
from mamlrun.models.norm import per_step_names
from mamlrun.runtime.errors import ConfigError

CHOICES = {
    "all": "MAML: every parameter",
    "head": "ANIL: the last linear layer only",
    "body": "BOIL: every parameter but the last linear layer",
}
VALID = (
    ", ".join(f"{name} ({meaning})" for name, meaning in CHOICES.items())
    + ', or a list of parameter-name patterns such as ["head.*"]'
)


def head_names(model: nn.Module) -> list[str]:
    """The parameter names of the model's last `nn.Linear` (none when it has no linear layer)."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        return []
    prefix = linears[-1]
    return [f"{prefix}.{n}" if prefix else n for n, _ in model.get_submodule(prefix).named_parameters()]


def resolve_inner_params(cfg: DictConfig, model: nn.Module) -> Adapts:
    """The names the inner loop adapts (None: all), or a one-line `ConfigError` naming the choices."""
    setting = cfg.get("inner_params", "all")  # absent from configs written before the setting existed
    names = [n for n, _ in model.named_parameters()]
    model_name = type(model).__name__
    if setting == "all":
        return None
    if setting in ("head", "body"):
        head = head_names(model)
        if not head:
            raise ConfigError(
                "inner_params",
                setting,
                f"{model_name} has no linear layer to call its head: give name patterns",
            )
        chosen = head if setting == "head" else [n for n in names if n not in head]
    elif isinstance(setting, ListConfig | list) and setting and all(isinstance(p, str) for p in setting):
        patterns = list(setting)
        unmatched = [p for p in patterns if not any(fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise ConfigError(
                "inner_params",
                patterns,
                f"{unmatched[0]!r} matches no parameter of {model_name}; its parameters: {', '.join(names)}",
            )
        chosen = [n for n in names if any(fnmatchcase(n, p) for p in patterns)]
    else:
        raise ConfigError("inner_params", setting, f"choose {VALID}")
    if not set(chosen) - per_step_names(model):  # per-step BatchNorm rows are meta-trained, never adapted
        raise ConfigError("inner_params", setting, f"it leaves {model_name} nothing to adapt: choose {VALID}")
    frozen = set(not_meta_trained(model))
    idle = [n for n in names if n in frozen and n not in chosen]
    if idle:
        raise ConfigError(
            "inner_params",
            setting,
            f"{', '.join(idle)} learn only in the inner loop (model.zero_head=true) and would never learn: "
            "adapt them too, or use model.zero_head=false",
        )
    return None if len(chosen) == len(names) else frozenset(chosen)


def describe(adapts: Adapts, cfg: DictConfig) -> str:
    """For the start banner: empty for MAML, else what adapts."""
    if adapts is None:
        return ""
    setting = cfg.get("inner_params", "all")
    label = setting if isinstance(setting, str) else "patterns"
    return f" | inner loop adapts {label} ({len(adapts)} tensors)"
