"""PASCAL VOC 2012 (+ SBD for ``trainaug``), read from the layout the archives unpack to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingFileError
from .base import SegmentationDataset
from .classes import VOC_CLASSES
from .io import DataError
from .labels import IGNORE_INDEX, identity_table, voc_palette

VOC_SPLITS = ("train", "val", "trainval", "trainaug")


def find_voc_root(root: str | Path) -> Path:
    """Accept ``VOCdevkit/VOC2012`` itself or any parent of it; the VOC root holds ``JPEGImages``."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    raise MissingFileError(
        f"no PASCAL VOC layout under {root}: expected VOCdevkit/VOC2012/JPEGImages and "
        "VOCdevkit/VOC2012/ImageSets/Segmentation/{train,val}.txt (from VOCtrainval_11-May-2012.tar)"
    )


def read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise MissingFileError(f"split file not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def find_sbd_root(voc_root: Path) -> Path | None:
    """SBD's ``benchmark_RELEASE/dataset`` beside ``VOCdevkit`` (or beside/inside the VOC root)."""
    for base in (voc_root.parent.parent, voc_root.parent, voc_root):
        candidate = base / "benchmark_RELEASE" / "dataset"
        if (candidate / "cls").is_dir():
            return candidate
    return None


def voc_samples(voc_root: Path, split: str) -> list[tuple[Path, Path]]:
    if split not in VOC_SPLITS:
        raise ConfigError(f"unknown VOC split {split!r}; choose from {list(VOC_SPLITS)}")
    if split == "trainaug":
        return trainaug_samples(voc_root)
    ids = read_split(voc_root / "ImageSets" / "Segmentation" / f"{split}.txt")
    return [(voc_root / "JPEGImages" / f"{i}.jpg", voc_root / "SegmentationClass" / f"{i}.png") for i in ids]


def trainaug_samples(voc_root: Path) -> list[tuple[Path, Path]]:
    """(VOC train ∪ SBD train ∪ SBD val) − VOC val: 10,582 images on the real data.

    VOC's own annotation is used where it exists (it marks boundaries as void); SBD's .mat elsewhere.
    """
    sbd = find_sbd_root(voc_root)
    if sbd is None:
        raise MissingFileError(
            f"split 'trainaug' needs SBD: put benchmark_RELEASE/dataset (cls/, img/, train.txt, val.txt from "
            f"benchmark.tgz) beside {voc_root.parent}"
        )
    split_dir = voc_root / "ImageSets" / "Segmentation"
    voc_train, voc_val = read_split(split_dir / "train.txt"), set(read_split(split_dir / "val.txt"))
    sbd_ids = read_split(sbd / "train.txt") + read_split(sbd / "val.txt")
    voc_train_set = set(voc_train)
    samples = []
    for image_id in sorted(set(voc_train) | set(sbd_ids)):
        if image_id in voc_val:
            continue
        image = voc_root / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            image = sbd / "img" / f"{image_id}.jpg"
        voc_mask = voc_root / "SegmentationClass" / f"{image_id}.png"
        mask = voc_mask if image_id in voc_train_set else sbd / "cls" / f"{image_id}.mat"
        samples.append((image, mask))
    return samples


def voc_dataset(
    root: str | Path,
    split: str,
    *,
    class_names: Sequence[str] = VOC_CLASSES,
    name: str = "voc",
    **options,
) -> SegmentationDataset:
    """PASCAL VOC 2012: palette PNG masks read by index; 255 = void/boundary."""
    voc_root = find_voc_root(root)
    num_classes = len(class_names)
    valid = np.zeros(256, dtype=bool)
    valid[:num_classes] = True
    valid[IGNORE_INDEX] = True
    samples = voc_samples(voc_root, split)
    missing = [str(path) for pair in samples[:1] for path in pair if not path.is_file()]
    if missing:
        raise DataError(f"{name} {split}: listed file missing: {missing[0]}")
    return SegmentationDataset(
        samples,
        class_names=class_names,
        palette=voc_palette(),
        label_table=identity_table(num_classes),
        valid_raw=valid,
        name=f"{name} {split}",
        **options,
    )
