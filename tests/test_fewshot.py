"""Few-shot classification data: real Omniglot zips, both MiniImageNet formats, and the task sampler."""

from __future__ import annotations

import os
import pickle
import random

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from mamlrun.domains.fewshot import FewShotTasks, ImageSet
from mamlrun.domains.fewshot.miniimagenet import MiniImageNetTasks
from mamlrun.domains.fewshot.omniglot import OmniglotTasks
from mamlrun.runtime.errors import ConfigError, UserError
from tests.conftest import OMNIGLOT, import_learn2learn, needs_omniglot
from tests.data_factory import class_color, write_miniimagenet_csv, write_miniimagenet_pickles

MINIMAL_ALPHABETS = dict(
    split="alphabet", test_alphabets=["Japanese_(katakana)", "Tagalog"], val_alphabets=["Early_Aramaic"]
)


@pytest.fixture(scope="module")
def minimal_omniglot(tmp_path_factory):
    return OmniglotTasks(
        str(OMNIGLOT), ways=5, cache_dir=str(tmp_path_factory.mktemp("cache")), **MINIMAL_ALPHABETS
    )


@needs_omniglot
def test_minimal_zips_give_242_characters_in_alphabet_splits(minimal_omniglot):
    tasks = minimal_omniglot
    assert len(tasks.characters) == 242  # Greek and Latin are in both zips: counted once
    assert len({c.split("/")[0] for c in tasks.characters}) == 8
    assert len(tasks.data.classes) == 242 * 4  # each character at 0, 90, 180 and 270 degrees
    assert tasks.data.images.shape == (242 * 4 * 20, 1, 28, 28)
    sizes = {split: len(ids) for split, ids in tasks.splits.items()}
    assert sizes == {"train": 156 * 4, "val": 22 * 4, "test": 64 * 4}
    by_split = {s: {tasks.data.classes[c].split("@")[0] for c in ids} for s, ids in tasks.splits.items()}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["val"])
    assert {c.split("/")[0] for c in by_split["test"]} == {"Japanese_(katakana)", "Tagalog"}
    batch = tasks.sample(3, 1, 2, torch.Generator().manual_seed(0), "cpu", split="test")
    x = batch.query[0]
    assert x.dtype == torch.float32 and x.shape == (3, 10, 1, 28, 28)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert (
        0.03 < float(x.mean()) < 0.3
    )  # strokes (1) on an empty background (0): inverted, as in the paper's code


@needs_omniglot
def test_rotated_classes_really_are_rotations(minimal_omniglot):
    data = minimal_omniglot.data
    n = len(data.classes) // 4
    first = data.images[data.labels == 0].float()
    quarter = data.images[data.labels == n].float()
    assert data.classes[n] == data.classes[0].replace("@0", "@90")
    assert torch.equal(torch.rot90(first, 1, dims=(2, 3)), quarter)


@needs_omniglot
def test_paper_split_pools_characters_and_keeps_rotations_together(tmp_path):
    tasks = OmniglotTasks(
        str(OMNIGLOT), ways=5, split="paper", train_classes=150, val_classes=20, cache_dir=str(tmp_path)
    )
    sizes = {split: len(ids) for split, ids in tasks.splits.items()}
    assert sizes == {"train": 600, "val": 80, "test": (242 - 170) * 4}
    owner = {}
    for split, ids in tasks.splits.items():
        for c in ids:
            character = tasks.data.classes[c].split("@")[0]
            assert owner.setdefault(character, split) == split


@needs_omniglot
def test_sampled_tasks_have_distinct_classes_and_disjoint_support_and_query(minimal_omniglot):
    tasks, n, k, q = minimal_omniglot, 5, 3, 4
    batch = tasks.sample(64, k, q, torch.Generator().manual_seed(1), "cpu", split="train")
    classes, index = batch.info["classes"], batch.info["images"]
    assert batch.support[0].shape == (64, n * k, 1, 28, 28) and batch.query[1].shape == (64, n * q)
    for t in range(64):
        assert len(set(classes[t].tolist())) == n
        assert set(classes[t].tolist()) <= set(range(len(tasks.splits["train"])))
        flat = index[t].flatten().tolist()
        assert len(set(flat)) == n * (k + q)  # K+Q distinct images per class, none shared
        support, query = set(index[t, :, :k].flatten().tolist()), set(index[t, :, k:].flatten().tolist())
        assert not support & query
        for way in range(n):
            labels = tasks.data.labels[index[t, way]]
            assert (labels == tasks.splits["train"][int(classes[t, way])]).all()
        assert torch.equal(batch.support[1][t], torch.arange(n).repeat_interleave(k))
        assert torch.equal(batch.query[1][t], torch.arange(n).repeat_interleave(q))
        assert torch.equal(batch.support[0][t, :k], tasks.data.images[index[t, 0, :k]].float() / 255)


