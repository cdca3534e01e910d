"""The paper's extrapolation figure: MAML and the pretrained baseline side by side, adapted on K
sinusoid points that all lie in one part of the input range (Finn et al. 2017, section 5.1).

Both panels show the same test task (the first of `eval.seed`) with the same K points drawn from
`--support-range`; the shaded inputs saw no point. Train the two runs first:

    mamlrun train experiment=sinusoid_extrapolation hydra.run.dir=outputs/extrap_maml
    mamlrun train experiment=[sinusoid_extrapolation,pretrain] hydra.run.dir=outputs/extrap_pretrain
    python scripts/figure_extrapolation.py outputs/extrap_maml outputs/extrap_pretrain

Each run's own meta-test (its eval.json and table.txt) holds mse and mse_unseen over 600 tasks;
this script prints those beside the figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from mamlrun.evaluation import EVAL_JSON
from mamlrun.plots import new_figure, save_figure
from mamlrun.run import recipe_for, upgrade_config
from mamlrun.runtime import checkpoint as ckpt
from mamlrun.trainers.supervised.meta_test import eval_tasks, predictor


def draw_run(ax, run: Path, label: str, shots: int, support_range: list[float], steps: int) -> None:
    """One panel: `run`'s checkpoint adapted on the first test task's K points from `support_range`."""
    path = ckpt.find_checkpoint(run)
    state = ckpt.load_checkpoint(path)
    cfg = OmegaConf.create(state["config"])
    upgrade_config(cfg)
    if cfg.domain.name != "sinusoid":
        raise SystemExit(f"{run}: a {cfg.domain.name} run; the extrapolation figure needs sinusoid runs")
    cfg.device, cfg.compile, cfg.eval.support_range = "cpu", False, support_range
    parts = recipe_for(cfg).build(cfg)
    parts.load_weights(state, path)
    batch = eval_tasks(parts, 1, shots, int(cfg.eval.seed), "test")[0]
    parts.tasks.draw_task(ax, batch, predictor(parts), steps, f"{label}, K={shots}")


def unseen_mse(run: Path, shots: int) -> str:
    """The run's own meta-test figures for K=`shots` after its last step, if it reported mse_unseen."""
    report = run / EVAL_JSON
    if not report.is_file():
        return "no eval.json"
    results = {r["metric"]: r for r in json.loads(report.read_text())["results"] if r["shots"] == shots}
    if "mse_unseen" not in results:
        return "no mse_unseen in eval.json (evaluate with eval.support_range=[0,5])"
    return (
        ", ".join(
            f"{name} {results[name]['mean'][-1]:.3f} ± {results[name]['ci95'][-1]:.3f}"
            for name in ("mse", "mse_unseen")
        )
        + f" after {results['mse']['steps'][-1]} steps (n={results['mse']['num_tasks']})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("maml", type=Path, help="the MAML run directory (or its checkpoint)")
    parser.add_argument("pretrain", type=Path, help="the pretrained baseline's run directory (or checkpoint)")
    parser.add_argument("--shots", type=int, default=5, help="K support points")
    parser.add_argument("--support-range", type=float, nargs=2, default=[0.0, 5.0], metavar=("LOW", "HIGH"))
    parser.add_argument("--steps", type=int, default=10, help="test-time steps of the last curve")
    parser.add_argument("--out", type=Path, default=Path("extrapolation.png"))
    args = parser.parse_args()

    fig, (left, right) = new_figure(2, 4.6, 3.8)
    for ax, run, label in ((left, args.maml, "MAML"), (right, args.pretrain, "pretrained")):
        draw_run(ax, run, label, args.shots, list(args.support_range), args.steps)
        print(f"{label}: {unseen_mse(run if run.is_dir() else run.parent.parent, args.shots)}")
    fig.suptitle(f"support points from x in {args.support_range} only", fontsize=10)
    print(f"wrote {save_figure(fig, args.out)}")


if __name__ == "__main__":
    main()
