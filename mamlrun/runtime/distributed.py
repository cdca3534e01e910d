"""One run on several processes (torchrun, or Slurm tasks through submitit): torch.distributed,
never a home-made engine.

Every rank draws the same global meta-batch from the same seed and meta-trains on its own slice
of the tasks; the meta-gradient is the all-reduced sum of each rank's share, so the result does not
depend on the number of processes. Rank 0 alone logs, validates, meta-tests and writes; a stop
signal on any rank stops all of them at the same iteration. One process (no torchrun) is a world
of size 1 where every collective is a no-op.

    torchrun --nproc_per_node=2 -m mamlrun train hydra.run.dir=RUN ...
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from mamlrun.runtime import slurm
from mamlrun.runtime.errors import ConfigError

TIMEOUT = datetime.timedelta(minutes=30)  # a rank that waits longer than this for the others fails


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, size, and its GPU index on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def task_slice(self, num_tasks: int) -> slice:
        """This rank's contiguous share of a meta-batch of `num_tasks` tasks (sizes differ by at most 1)."""
        if num_tasks < self.size:
            raise ConfigError(
                "meta_batch",
                num_tasks,
                f"needs at least one task per process: >= {self.size} (the world size)",
            )
        base, extra = divmod(num_tasks, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (1 if self.rank < extra else 0))

    def sum(self, tensors: Iterable[Tensor]) -> None:
        """All-reduce (sum) in place; one flattened collective for many tensors."""
        tensors = list(tensors)
        if not self.distributed or not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_shares(self, grads: list[Tensor], values: list[Tensor], share: float) -> list[Tensor]:
        """Each rank holds the mean over its own tasks; weighted by `share` (its tasks / all tasks)
        and summed over the ranks, that is the mean over the whole meta-batch. `grads` are scaled
        and reduced in place; the reduced `values` are returned (scalars)."""
        scalars = [torch.as_tensor(v).detach().reshape(1) * share for v in values]
        for g in grads:
            g.mul_(share)
        self.sum([*grads, *scalars])
        return [v.reshape(()) for v in scalars]

    def gather_tasks(self, rows: Tensor) -> Tensor:
        """Every rank's per-task rows ([its tasks, ...], slices from `task_slice`), concatenated in
        rank order: the whole meta-batch's rows, the same on every rank."""
        if not self.distributed:
            return rows
        rows = rows.detach().contiguous()
        counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(self.size)]
        dist.all_gather(counts, torch.tensor([rows.shape[0]], device=rows.device))
        longest = int(max(counts))
        padded = torch.zeros(longest, *rows.shape[1:], dtype=rows.dtype, device=rows.device)
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: int(n)] for part, n in zip(parts, counts, strict=True)])

    def max(self, value: int, device: torch.device) -> int:
        """The largest of the ranks' `value`s."""
        if not self.distributed:
            return value
        flag = torch.tensor([value], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def any_stop(self, signum: int | None, device: torch.device) -> int | None:
        """The stop signal if any rank got one (all ranks then stop at the same iteration)."""
        return self.max(signum or 0, device) or None

    def broadcast(self, value: object) -> object:
        """Rank 0's `value` on every rank (a path, a decision)."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


_WORLD = World()


def world() -> World:
    """This process's world (size 1 unless `start` joined a process group)."""
    return _WORLD


def launched_world() -> World:
    """The world torchrun (or Slurm through submitit's helper) describes in the environment."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def start(device_name: str) -> World:
    """Join the process group the environment describes (torchrun's variables, or a multi-task
    Slurm job's through submitit); gloo on CPU, nccl on CUDA; size 1: nothing."""
    global _WORLD
    slurm.export_world_from_slurm(device_name)  # a task of a multi-task Slurm job: RANK, ... from SLURM_*
    described = launched_world()
    if described.size > 1 and not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(described.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    _WORLD = described
    return _WORLD


def stop() -> None:
    """Leave the process group (at the end of the run, on every rank)."""
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()
