"""MiniImageNet (Vinyals et al. 2016) with Ravi & Larochelle's split: 64 / 16 / 20 classes x 600 images.

Two on-disk formats are read, whichever `root` holds:
- learn2learn's pickles `mini-imagenet-cache-{train,validation,test}.pkl`, each a dict with
  `image_data` (uint8 [N, 84, 84, 3]) and `class_dict` (class -> image indices). They are read with
  an unpickler that admits only NumPy arrays, so a tampered file cannot run code.
- Ravi & Larochelle's folder + CSV layout: `images/*.jpg` with `train.csv`, `val.csv`, `test.csv`
  (`filename,label` rows). Decoded images (resized to `image_size` when they are not already) are
  cached once (see `images.py`).
`download=true` fetches the pickles with learn2learn's downloader (needs internet).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mamlrun.domains.fewshot.images import ImageSet, cached, decode_image, fingerprint
from mamlrun.domains.fewshot.sampler import FewShotTasks
from mamlrun.runtime.errors import ConfigError, UserError

log = logging.getLogger(__name__)

PICKLES = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-validation.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}
CSVS = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
HOW_TO_GET = (
    "expected mini-imagenet-cache-{train,validation,test}.pkl (learn2learn's format; or set "
    "domain.tasks.download=true) or images/ with train.csv, val.csv and test.csv (Ravi & Larochelle's layout)"
)
NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.dtypes", "UInt8DType"),
    ("numpy.dtypes", "Int64DType"),
    ("_codecs", "encode"),
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and NumPy arrays; any other global is refused."""

    def __init__(self, file: Any, where: Path) -> None:
        super().__init__(file)
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise UserError(
            f"refusing to load {self.where}: it asks to unpickle {module}.{name}, which could run code "
            "(a MiniImageNet cache holds only NumPy arrays and a class dict)"
        )


def load_pickle(path: Path) -> tuple[np.ndarray, dict[str, list[int]]]:
    try:
        with path.open("rb") as f:
            payload = NumpyOnlyUnpickler(f, path).load()
        images, class_dict = payload["image_data"], payload["class_dict"]
    except UserError:
        raise
    except Exception as exc:
        raise UserError(
            f"{path} is not a MiniImageNet cache pickle ({type(exc).__name__}: {exc}); {HOW_TO_GET}"
        ) from None
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(
            f"{path}: image_data should be a uint8 array [N, H, W, 3], found {getattr(images, 'shape', images)}"
        )
    return images, {str(k): list(v) for k, v in class_dict.items()}


def from_pickles(root: Path, size: int) -> tuple[ImageSet, dict[str, list[int]]]:
    images, labels, classes, splits = [], [], [], {}
    offset = 0
    for split, name in PICKLES.items():
        data, class_dict = load_pickle(root / name)
        if data.shape[1:3] != (size, size):
            raise UserError(
                f"{root / name} holds {data.shape[1]}x{data.shape[2]} images; domain.image_size is {size}"
            )
        label = np.full(len(data), -1, dtype=np.int64)
        for i, (wnid, members) in enumerate(sorted(class_dict.items())):
            label[members] = offset + i
            classes.append(wnid)
        splits[split] = list(range(offset, offset + len(class_dict)))
        offset += len(class_dict)
        keep = label >= 0
        images.append(torch.from_numpy(np.ascontiguousarray(data[keep].transpose(0, 3, 1, 2))))
        labels.append(torch.from_numpy(label[keep]))
    return ImageSet(torch.cat(images), torch.cat(labels), classes), splits


def read_csv(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if rows and rows[0][:2] == ["filename", "label"]:
        rows = rows[1:]
    bad = [r for r in rows if len(r) < 2]
    if bad:
        raise UserError(f"{path}: expected 'filename,label' rows, found {bad[0]}")
    return [(r[0], r[1]) for r in rows]


def from_csv(root: Path, size: int) -> tuple[ImageSet, dict[str, list[int]]]:
    rows = {split: read_csv(root / name) for split, name in CSVS.items()}
    classes: list[str] = []
    splits: dict[str, list[int]] = {}
    for split, entries in rows.items():
        names = sorted({label for _, label in entries})
        splits[split] = list(range(len(classes), len(classes) + len(names)))
        classes += names
    index = {c: i for i, c in enumerate(classes)}
    files = [(root / "images" / fn, index[label]) for entries in rows.values() for fn, label in entries]

    def decode() -> ImageSet:
        array = np.empty((len(files), 3, size, size), dtype=np.uint8)
        for i, (path, _) in enumerate(files):
            if not path.is_file():
                raise UserError(f"image listed in a CSV is missing: {path}")
            array[i] = decode_image(path, size, "RGB", str(path))
        labels = torch.tensor([label for _, label in files], dtype=torch.long)
        return ImageSet(torch.from_numpy(array), labels, classes)

    return decode(), splits


def download_miniimagenet(root: Path) -> None:
    """Fetch learn2learn's three cache pickles into `root` (needs internet and learn2learn, imported
    quietly here: it imports the unmaintained `gym`, which prints a banner)."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            import learn2learn as l2l
    except ImportError as exc:
        raise UserError(
            f"domain.tasks.download=true needs learn2learn ({exc}); run scripts/install_learn2learn.sh"
        ) from None
    for mode in ("train", "validation", "test"):
        l2l.vision.datasets.MiniImagenet(str(root), mode=mode, download=True)


class MiniImageNetTasks(FewShotTasks):
    """N-way MiniImageNet tasks over the Ravi & Larochelle split, from either on-disk format."""

    def __init__(
        self,
        root: str,
        ways: int = 5,
        image_size: int = 84,
        download: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        path = Path(root).expanduser()
        has_pickles = all((path / name).is_file() for name in PICKLES.values())
        has_csv = (path / "images").is_dir() and all((path / name).is_file() for name in CSVS.values())
        if not (has_pickles or has_csv) and download:
            log.info("downloading MiniImageNet into %s", path)
            download_miniimagenet(path)
            has_pickles = all((path / name).is_file() for name in PICKLES.values())
        if has_pickles:
            data, splits = from_pickles(path, int(image_size))
        elif has_csv:
            sources = [path / name for name in CSVS.values()]
            key = fingerprint(sources, "miniimagenet", image_size)
            holder: dict[str, dict[str, list[int]]] = {}

            def build() -> ImageSet:
                data, holder["splits"] = from_csv(path, int(image_size))
                return data

            data = cached(cache_dir, "miniimagenet", key, build)
            splits = holder.get("splits") or self._splits_from_csv(path, data)
        else:
            where = "does not exist" if not path.exists() else "holds neither format"
            raise UserError(f"domain.tasks.root={root}: {where}; {HOW_TO_GET}")
        if len(splits["train"]) == 0:
            raise ConfigError("domain.tasks.root", root, "the train split holds no classes")
        super().__init__(data, splits, ways, f"MiniImageNet ({path})")
        log.info("%s", self.describe())

    @staticmethod
    def _splits_from_csv(path: Path, data: ImageSet) -> dict[str, list[int]]:
        """Split membership of the cached classes, from the CSVs (cheap: no image decoding)."""
        index = {c: i for i, c in enumerate(data.classes)}
        return {
            split: sorted({index[label] for _, label in read_csv(path / name)})
            for split, name in CSVS.items()
        }
