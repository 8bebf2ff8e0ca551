"""``atrous data convert``: write ``*_gtFine_labelTrainIds.png`` beside Cityscapes' labelIds (faster loading)."""

from __future__ import annotations

from pathlib import Path

from ..progress import progress_bar
from .cityscapes import LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX, cityscapes_dataset
from .io import read_mask, save_image


def write_cityscapes_train_ids(root: str | Path, split: str, *, progress: bool = True) -> int:
    """Map every labelIds PNG of ``split`` to trainIds (255 = ignore) and save it beside; returns the count.

    The loader then reads the trainIds files directly once every sample of the split has one.
    """
    dataset = cityscapes_dataset(root, split)
    written = 0
    for _, mask_path in progress_bar(dataset.samples, desc=f"convert {split}", disable=not progress, unit="mask"):
        if not mask_path.name.endswith(LABEL_IDS_SUFFIX):
            continue  # this split already uses trainIds
        train_ids = dataset.map_labels(read_mask(mask_path), mask_path)
        # Written whole: the loader switches to trainIds once every sample has one, so a half-written file from an
        # interrupted conversion would be read as labels.
        save_image(mask_path.with_name(mask_path.name.replace(LABEL_IDS_SUFFIX, TRAIN_IDS_SUFFIX)), train_ids)
        written += 1
    return written