def test_sampler_matches_learn2learns_task_distribution():
    """Class and image frequencies of our sampler and learn2learn's TaskDataset agree statistically."""
    l2l = import_learn2learn()
    n_classes, per_class, ways, shots, query, n_tasks = 10, 8, 4, 2, 1, 3000
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1)  # pixel value = image id
    ours = FewShotTasks(
        ImageSet(images, labels, [str(c) for c in range(n_classes)]),
        {"train": list(range(n_classes))},
        ways,
        "toy",
    )
    batch = ours.sample(n_tasks, shots, query, torch.Generator().manual_seed(0), "cpu")
    our_ids = torch.cat([batch.support[0], batch.query[0]], dim=1).mul(255).round().long().flatten()

    random.seed(0)
    dataset = l2l.data.MetaDataset(torch.utils.data.TensorDataset(images.view(-1).float(), labels))
    transforms = [
        l2l.data.transforms.NWays(dataset, ways),
        l2l.data.transforms.KShots(dataset, shots + query),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
    ]
    taskset = l2l.data.TaskDataset(dataset, transforms, num_tasks=-1)
    their_ids = torch.cat([taskset.sample()[0].long() for _ in range(n_tasks)])

    ours_img = np.bincount(our_ids.numpy(), minlength=len(labels))
    theirs_img = np.bincount(their_ids.numpy(), minlength=len(labels))
    ours_cls, theirs_cls = (
        ours_img.reshape(n_classes, per_class).sum(1),
        theirs_img.reshape(n_classes, per_class).sum(1),
    )
    assert ours_img.sum() == theirs_img.sum() == n_tasks * ways * (shots + query)
    assert chi2_contingency(np.stack([ours_cls, theirs_cls])).pvalue > 1e-3
    assert chi2_contingency(np.stack([ours_img, theirs_img])).pvalue > 1e-3
    assert chisquare(ours_img).pvalue > 1e-3  # and both are uniform over images
    # labels are shuffled per task: the class in position 0 is uniform over the classes
    first = np.bincount(batch.info["classes"][:, 0].numpy(), minlength=n_classes)
    assert chisquare(first).pvalue > 1e-3


def test_task_shape_errors_name_the_setting():
    labels = torch.arange(6).repeat_interleave(4)
    data = ImageSet(torch.zeros(24, 1, 2, 2, dtype=torch.uint8), labels, [str(c) for c in range(6)])
    tasks = FewShotTasks(data, {"train": [0, 1, 2, 3], "val": [4], "test": [5]}, 3, "toy")
    with pytest.raises(
        ConfigError, match=r"domain.ways=3 is invalid: the val split of toy has only 1 classes"
    ):
        tasks.check(1, 1, "val")
    with pytest.raises(
        ConfigError, match=r"domain.shots\+domain.query=5 is invalid: shots \+ query must be <= 4"
    ):
        tasks.sample(2, 3, 2, torch.Generator(), "cpu")


@pytest.mark.parametrize("fmt", ["pickles", "csv"])
def test_miniimagenet_loads_from_both_formats(tmp_path, fmt):
    classes = {"train": 6, "val": 3, "test": 4}
    writer = write_miniimagenet_pickles if fmt == "pickles" else write_miniimagenet_csv
    root = writer(tmp_path / "mini", classes, images_per_class=7)
    tasks = MiniImageNetTasks(str(root), ways=3, cache_dir=str(tmp_path / "cache"))
    assert {s: len(ids) for s, ids in tasks.splits.items()} == classes
    assert tasks.data.images.shape == (sum(classes.values()) * 7, 3, 84, 84)
    # every image sits in its own class: its mean colour is its class's colour
    for split, ids in tasks.splits.items():
        for c in ids:
            members = tasks.data.images[tasks.data.labels == c].float()
            assert len(members) == 7
            index = int(tasks.data.classes[c][len("n") + len(split) :])
            colour = torch.tensor(class_color(split, index), dtype=torch.float32)
            assert torch.allclose(members.mean(dim=(0, 2, 3)), colour, atol=3.0)
    batch = tasks.sample(2, 2, 5, torch.Generator().manual_seed(0), "cpu", split="val")
    assert batch.support[0].shape == (2, 6, 3, 84, 84) and batch.query[0].shape == (2, 15, 3, 84, 84)


def test_miniimagenet_pickle_that_would_run_code_is_refused(tmp_path):
    root = write_miniimagenet_pickles(
        tmp_path / "mini", {"train": 3, "val": 3, "test": 3}, images_per_class=2
    )
    marker = tmp_path / "pwned"

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with (root / "mini-imagenet-cache-test.pkl").open("wb") as f:
        pickle.dump({"image_data": RunsCode(), "class_dict": {}}, f)
    with pytest.raises(UserError, match=r"refusing to load .*mini-imagenet-cache-test.pkl.*system"):
        MiniImageNetTasks(str(root), cache_dir=str(tmp_path / "cache"))
    assert not marker.exists()


def test_miniimagenet_bad_files_are_named(tmp_path):
    root = write_miniimagenet_csv(tmp_path / "mini", {"train": 3, "val": 3, "test": 3}, images_per_class=2)
    victim = sorted((root / "images").iterdir())[0]
    victim.write_bytes(b"this is not a jpeg")
    with pytest.raises(UserError, match=f"cannot read image {victim}"):
        MiniImageNetTasks(str(root), cache_dir=str(tmp_path / "cache"))
    victim.unlink()
    with pytest.raises(UserError, match=f"image listed in a CSV is missing: {victim}"):
        MiniImageNetTasks(str(root), cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(UserError, match="holds neither format"):
        MiniImageNetTasks(str(tmp_path), cache_dir=str(tmp_path / "cache3"))


def test_omniglot_empty_or_wrong_root_says_what_was_expected(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    for root, reason in [(tmp_path / "missing", "does not exist"), (tmp_path / "flat", "holds no")]:
        with pytest.raises(UserError, match=reason) as info:
            OmniglotTasks(str(root))
        assert "images_background.zip" in str(info.value) and "MAMLRUN_DATA" in str(info.value)


def test_unreadable_omniglot_image_is_named(tmp_path):
    bad = tmp_path / "omni" / "images_background" / "Alpha" / "character01"
    bad.mkdir(parents=True)
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match=r"cannot read image .*character01/0.png"):
        OmniglotTasks(str(tmp_path / "omni"), cache_dir=str(tmp_path / "cache"))
