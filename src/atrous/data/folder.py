"""Custom data: ``images/`` and ``masks/`` matched by file stem, with an optional label mapping."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MissingFileError
from .base import SegmentationDataset
from .io import DataError
from .labels import IGNORE_INDEX, checked_class_names, checked_palette, identity_table, lookup_table, voc_palette

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# The options of this family beyond root, split, transforms and on_error: a folder says nothing of its classes, so
# the user does (the config's data.label_mapping / class_names / palette, the model's num_classes).
FOLDER_OPTIONS = ("num_classes", "class_names", "palette", "label_mapping")


def folder_dataset(
    root: str | Path,
    split: str | None = None,
    *,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    label_mapping: Mapping[int, int] | None = None,
    **options,
) -> SegmentationDataset:
    """``<root>[/<split>]/images/*`` with ``masks/<same stem>.png`` (or any image extension).

    class_names: one per class (``class_0``, ``class_1``, ... without them). palette: one [r, g, b] (0..255) per class,
    the colours of predictions, overlays and legends (VOC's without it). Both travel into the model trained on the
    data and its checkpoints.
    label_mapping: raw mask value -> class, e.g. ``{0: 0, 255: 1}`` for 0/255 binary masks; raw values not in
    it are errors. Without it, mask values are class indices 0..num_classes-1 (255 = ignore).
    """
    base = Path(root) / split if split else Path(root)
    image_dir, mask_dir = base / "images", base / "masks"
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise MissingFileError(f"no folder dataset under {base}: expected images/ and masks/ side by side")
    if class_names is None:
        if num_classes is None:
            num_classes = max(label_mapping.values()) + 1 if label_mapping else None
        if num_classes is None:
            raise ConfigError("folder datasets need num_classes, class_names or a label_mapping")
        class_names = [f"class_{i}" for i in range(num_classes)]
    else:
        expected = len(class_names) if num_classes is None else num_classes
        class_names = checked_class_names(class_names, expected, key="class_names", count_from="num_classes")
    num_classes = len(class_names)
    if palette is not None:
        palette = checked_palette(palette, num_classes, key="palette", count_from="the dataset's classes")

    masks = {path.stem: path for path in mask_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS}
    images = sorted(path for path in image_dir.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    unmatched = [path.name for path in images if path.stem not in masks]
    if unmatched:
        raise DataError(f"{image_dir}: {len(unmatched)} images have no mask in {mask_dir}, e.g. {unmatched[:3]}")

    valid = np.zeros(256, dtype=bool)
    if label_mapping:
        mapping = {int(raw): int(mapped) for raw, mapped in label_mapping.items()}
        for raw, mapped in mapping.items():
            if not (0 <= mapped < num_classes or mapped == IGNORE_INDEX):
                raise ConfigError(f"label_mapping {raw} -> {mapped} is outside 0..{num_classes - 1} and not 255")
        valid[list(mapping)] = True
        table = lookup_table(mapping)
    else:
        valid[:num_classes] = True
        valid[IGNORE_INDEX] = True
        table = identity_table(num_classes)
    return SegmentationDataset(
        [(image, masks[image.stem]) for image in images],
        class_names=class_names,
        palette=voc_palette() if palette is None else palette,
        label_table=table,
        valid_raw=valid,
        name=f"folder {base}",
        invalid_label_hint=("; if the masks hold more classes, say how many: --num-classes N (data.num_classes); "
                            "if their values are not class indices, map them: --label-map RAW:CLASS,... "
                            "(data.label_mapping)"),
        **options,
    )
