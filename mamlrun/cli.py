"""The `mamlrun` command (Typer). No training logic lives here.

mamlrun train [HYDRA ARGS...]     every argument goes to Hydra unchanged (overrides, -m, --cfg job,
                                  --info, hydra/launcher=..., --help shows the config groups)
mamlrun <overrides> | -m <sweep>  the same as `mamlrun train ...`
mamlrun eval TARGET [OVERRIDES]   re-run the meta-test on a checkpoint or run directory
mamlrun resume RUN_DIR [OVERRIDES] continue a run in its own directory (same overrides)
mamlrun report PATH... [--by K]  a sweep's runs as a paper table (mean ± CI over seeds), report.md/.csv/.png
mamlrun configs                   every config group, its options and what each is
mamlrun version
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
import yaml

from mamlrun.runtime.signals import exit_interrupted

if TYPE_CHECKING:
    from mamlrun.runtime.parallel_sweep import SweepRelay

# click's usage errors, raised when standalone_mode is off so that mamlrun reports them in one line
# (typer >= 0.22 vendors click as typer._click; older typer uses click itself).
try:
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer
    from click.exceptions import NoArgsIsHelpError, UsageError

# conf/ sits at the top of the repository; mamlrun/conf links to it so that wheels carry it too.
CONF_DIR = Path(__file__).resolve().parent / "conf"
COMMANDS = ("train", "eval", "resume", "report", "configs", "version")
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


def fail(message: object) -> NoReturn:
    """The one-line error every refused command ends with (exit code 2)."""
    typer.echo(f"mamlrun: error: {message}", err=True)
    raise SystemExit(2)


def run_hydra(args: list[str]) -> None:
    """Run `mamlrun.run.train` as a Hydra app with `args` as its command line (options and
    overrides in any order). Bad overrides, user YAML and Hydra's own errors end in one line."""
    import hydra

    from mamlrun import hydra_cli
    from mamlrun.runtime import parallel_sweep
    from mamlrun.task import train as train_task

    if not (CONF_DIR / "config.yaml").is_file():
        fail(f"config directory not found: {CONF_DIR}")
    options, overrides = hydra_cli.split_arguments(args)
    try:
        hydra_cli.parse_strictly([*options, *overrides])
        config_dir = hydra_cli.option_value(options, "--config-dir", "-cd")
        user_dirs = [Path(config_dir)] if config_dir and Path(config_dir).is_dir() else []
        user_dirs += hydra_cli.search_path_folders(overrides)
        hydra_cli.check_user_yaml(user_dirs)
        hydra_cli.check_overrides(overrides, [CONF_DIR, *user_dirs])
    except hydra_cli.HydraArgumentError as exc:
        fail(exc)
    overrides = [*overrides, *torchrun_rank_overrides(options, overrides)]
    sys.argv = ["mamlrun", *options, *overrides]
    user_wants_tracebacks = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them; we report
    stderr = sys.stderr = parallel_sweep.HeldJobLine(sys.stderr)
    ended: BaseException | None = None
    try:
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(train_task)()
    except parallel_sweep.JobEnded as exc:  # a job of a parallel sweep reported its end (or a stop)
        ended = exc
    except Exception as exc:
        line = None if user_wants_tracebacks else hydra_cli.hydra_error_line(exc, overrides)
        if line is None:
            raise
        fail(line)
    finally:
        sys.stderr = stderr.stream
        stderr.release(drop=not user_wants_tracebacks and ended is not None)
        relay = parallel_sweep.end_relay()
        from mamlrun.report.sweep_callback import write_pending

        write_pending()  # a sweep a job's error ended (Hydra then skips on_multirun_end)
        if not user_wants_tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    if relay is not None and relay.requested is not None:
        report_stopped_sweep(relay)
    if isinstance(ended, parallel_sweep.JobEnded):
        raise SystemExit(ended.exit_code)  # the job printed its one line


def report_stopped_sweep(relay: SweepRelay) -> NoReturn:
    """After a signal ended a parallel sweep: each unfinished job's state, then the one line."""
    from mamlrun.runtime import parallel_sweep

    lines, finished = parallel_sweep.job_states(relay.sweep_dir)
    for line in lines:
        typer.echo(f"mamlrun: {line}", err=True)
    signum = relay.requested
    assert signum is not None
    exit_interrupted(
        signum,
        f"sweep {relay.sweep_dir} interrupted by {signal.Signals(signum).name}: {finished} job(s) finished"
        + (f", {len(lines)} did not (listed above)" if lines else ""),
    )


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
        fail(f"{run_dir} is not a mamlrun run directory (no {overrides_file})")
    from mamlrun import hydra_cli
    from mamlrun.runtime.errors import UserError
    from mamlrun.runtime.run_record import read_record

    advice = (
        f"restore it (the run's overrides, one key=value per item), or continue with "
        f"`mamlrun train <the run's overrides> hydra.run.dir={hydra_cli.quoted(str(run_dir))}`"
    )
    try:
        recorded = read_record(overrides_file, advice) or []
    except UserError as exc:
        fail(exc)
    if not isinstance(recorded, list) or not all(isinstance(o, str) for o in recorded):
        fail(f"{overrides_file} holds no list of overrides: {advice}")
    saved = [o for o in recorded if not is_sweep_setting(o)]
    given = list(ctx.args)
    run_dir_override = f"hydra.run.dir={hydra_cli.quoted(str(run_dir.resolve()))}"
    run_hydra([*replaced_by(saved, given), *given, run_dir_override, "hydra.mode=RUN"])


