"""Decoded image sets and their on-disk cache.

Decoding tens of thousands of PNG/JPEG files takes minutes; the decoded uint8 tensor is cached once
per dataset (keyed by the source files' names, sizes and times and the image size), so a second
run starts in seconds. Cache files hold only tensors and strings and load with weights_only=True.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class ImageSet:
    """Images as one uint8 tensor [N, C, H, W], a class index per image, and the class names."""

    images: Tensor
    labels: Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.ndim == 4
        assert self.labels.shape == (self.images.shape[0],)


def default_cache_dir() -> Path:
    return Path(os.environ.get("MAMLRUN_CACHE", "~/.cache/mamlrun")).expanduser()


def fingerprint(files: Iterable[Path], *extra: object) -> str:
    """A short hash of the files' paths, sizes and modification times, plus any settings."""
    h = hashlib.sha1()
    for path in sorted(Path(f) for f in files):
        st = path.stat()
        h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    h.update(repr((CACHE_VERSION, *extra)).encode())
    return h.hexdigest()[:16]


def cached(cache_dir: Path | str | None, name: str, key: str, build: Callable[[], ImageSet]) -> ImageSet:
    """Load `<cache_dir>/<name>-<key>.pt`, or build the set and write it there (atomically)."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    path = folder / f"{name}-{key}.pt"
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True)
            return ImageSet(state["images"], state["labels"], list(state["classes"]))
        except Exception as exc:  # a stale or broken cache is rebuilt, never fatal
            log.warning("ignoring unreadable cache %s (%s); decoding again", path, exc)
    images = build()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            torch.save({"images": images.images, "labels": images.labels, "classes": images.classes}, f)
        os.replace(tmp, path)
        log.info("cached %d decoded %s images in %s", len(images.labels), name, path)
    except OSError as exc:  # a read-only cache dir only costs the next run the decoding time
        log.warning("could not write the image cache %s (%s)", path, exc)
    return images


def decode_image(data: bytes | Path, size: int, mode: str, where: str) -> np.ndarray:
    """Decode one image to a uint8 array [C, size, size] (Lanczos resize), naming the file on failure."""
    from mamlrun.runtime.errors import UserError

    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as img:
            img = img.convert(mode)
            if img.size != (size, size):
                img = img.resize((size, size), resample=Image.LANCZOS)
            array = np.asarray(img, dtype=np.uint8)
    except Exception as exc:
        raise UserError(f"cannot read image {where}: {type(exc).__name__}: {exc}") from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
