"""Tiny data sets written in exactly the on-disk formats mamlrun reads (for formats with no copy here)."""

from __future__ import annotations

import csv
import pickle
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SPLIT_FILES = {
    "train": "mini-imagenet-cache-train.pkl",
    "val": "mini-imagenet-cache-validation.pkl",
    "test": "mini-imagenet-cache-test.pkl",
}


def class_color(split: str, index: int) -> np.ndarray:
    """A distinct colour per class, so a decoded image's class can be told from its pixels."""
    rng = np.random.default_rng(zlib.crc32(f"{split}/{index}".encode()))
    return rng.integers(30, 226, size=3).astype(np.uint8)


def miniimagenet_arrays(classes: dict[str, int], images_per_class: int, size: int = 84, seed: int = 0):
    """split -> (uint8 [N, size, size, 3], {wnid: [indices]}), noisy solid colours per class."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n_classes in classes.items():
        images, class_dict = [], {}
        for c in range(n_classes):
            wnid = f"n{split}{c:04d}"
            base = class_color(split, c)
            noise = rng.integers(-12, 13, size=(images_per_class, size, size, 3))
            images.append(np.clip(base + noise, 0, 255).astype(np.uint8))
            class_dict[wnid] = list(range(c * images_per_class, (c + 1) * images_per_class))
        out[split] = (np.concatenate(images), class_dict)
    return out


def write_miniimagenet_pickles(
    root: Path, classes: dict[str, int], images_per_class: int, size: int = 84
) -> Path:
    """learn2learn's format: mini-imagenet-cache-{train,validation,test}.pkl."""
    root.mkdir(parents=True, exist_ok=True)
    for split, (images, class_dict) in miniimagenet_arrays(classes, images_per_class, size).items():
        with (root / SPLIT_FILES[split]).open("wb") as f:
            pickle.dump({"image_data": images, "class_dict": class_dict}, f)
    return root


def write_miniimagenet_csv(
    root: Path, classes: dict[str, int], images_per_class: int, size: int = 84
) -> Path:
    """Ravi & Larochelle's layout: images/*.jpg and {train,val,test}.csv with filename,label rows."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, (images, class_dict) in miniimagenet_arrays(classes, images_per_class, size).items():
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for wnid, members in class_dict.items():
                for i in members:
                    name = f"{wnid}{i:08d}.jpg"
                    Image.fromarray(images[i]).save(root / "images" / name, quality=95)
                    writer.writerow([name, wnid])
    return root
