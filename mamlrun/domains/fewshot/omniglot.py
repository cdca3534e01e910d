"""Omniglot (Lake et al. 2015): 1623 handwritten characters of 50 alphabets, 20 drawings each.

Reads the standard layout `<set>/<Alphabet>/<character>/<drawing>.png` from zips as they are
published (images_background.zip, images_evaluation.zip, the "small" sets) or from extracted
folders, anywhere under `root`. The same drawing found twice (Greek and Latin are in both small
sets) counts once.

Splits:
- `paper`: all characters pooled and shuffled with `split_seed`; the first `train_classes`
  characters meta-train, the next `val_classes` validate, the rest meta-test (the paper's code and
  learn2learn: 1100 / 100 / 423 of the 1623).
- `alphabet`: whole alphabets held out: `test_alphabets` meta-test, `val_alphabets` validate, the
  rest meta-train (for the minimal sets, whose 242 characters are too few for the paper split).

Each character is augmented by rotations (default 0/90/180/270 degrees) into new classes that stay
in its split. Images are resized to `image_size` (Lanczos) and inverted: strokes 1, background 0.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mamlrun.domains.fewshot.images import ImageSet, cached, decode_image, fingerprint
from mamlrun.domains.fewshot.sampler import FewShotTasks
from mamlrun.runtime.errors import ConfigError, UserError

log = logging.getLogger(__name__)

HOW_TO_GET = (
    "get images_background.zip and images_evaluation.zip from https://github.com/brendenlake/omniglot "
    "(python/), or set domain.tasks.download=true, or point MAMLRUN_DATA at a folder holding omniglot/"
)


def find_drawings(root: Path) -> tuple[dict[tuple[str, str, str], tuple[Path, str | None]], list[Path]]:
    """(alphabet, character, file) -> (zip or png path, member name in the zip), and the sources."""
    drawings: dict[tuple[str, str, str], tuple[Path, str | None]] = {}
    sources: list[Path] = []
    for archive in sorted(root.rglob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as z:
                members = [m for m in z.namelist() if m.lower().endswith(".png") and m.count("/") >= 2]
        except zipfile.BadZipFile:
            raise UserError(f"{archive} is not a readable zip file ({HOW_TO_GET})") from None
        if members:
            sources.append(archive)
        for m in members:
            drawings.setdefault(tuple(m.split("/")[-3:]), (archive, m))
    for png in sorted(root.rglob("*.png")):
        parts = png.relative_to(root).parts
        if len(parts) >= 3:
            drawings.setdefault(tuple(parts[-3:]), (png, None))
            sources.append(png)
    return drawings, sources


def decode_all(drawings: dict[tuple[str, str, str], tuple[Path, str | None]], size: int) -> ImageSet:
    """Decode every drawing (inverted: strokes 1) into one uint8 tensor, grouped by character."""
    keys = sorted(drawings)
    classes = sorted({(a, c) for a, c, _ in keys})
    class_index = {ac: i for i, ac in enumerate(classes)}
    images = np.empty((len(keys), 1, size, size), dtype=np.uint8)
    open_zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for i, key in enumerate(keys):
            path, member = drawings[key]
            if member is None:
                images[i] = decode_image(path, size, "L", str(path))
            else:
                if path not in open_zips:
                    open_zips[path] = zipfile.ZipFile(path)
                z = open_zips[path]
                images[i] = decode_image(z.read(member), size, "L", f"{path}:{member}")
    finally:
        for z in open_zips.values():
            z.close()
    labels = torch.tensor([class_index[(a, c)] for a, c, _ in keys], dtype=torch.long)
    return ImageSet(torch.from_numpy(255 - images), labels, [f"{a}/{c}" for a, c in classes])


def rotate(data: ImageSet, rotations: Sequence[int]) -> tuple[ImageSet, list[int]]:
    """Every class once per rotation (degrees, multiples of 90); returns the set and each new class's source."""
    images, labels, classes, source = [], [], [], []
    n = len(data.classes)
    for r, degrees in enumerate(rotations):
        images.append(torch.rot90(data.images, k=int(degrees) // 90, dims=(2, 3)))
        labels.append(data.labels + r * n)
        classes += [f"{c}@{degrees}" for c in data.classes]
        source += list(range(n))
    return ImageSet(torch.cat(images), torch.cat(labels), classes), source


def download_omniglot(root: Path) -> None:
    """Fetch both official Omniglot sets into `root` (needs internet; torchvision's downloader)."""
    from torchvision.datasets import Omniglot

    for background in (True, False):
        Omniglot(str(root), background=background, download=True)


class OmniglotTasks(FewShotTasks):
    """N-way Omniglot tasks; see the module docstring for the splits and the augmentation."""

    def __init__(
        self,
        root: str,
        ways: int = 5,
        split: str = "paper",
        train_classes: int = 1100,
        val_classes: int = 100,
        test_alphabets: Sequence[str] = (),
        val_alphabets: Sequence[str] = (),
        rotations: Sequence[int] = (0, 90, 180, 270),
        image_size: int = 28,
        split_seed: int = 1,
        download: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        for i, degrees in enumerate(rotations):
            if int(degrees) % 90 != 0:
                raise ConfigError(
                    f"domain.tasks.rotations[{i}]", degrees, "rotations must be multiples of 90"
                )
        if split not in ("paper", "alphabet"):
            raise ConfigError("domain.tasks.split", split, "choose paper or alphabet")
        path = Path(root).expanduser()
        drawings, sources = find_drawings(path) if path.is_dir() else ({}, [])
        if not drawings and download:
            log.info("downloading Omniglot into %s", path)
            download_omniglot(path)
            drawings, sources = find_drawings(path)
        if not drawings:
            where = (
                "does not exist" if not path.exists() else "holds no <Alphabet>/<character>/*.png drawings"
            )
            raise UserError(f"domain.tasks.root={root}: {where}; {HOW_TO_GET}")
        key = fingerprint(sources, "omniglot", image_size)
        data = cached(cache_dir, "omniglot", key, lambda: decode_all(drawings, int(image_size)))
        characters = data.classes
        split_of = self._assign(
            characters, split, train_classes, val_classes, test_alphabets, val_alphabets, split_seed
        )
        rotated, source = rotate(data, rotations or [0])
        splits = {
            s: [c for c, src in enumerate(source) if split_of[src] == s] for s in ("train", "val", "test")
        }
        super().__init__(rotated, splits, ways, f"Omniglot ({path})")
        self.characters = characters
        log.info("%s", self.describe())

    @staticmethod
    def _assign(
        characters: list[str],
        split: str,
        train_classes: int,
        val_classes: int,
        test_alphabets: Sequence[str],
        val_alphabets: Sequence[str],
        seed: int,
    ) -> list[str]:
        """The split of every character."""
        n = len(characters)
        if split == "paper":
            if train_classes < 1 or val_classes < 0 or train_classes + val_classes >= n:
                raise ConfigError(
                    "domain.tasks.train_classes+val_classes",
                    train_classes + val_classes,
                    f"the paper split needs train_classes >= 1, val_classes >= 0 and fewer than the {n} "
                    f"characters found in total, leaving some for meta-test (or use domain.tasks.split=alphabet)",
                )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
            split_of = ["test"] * n
            for rank, c in enumerate(order):
                if rank < train_classes:
                    split_of[c] = "train"
                elif rank < train_classes + val_classes:
                    split_of[c] = "val"
            return split_of
        alphabets = sorted({c.split("/")[0] for c in characters})
        for key, chosen in (("test_alphabets", test_alphabets), ("val_alphabets", val_alphabets)):
            unknown = [a for a in chosen if a not in alphabets]
            if unknown or (key == "test_alphabets" and not chosen):
                raise ConfigError(f"domain.tasks.{key}", list(chosen), f"choose from {', '.join(alphabets)}")
        split_of = []
        for c in characters:
            alphabet = c.split("/")[0]
            split_of.append(
                "test" if alphabet in test_alphabets else "val" if alphabet in val_alphabets else "train"
            )
        if "train" not in split_of:
            raise ConfigError(
                "domain.tasks.test_alphabets", list(test_alphabets), "leave some alphabets to meta-train on"
            )
        return split_of
