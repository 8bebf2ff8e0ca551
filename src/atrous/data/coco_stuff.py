"""COCO-Stuff 164k (stuffthingmaps): 182 ids, 11 never used, renumbered to 171 classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .base import SegmentationDataset, jpg_png_pairs
from .classes import COCO_STUFF_CLASSES, COCO_STUFF_ID_TO_TRAIN, COCO_STUFF_IDS
from .labels import IGNORE_INDEX, lookup_table, voc_palette

COCO_STUFF_SPLITS = {"train": "train2017", "train2017": "train2017", "val": "val2017", "val2017": "val2017"}
# Unused ids map to 255 like unlabelled pixels: they name no class of the 171.
COCO_STUFF_TABLE = lookup_table(COCO_STUFF_ID_TO_TRAIN)
COCO_STUFF_VALID = np.zeros(256, dtype=bool)
COCO_STUFF_VALID[: len(COCO_STUFF_IDS)] = True
COCO_STUFF_VALID[IGNORE_INDEX] = True


def coco_stuff_dataset(root: str | Path, split: str, **options) -> SegmentationDataset:
    """``images/{train2017,val2017}/*.jpg`` with ``annotations/{...}/*.png`` from stuffthingmaps_trainval2017."""
    if split not in COCO_STUFF_SPLITS:
        raise ConfigError(f"unknown COCO-Stuff split {split!r}; choose from {sorted(COCO_STUFF_SPLITS)}")
    root = Path(root)
    folder = COCO_STUFF_SPLITS[split]
    samples = jpg_png_pairs(
        root / "images" / folder,
        root / "annotations" / folder,
        missing=f"no COCO-Stuff layout under {root}: expected images/{folder} (COCO {folder}.zip) and "
        f"annotations/{folder} (stuffthingmaps_trainval2017.zip)",
    )
    return SegmentationDataset(
        samples,
        class_names=COCO_STUFF_CLASSES,
        palette=voc_palette(),
        label_table=COCO_STUFF_TABLE,
        valid_raw=COCO_STUFF_VALID,
        name=f"coco_stuff {split}",
        **options,
    )
