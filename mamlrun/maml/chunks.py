"""Meta-batches as pytrees with a leading task dimension, cut into chunks of tasks.

Every vmapped computation over tasks (the meta-gradient, meta-RL's outer terms, validation and the
meta-test) holds at most one chunk's graph or activations at a time: `task_chunks` is the one place
that cuts a batch into chunks, in task order, so results summed or concatenated over the chunks are
the whole batch's.
"""

from __future__ import annotations

from typing import Any

from torch.utils._pytree import tree_leaves, tree_map


def num_tasks(data: Any) -> int:
    """The task dimension (leading size) of a batch pytree."""
    return int(tree_leaves(data)[0].shape[0])


def task_slice(data: Any, start: int, stop: int) -> Any:
    """Tasks start..stop-1 of a batch pytree."""
    return tree_map(lambda t: t[start:stop], data)


def task_chunks(chunk_size: int | None, *batches: Any) -> list[tuple[Any, ...]]:
    """`batches` (the same tasks: support, query, ...) cut into chunks of at most `chunk_size` tasks,
    in task order; one chunk (the batches themselves) when `chunk_size` is None or covers them.

    Example:
        >>> import torch
        >>> support, query = torch.arange(5), torch.arange(5) * 10
        >>> [tuple(t.tolist() for t in chunk) for chunk in task_chunks(2, support, query)]
        [([0, 1], [0, 10]), ([2, 3], [20, 30]), ([4], [40])]
    """
    total = num_tasks(batches[0])
    size = chunk_size or total
    if size >= total:
        return [batches]
    return [
        tuple(task_slice(b, start, min(start + size, total)) for b in batches)
        for start in range(0, total, size)
    ]
