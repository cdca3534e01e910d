"""One run on the tasks of a multi-task Slurm job (Hydra's submitit launcher, `hydra/launcher=slurm_ddp`).

Slurm starts every task itself (srun) and describes it in SLURM_* variables, not in the RANK,
WORLD_SIZE, ... that torch.distributed's env:// start reads and torchrun sets. submitit's
`TorchDistributedEnvironment` translates one into the other: rank = SLURM_PROCID, world size =
SLURM_NTASKS, local rank = SLURM_LOCALID, the master is the first host of SLURM_JOB_NODELIST and
its port is drawn from the job id (MASTER_PORT, when set, wins), so every task of the job agrees
without talking. submitit's local executor (`hydra/launcher=submitit_local` with
`tasks_per_node` > 1) describes its tasks the same way and is covered too.

CUDA_VISIBLE_DEVICES is left as Slurm set it: with GPUs requested per node every task sees all
of its node's GPUs and takes cuda:LOCAL_RANK, as under torchrun.
"""

from __future__ import annotations

import os

from mamlrun.runtime.errors import UserError

WORLD_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def export_world_from_slurm(device_name: str | None = None) -> bool:
    """In a task of a submitit job of several tasks, export RANK, WORLD_SIZE, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT for torch.distributed; True when it did.

    Does nothing (False) outside submitit, in a one-task job, and when RANK is set already (torchrun
    started this process, or the world was exported before). With `device_name` other than cpu, a
    task that cannot see GPU LOCAL_RANK (Slurm bound fewer GPUs to it than its node has tasks) is
    refused in one line on every task alike, before any of them waits for the others.
    """
    if "RANK" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return False
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    try:
        tasks = JobEnvironment().num_tasks
    except RuntimeError:  # SUBMITIT_EXECUTOR names no executor submitit knows: not its job
        return False
    if tasks <= 1:
        return False
    described = TorchDistributedEnvironment()
    if device_name not in (None, "cpu"):
        check_gpu_per_local_rank(described.local_world_size)
    # overwrite: a MASTER_ADDR inherited from the submitting shell (sbatch exports it) is not the
    # job's master; MASTER_PORT, when given, was read back above and is exported unchanged.
    described.export(set_cuda_visible_devices=False, overwrite=True)
    return True


def check_gpu_per_local_rank(local_world_size: int) -> None:
    """Every task of a node takes cuda:LOCAL_RANK, so each must see as many GPUs as its node has
    tasks (Slurm's default for GPUs requested per node); none visible (a CPU node) passes."""
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if 0 < len(visible) < local_world_size:
        raise UserError(
            f"this Slurm task sees {len(visible)} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{os.environ['CUDA_VISIBLE_DEVICES']}) but its node runs {local_world_size} tasks, "
            "each on cuda:LOCAL_RANK: request GPUs per node (hydra.launcher.gpus_per_node), "
            "not per task (gpus_per_task, --gpu-bind)"
        )
