"""The `mamlrun` command (Typer). No training logic lives here.

mamlrun train [HYDRA ARGS...]     every argument goes to Hydra unchanged (overrides, -m, --cfg job,
                                  --info, hydra/launcher=..., --help shows the config groups)
mamlrun <overrides> | -m <sweep>  the same as `mamlrun train ...`
mamlrun eval TARGET [OVERRIDES]   re-run the meta-test on a checkpoint or run directory
mamlrun resume RUN_DIR [OVERRIDES] continue a run in its own directory (same overrides)
mamlrun configs                   every config group, its options and what each is
mamlrun version
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

# conf/ sits at the top of the repository; mamlrun/conf links to it so that wheels carry it too.
CONF_DIR = Path(__file__).resolve().parent / "conf"
COMMANDS = ("train", "eval", "resume", "configs", "version")
# groups whose option is not chosen in conf/config.yaml's defaults list
IMPLICIT_DEFAULTS = {"hydra/launcher": "basic", "meta_test": "chosen by the domain"}
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="MAML experiment runner: Hydra-configured meta-training, meta-testing and sweeps.\n\n"
    "A bare `mamlrun <overrides>` or `mamlrun -m <sweep>` means `mamlrun train ...`.",
)


def run_hydra(args: list[str]) -> None:
    """Run `mamlrun.run.train` as a Hydra app with `args` as its command line."""
    import hydra

    from mamlrun.run import train as train_task

    if not (CONF_DIR / "config.yaml").is_file():
        typer.echo(f"mamlrun: error: config directory not found: {CONF_DIR}", err=True)
        raise SystemExit(2)
    sys.argv = ["mamlrun", *args]
    hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(train_task)()


@app.command(context_settings=PASS_THROUGH)
def train(ctx: typer.Context) -> None:
    """Compose the config groups and meta-train; all arguments go to Hydra (try `mamlrun train --help`)."""
    run_hydra(list(ctx.args))


@app.command(name="eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_(
    ctx: typer.Context,
    target: Annotated[
        Path, typer.Argument(help="a checkpoint file, or a run directory (best.pt, else last.pt)")
    ],
) -> None:
    """Re-run the meta-test protocol on a checkpoint; key=value overrides change it (eval.tasks=1000)."""
    from mamlrun.run import evaluate_checkpoint

    evaluate_checkpoint(target, list(ctx.args))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def resume(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="the run directory of an earlier run (it holds .hydra/)")],
) -> None:
    """Continue a run from its checkpoints/last.pt, with the overrides it was started with (one job
    of a sweep resumes alone: the sweep's own settings are not replayed)."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        typer.echo(
            f"mamlrun: error: {run_dir} is not a mamlrun run directory (no {overrides_file})", err=True
        )
        raise SystemExit(2)
    overrides = [o for o in yaml.safe_load(overrides_file.read_text()) or [] if not is_sweep_setting(o)]
    run_hydra([*overrides, *ctx.args, f"hydra.run.dir={run_dir.resolve()}", "hydra.mode=RUN"])


def is_sweep_setting(override: str) -> bool:
    """Overrides that start a sweep (an Optuna preset, a sweeper): resuming one job must not replay them."""
    key = override.lstrip("+~").split("=", 1)[0]
    return key in ("hparams_search", "hydra/sweeper", "hydra.mode") or key.startswith("hydra.sweeper.")


def describe_options(conf_dir: Path = CONF_DIR) -> dict[str, list[tuple[str, str]]]:
    """Group -> [(option, first comment line of its YAML)], for every group under conf/."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        rel = path.relative_to(conf_dir)
        if rel.parent == Path("."):
            continue
        description = ""
        for line in path.read_text().splitlines():
            text = line.lstrip("# ").strip()
            if line.startswith("#") and text and not text.startswith("@package"):
                description = text
                break
        groups.setdefault(str(rel.parent), []).append((path.stem, description))
    return groups


@app.command()
def configs() -> None:
    """List every config group, its options and a one-line description of each."""
    root = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    defaults = {}
    for entry in root.get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                defaults[key.replace("override ", "")] = value
    for group, options in describe_options().items():
        default = defaults.get(group) or IMPLICIT_DEFAULTS.get(group, "none")
        typer.echo(f"{group}  (default: {default})")
        width = max(len(name) for name, _ in options)
        for name, description in options:
            typer.echo(f"  {name:<{width}}  {description}")
        typer.echo("")
    typer.echo("Select with group=option, e.g. `mamlrun train domain=sinusoid order=first alpha=learned`;")
    typer.echo("see the full composed config with `mamlrun train --cfg job`.")


@app.command()
def version() -> None:
    """Print the versions of mamlrun and the libraries it runs on."""
    import hydra
    import torch

    from mamlrun import __version__

    cuda = torch.version.cuda if torch.cuda.is_available() else "no GPU"
    typer.echo(
        f"mamlrun {__version__} (torch {torch.__version__}, CUDA {cuda}, hydra {hydra.__version__}, "
        f"python {sys.version.split()[0]})"
    )


def completion_line(line: str) -> str:
    """Hydra completes `<app> <overrides>`: drop the `train` command from `mamlrun train dom...`."""
    words = line.split(" ")
    if len(words) > 1 and words[1] == "train":
        return " ".join([words[0], *words[2:]])
    return line


def main() -> None:
    """Entry point: a first argument that is not a command means `train`."""
    argv = sys.argv[1:]
    if argv and argv[0] == "-h":  # the short form users try first
        argv = ["--help", *argv[1:]]
    if "-sc" in argv and "COMP_LINE" in os.environ:  # Hydra's shell completion (`mamlrun -sc install=bash`)
        os.environ["COMP_LINE"] = completion_line(os.environ["COMP_LINE"])
    if argv and argv[0] not in COMMANDS and argv[0] != "--help":
        argv = ["train", *argv]
    sys.argv = [sys.argv[0], *argv]
    app()


if __name__ == "__main__":
    main()
