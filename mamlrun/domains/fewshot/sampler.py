"""N-way K-shot task sampling, a whole meta-batch at once, as tensors on the training device.

For each task: N distinct classes of the split, K + Q distinct images of each class (without
replacement), the first K of each class in the support set and the other Q in the query set,
labels 0..N-1 in the (random) order the classes were drawn, so labels are shuffled per task.
This is the distribution of learn2learn's TaskDataset with NWays, KShots, LoadData, RemapLabels
(tests compare the two). There is no per-task Python loop: one argsort picks every task's classes,
another every class's images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mamlrun.domains.base import TaskBatch
from mamlrun.domains.fewshot.images import ImageSet
from mamlrun.runtime.errors import ConfigError, require_int

SPLITS = ("train", "val", "test")


class FewShotTasks:
    """The few-shot task distribution over an `ImageSet` whose classes are divided into splits.

    Args:
        data: the decoded images.
        splits: split name -> indices of the classes (into data.classes) in that split.
        ways: N, classes per task.
        name: the dataset's name, for messages.
    """

    adaptation_figure = None  # the meta-test's accuracy curve says it all
    support_restriction = None  # images have no input range to restrict (eval.support_range)

    def __init__(self, data: ImageSet, splits: Mapping[str, Sequence[int]], ways: int, name: str) -> None:
        require_int("domain.ways", ways, 2, "N (classes per task; one class leaves nothing to classify)")
        self.data, self.ways, self.name = data, ways, name
        self.splits = {split: list(ids) for split, ids in splits.items()}
        self.tables: dict[str, tuple[Tensor, Tensor]] = {
            s: self._table(ids) for s, ids in self.splits.items()
        }
        self._on_device: dict[str, tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]] = {}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.data.images.shape[1:])

    def _table(self, class_ids: Sequence[int]) -> tuple[Tensor, Tensor]:
        """[classes, max images] image indices (padded with 0) and the image count of each class."""
        members = [torch.nonzero(self.data.labels == c).flatten() for c in class_ids]
        counts = torch.tensor([len(m) for m in members], dtype=torch.long)
        table = torch.zeros(len(members), int(counts.max()) if members else 0, dtype=torch.long)
        for row, m in enumerate(members):
            table[row, : len(m)] = m
        return table, counts

    def describe(self) -> str:
        sizes = ", ".join(f"{s} {len(ids)}" for s, ids in self.splits.items())
        return f"{self.name}: {len(self.data.labels)} images of shape {self.image_shape}, classes per split: {sizes}"

    def check(
        self, shots: int, query: int, split: str, keys: tuple[str, str] = ("domain.shots", "domain.query")
    ) -> None:
        """Raise a ConfigError if N-way (shots + query) tasks cannot be drawn from `split`."""
        if split not in self.tables:
            raise ConfigError("split", split, f"{self.name} has the splits {', '.join(self.tables)}")
        counts = self.tables[split][1]
        if len(counts) < self.ways:
            raise ConfigError(
                "domain.ways", self.ways, f"the {split} split of {self.name} has only {len(counts)} classes"
            )
        fewest = int(counts.min())
        if shots + query > fewest:
            raise ConfigError(
                f"{keys[0]}+{keys[1]}",
                shots + query,
                f"shots + query must be <= {fewest}, the fewest images of a class in the {split} split of {self.name}",
            )

    def _device_state(self, device: torch.device) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]]]:
        key = str(device)
        if key not in self._on_device:
            tables = {s: (t.to(device), c.to(device)) for s, (t, c) in self.tables.items()}
            self._on_device[key] = (self.data.images.to(device), tables)
        return self._on_device[key]

    def sample(
        self,
        num_tasks: int,
        shots: int,
        query: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        split: str = "train",
    ) -> TaskBatch:
        """`num_tasks` N-way tasks: support [T, N*K, C, H, W] / [T, N*K], query [T, N*Q, ...]."""
        self.check(shots, query, split)
        device = torch.device(device)
        images, tables = self._device_state(device)
        table, counts = tables[split]
        n, per_class = self.ways, shots + query
        classes = torch.rand(num_tasks, len(counts), generator=generator, device=device).argsort(dim=1)[:, :n]
        scores = torch.rand(num_tasks, n, table.shape[1], generator=generator, device=device)
        if bool((counts != table.shape[1]).any()):  # classes with fewer images: padding sorts last
            padding = torch.arange(table.shape[1], device=device) >= counts[classes][..., None]
            scores = scores.masked_fill(padding, 2.0)
        picks = scores.argsort(dim=-1)[..., :per_class]  # [T, N, K+Q] distinct positions per class
        index = table[classes[..., None], picks]  # [T, N, K+Q] image indices
        x = images[index].float().div_(255.0)  # [T, N, K+Q, C, H, W]
        y = torch.arange(n, device=device).view(1, n, 1).expand(num_tasks, n, per_class)

        def part(a: int, b: int) -> tuple[Tensor, Tensor]:
            xs = x[:, :, a:b].reshape(num_tasks, n * (b - a), *x.shape[3:])
            return xs, y[:, :, a:b].reshape(num_tasks, n * (b - a))

        return TaskBatch(
            support=part(0, shots),
            query=part(shots, per_class),
            info={"classes": classes, "images": index},
        )
