"""Datasets as distributed, joint transforms, the synthetic set: ``build_dataset(name, root, split, ...)``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError, MissingFileError
from .ade20k import ade20k_dataset
from .base import SegmentationDataset
from .cityscapes import cityscapes_dataset, gta5_dataset
from .coco_stuff import coco_stuff_dataset
from .folder import folder_dataset
from .io import DataError, read_image, read_mask
from .labels import IGNORE_INDEX
from .synthetic import SYNTHETIC_CLASSES, SynthSpec, synthetic_dataset, write_synthetic
from .transforms import eval_transforms, train_transforms
from .voc import voc_dataset

DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "voc": voc_dataset,
    "cityscapes": cityscapes_dataset,
    "ade20k": ade20k_dataset,
    "coco_stuff": coco_stuff_dataset,
    "gta5": gta5_dataset,
    "folder": folder_dataset,
    "synthetic": synthetic_dataset,
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def build_dataset(
    name: str,
    root: str | Path,
    split: str,
    *,
    transforms: Callable | None = None,
    on_error: str = "raise",
    **options,
) -> SegmentationDataset:
    """A dataset read from its distributed layout under ``root``.

    name: see ``list_datasets()``. transforms: ``(image, mask) -> ...`` (see ``atrous.data.transforms``).
    on_error: "raise" (default) or "skip" bad samples (logged and counted in ``dataset.skipped``).
    options: family-specific, e.g. ``label_mapping={0: 0, 255: 1}`` and ``num_classes`` for ``folder``.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose from {list_datasets()}")
    root = Path(root)
    if not root.exists():
        raise MissingFileError(f"dataset root {root} does not exist (dataset {name!r})")
    return DATASETS[name](root, split, transforms=transforms, on_error=on_error, **options)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "SYNTHETIC_CLASSES",
    "DataError",
    "SegmentationDataset",
    "SynthSpec",
    "build_dataset",
    "eval_transforms",
    "list_datasets",
    "read_image",
    "read_mask",
    "train_transforms",
    "write_synthetic",
]
