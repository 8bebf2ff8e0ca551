"""ADE20K SceneParsing (ADEChallengeData2016, 150 classes, "reduce zero label")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .base import SegmentationDataset, jpg_png_pairs
from .classes import ADE20K_CLASSES
from .labels import lookup_table, voc_palette

ADE20K_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}
# 0 = "other" -> ignored; class k -> k - 1.
ADE20K_TABLE = lookup_table({k: k - 1 for k in range(1, 151)})
ADE20K_VALID = np.zeros(256, dtype=bool)
ADE20K_VALID[:151] = True


def ade20k_dataset(root: str | Path, split: str, **options) -> SegmentationDataset:
    """``images/{training,validation}/ADE_*.jpg`` with ``annotations/.../ADE_*.png`` (0..150)."""
    if split not in ADE20K_SPLITS:
        raise ConfigError(f"unknown ADE20K split {split!r}; choose from {sorted(ADE20K_SPLITS)}")
    root = Path(root)
    if (root / "ADEChallengeData2016").is_dir():
        root = root / "ADEChallengeData2016"
    folder = ADE20K_SPLITS[split]
    samples = jpg_png_pairs(
        root / "images" / folder,
        root / "annotations" / folder,
        missing=f"no ADE20K layout under {root}: expected images/{folder} and annotations/{folder} "
        "(ADEChallengeData2016.zip)",
    )
    return SegmentationDataset(
        samples,
        class_names=ADE20K_CLASSES,
        palette=voc_palette(),
        label_table=ADE20K_TABLE,
        valid_raw=ADE20K_VALID,
        name=f"ade20k {split}",
        **options,
    )
