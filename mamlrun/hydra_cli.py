"""mamlrun's side of Hydra's command line: arguments in any order, overrides checked before Hydra
composes anything, and Hydra's own errors reported as one line with exit code 2.

Hydra's argument parser stops at the first override (`a=1 -m b=2` is refused), accepts a key given
twice (the last wins) and `+key=value` for a key nothing reads, and reports an unknown option, a
YAML syntax error or an output directory it cannot create with a traceback and exit code 1. A
typo must cost a second and say what is valid, not start a wrong run or print 89 lines.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import yaml

from mamlrun.runtime.errors import UserError, describe_os_error


class HydraArgumentError(UserError):
    """A Hydra command line mamlrun refuses before anything runs."""


def hydra_parser() -> argparse.ArgumentParser:
    """Hydra's own argument parser (the options `mamlrun train` passes through)."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def parse_strictly(args: list[str]) -> None:
    """Hydra's parser on `args`, its complaint (an unknown option, a missing value) as one line."""
    parser = hydra_parser()

    def refuse(message: str) -> NoReturn:
        raise HydraArgumentError(f"{message} (`mamlrun train --help` lists the options)")

    parser.error = refuse  # type: ignore[method-assign]
    parsed = parser.parse_args(args)
    modes = {
        "--run": parsed.run,
        "--multirun (-m)": parsed.multirun,
        f"--cfg {parsed.cfg}": parsed.cfg is not None,
        "--info": parsed.info is not None,
        "--shell-completion": parsed.shell_completion,
    }
    chosen = [name for name, on in modes.items() if on]
    if len(chosen) > 1:
        raise HydraArgumentError(
            f"{' and '.join(chosen)} cannot be combined: give one of --run, --multirun, --cfg, --info, "
            "--shell-completion (`mamlrun train --cfg hydra` shows the Hydra config a sweep's jobs get)"
        )
    if parsed.resolve and parsed.cfg is None:
        raise HydraArgumentError("--resolve goes with --cfg (e.g. `mamlrun train --cfg job --resolve`)")


def split_arguments(args: list[str]) -> tuple[list[str], list[str]]:
    """(Hydra options with their values, overrides), in the order given: options may come anywhere."""
    actions = hydra_parser()._option_string_actions
    options: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        action = actions.get(arg.split("=", 1)[0]) if arg.startswith("-") else None
        (options if arg.startswith("-") else overrides).append(arg)
        i += 1
        if action is None or "=" in arg or i >= len(args):
            continue
        # nargs None: a value follows; "?": one may follow (Hydra's --info takes one of its choices)
        if action.nargs is None or (action.nargs == "?" and action.choices and args[i] in action.choices):
            options.append(args[i])
            i += 1
    return options, overrides


def option_value(options: list[str], *names: str) -> str | None:
    """The value given to an option (`--config-dir X`, `-cd X` or `--config-dir=X`), if any."""
    for i, arg in enumerate(options):
        key, _, inline = arg.partition("=")
        if key in names:
            return inline or (options[i + 1] if i + 1 < len(options) else None)
    return None


def check_overrides(overrides: list[str], group_dirs: Iterable[Path]) -> None:
    """Refuse, in one line, an override Hydra would accept although it cannot be meant: a key given
    twice (Hydra silently keeps the last) and `+key=value` for a key that is neither a config
    group nor a Hydra setting (nothing reads it; `++key=value` stays the explicit escape)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise HydraArgumentError(f"bad override: {first_line(str(exc))}") from None
    dirs = [Path(d) for d in group_dirs]
    seen: dict[str, str] = {}
    for override in parsed:
        key = override.key_or_group
        if key in seen:
            raise HydraArgumentError(
                f"{key} is given twice ({seen[key]!r} and {override.input_line!r}): give it once"
            )
        seen[key] = override.input_line
        is_group = any((d / key).is_dir() for d in dirs)
        if override.is_add() and not override.is_force_add() and not is_group and not key.startswith("hydra"):
            raise HydraArgumentError(
                f"override {override.input_line!r}: mamlrun reads no setting named {key!r}, so adding it does "
                f"nothing; set an existing key with {key}=... (`mamlrun train --cfg job` lists them)"
            )


def check_user_yaml(folders: Iterable[Path]) -> None:
    """A YAML syntax error in a user config folder (--config-dir, hydra.searchpath), named with its
    file and line, before Hydra reports it as an 89-line traceback without the file."""
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark
                where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
                raise HydraArgumentError(f"YAML syntax error in {path}{where}: {exc.problem}") from None
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise HydraArgumentError(f"cannot read {path} as YAML: {first_line(str(exc))}") from None


def search_path_folders(overrides: list[str]) -> list[Path]:
    """The local folders a `hydra.searchpath=[file://...]` override adds."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # check_overrides names the bad one
        return []
    folders = []
    for override in parsed:
        if override.key_or_group == "hydra.searchpath":
            value = override.value()
            for entry in value if isinstance(value, list) else [value]:
                text = str(entry)
                if text.startswith("file://"):
                    folders.append(Path(text.removeprefix("file://")))
                elif "://" not in text:
                    folders.append(Path(text))
    return [f for f in folders if f.is_dir()]


def hydra_error_line(exc: BaseException, overrides: list[str]) -> str | None:
    """One line for an error Hydra raises before or around the task (None: not a user error)."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, MissingConfigException) and exc.options is not None and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option in group {group}; valid: {', '.join(exc.options)}"
    if isinstance(exc, ConfigCompositionException) and isinstance(exc.__cause__, OmegaConfBaseException):
        cause = exc.__cause__
        full_key = str(getattr(cause, "full_key", "") or "")
        parent = getattr(cause, "parent_node", None)
        valid = [str(k) for k in parent if k != "hydra"] if parent is not None else []
        given = next((o for o in overrides if o.lstrip("+~").split("=", 1)[0] == full_key), full_key)
        where = full_key.rpartition(".")[0]
        scope = f"keys under {where}" if where else "top-level keys"
        return (
            f"override {given!r}: no setting named {full_key!r}; valid {scope}: {', '.join(valid) or 'none'}"
        )
    if isinstance(exc, yaml.YAMLError):
        return f"YAML syntax error in a config file: {first_line(str(exc))}"
    if isinstance(exc, OSError):  # Hydra making the run or sweep directory
        return describe_os_error(exc)
    if isinstance(exc, (HydraException, OmegaConfBaseException)):  # Hydra's own words, on one line
        return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return None


def quoted(value: str) -> str:
    """`value` as a quoted string of Hydra's override grammar, read back exactly: a run directory
    named `lr=0.01,seed=1` (a sweep's `${hydra.job.override_dirname}`) or `a b/ü` is one value,
    not a syntax error. Quotes are escaped, and backslashes where they would escape a quote."""
    escaped = re.sub(r"(\\+)(?='|$)", lambda run: run.group(1) * 2, value)
    return "'" + escaped.replace("'", "\\'") + "'"


def first_line(text: str) -> str:
    return next((line.strip() for line in text.strip().splitlines() if line.strip()), text)