def torchrun_rank_overrides(options: list[str], overrides: list[str]) -> list[str]:
    """Under torchrun (WORLD_SIZE > 1), one run on several processes: a sweep cannot be one, and
    ranks other than 0 get a scratch Hydra directory and no log file (rank 0 writes the run). The
    scratch directory is named after the command, so a rank killed before it could remove it
    leaves one directory per command, reused when the command resumes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    if "-m" in options or "--multirun" in options:
        fail("torchrun runs one job on several processes: drop -m (sweep with Hydra's launchers instead)")
    if int(os.environ.get("RANK", "0")) == 0:
        return []
    import atexit
    import hashlib
    import shutil
    import tempfile

    digest = hashlib.sha1("\0".join([os.getcwd(), *overrides]).encode()).hexdigest()[:12]
    scratch = Path(tempfile.gettempdir()) / f"mamlrun-rank{os.environ['RANK']}-{digest}"
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", "hydra/job_logging=disabled"]


def replaced_by(saved: list[str], given: list[str]) -> list[str]:
    """The run's saved overrides without those whose key the resume command sets again."""

    def key(override: str) -> str:
        return override.lstrip("+~").split("=", 1)[0]

    new_keys = {key(o) for o in given if not o.startswith("-")} | {"hydra.run.dir", "hydra.mode"}
    return [o for o in saved if key(o) not in new_keys]


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
def report(
    paths: Annotated[
        list[str], typer.Argument(help="multirun directories, run directories or shell patterns (quoted)")
    ],
    by: Annotated[
        list[str] | None,
        typer.Option("--by", help="group by these settings only (repeatable), e.g. --by order"),
    ] = None,
    over: Annotated[
        list[str] | None,
        typer.Option("--over", help="aggregate over these settings (repeatable; default: seed)"),
    ] = None,
    eval_choice: Annotated[
        str,
        typer.Option(
            "--eval",
            help="which meta-test: train (the run's own), latest (newest `mamlrun eval`), or an eval/<stamp> name",
        ),
    ] = "train",
    out: Annotated[
        Path | None,
        typer.Option("--out", help="where report.md/.csv/.png go (default: the one sweep given, else .)"),
    ] = None,
    latex: Annotated[bool, typer.Option("--latex", help="also write report.tex (booktabs)")] = False,
) -> None:
    """Aggregate finished runs into a paper table: mean ± 95 % CI across seeds per group, K and step."""
    from mamlrun.report import build_report
    from mamlrun.report.runs import is_sweep_dir
    from mamlrun.runtime.errors import UserError

    try:
        result = build_report(paths, by=by or None, over=tuple(over or ("seed",)), eval_choice=eval_choice)
        if out is None:
            single = Path(paths[0])
            out = single if len(paths) == 1 and single.is_dir() and is_sweep_dir(single) else Path(".")
        files = result.write(out, latex=latex)
    except UserError as exc:
        fail(exc)
    typer.echo(result.markdown())
    typer.echo(f"wrote {', '.join(str(p) for p in files)}")


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
        if not argv[0].startswith("-") and "=" not in argv[0]:
            fail(
                f"unknown command {argv[0]!r}: choose {', '.join(COMMANDS)}, or give key=value overrides "
                "(`mamlrun key=value` means `mamlrun train key=value`)"
            )
        argv = ["train", *argv]
    try:
        # without standalone mode, Typer turns a Ctrl-C into a return value (130) instead of an exit
        code = app(args=argv, prog_name="mamlrun", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # a bare `mamlrun`: the help, as --help shows it
        typer.echo(exc.format_message())
    except UsageError as exc:  # one line, not click's usage box
        command = exc.ctx.command_path if exc.ctx is not None else "mamlrun"
        fail(f"{exc.format_message()} (`{command} --help` shows the usage)")
    except typer.Abort:
        exit_interrupted(signal.SIGINT)
    if code == 128 + signal.SIGINT:
        exit_interrupted(signal.SIGINT)
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
