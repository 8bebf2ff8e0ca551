"""Cityscapes (gtFine, 19 training classes) and GTA5, whose labels use Cityscapes' labelIds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingFileError
from .base import SegmentationDataset
from .classes import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_TO_TRAIN
from .io import DataError
from .labels import CITYSCAPES_PALETTE, IGNORE_INDEX, identity_table, lookup_table

CITYSCAPES_SPLITS = ("train", "val", "test")
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"


def _valid(values) -> np.ndarray:
    valid = np.zeros(256, dtype=bool)
    valid[list(values)] = True
    valid[IGNORE_INDEX] = True
    return valid


# labelIds run 0..33; -1 (license plate) is stored as 255 in the uint8 PNGs.
LABEL_ID_TABLE = lookup_table(CITYSCAPES_LABEL_TO_TRAIN)
LABEL_ID_VALID = _valid(range(34))


def cityscapes_dataset(root: str | Path, split: str, **options) -> SegmentationDataset:
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine`` labelIds mapped to 19 trainIds.

    Pre-generated ``*_gtFine_labelTrainIds.png`` are used instead when every sample has one.
    """
    if split not in CITYSCAPES_SPLITS:
        raise ConfigError(f"unknown Cityscapes split {split!r}; choose from {list(CITYSCAPES_SPLITS)}")
    root = Path(root)
    image_dir, label_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    for directory in (image_dir, label_dir):
        if not directory.is_dir():
            raise MissingFileError(
                f"no Cityscapes layout under {root}: missing {directory} (from leftImg8bit_trainvaltest.zip and "
                "gtFine_trainvaltest.zip)"
            )
    images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
    stems = [(image, label_dir / image.parent.name / image.name.replace("_leftImg8bit.png", "")) for image in images]
    use_train_ids = bool(stems) and all(Path(f"{stem}{TRAIN_IDS_SUFFIX}").is_file() for _, stem in stems)
    suffix = TRAIN_IDS_SUFFIX if use_train_ids else LABEL_IDS_SUFFIX
    samples = [(image, Path(f"{stem}{suffix}")) for image, stem in stems]
    return SegmentationDataset(
        samples,
        class_names=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        label_table=identity_table(19) if use_train_ids else LABEL_ID_TABLE,
        valid_raw=_valid(range(19)) if use_train_ids else LABEL_ID_VALID,
        name=f"cityscapes {split}",
        **options,
    )


def gta5_dataset(root: str | Path, split: str = "all", **options) -> SegmentationDataset:
    """GTA5: ``images/NNNNN.png`` and ``labels/NNNNN.png`` (Cityscapes labelIds -> 19 trainIds).

    split "all" (or "train") uses every image, as domain-adaptation work does; any other split name reads
    the ids listed in ``<root>/<split>.txt``. Pairs whose sizes differ are reported by name, never resized.
    """
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise MissingFileError(f"no GTA5 layout under {root}: expected images/ and labels/")
    list_file = root / f"{split}.txt"
    if list_file.is_file():
        stems = [line.split()[0].rsplit(".", 1)[0] for line in list_file.read_text().splitlines() if line.strip()]
    elif split in ("all", "train"):
        stems = sorted(path.stem for path in (root / "images").glob("*.png"))
    else:
        raise DataError(f"GTA5 split {split!r}: no list file {list_file}; use split 'all'")
    samples = [(root / "images" / f"{stem}.png", root / "labels" / f"{stem}.png") for stem in stems]
    return SegmentationDataset(
        samples,
        class_names=CITYSCAPES_CLASSES,
        palette=CITYSCAPES_PALETTE,
        label_table=LABEL_ID_TABLE,
        valid_raw=LABEL_ID_VALID,
        name=f"gta5 {split}",
        **options,
    )
