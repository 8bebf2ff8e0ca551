"""Datasets as distributed, joint transforms, the synthetic set: ``build_dataset(name, root, split, ...)``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, MissingFileError
from .ade20k import ade20k_dataset
from .base import SegmentationDataset
from .cityscapes import cityscapes_dataset, gta5_dataset
from .coco_stuff import coco_stuff_dataset
from .folder import FOLDER_OPTIONS, folder_dataset
from .io import DataError, read_image, read_mask
from .labels import IGNORE_INDEX
from .synthetic import SYNTHETIC_CLASSES, SynthSpec, synthetic_dataset, write_synthetic
from .transforms import eval_transforms, train_transforms
from .voc import voc_dataset


@dataclass(frozen=True)
class DatasetFamily:
    """A dataset family as ``build_dataset`` knows it: how to read one, ``build(root, split, **options)``, and the
    options it takes beyond ``transforms`` and ``on_error`` (the config and the command line offer those for it only).
    Called, it builds."""

    build: Callable[..., SegmentationDataset]
    options: tuple[str, ...] = ()

    def __call__(self, root: str | Path, split: str, **options) -> SegmentationDataset:
        return self.build(root, split, **options)


DATASETS: dict[str, DatasetFamily] = {
    "voc": DatasetFamily(voc_dataset),
    "cityscapes": DatasetFamily(cityscapes_dataset),
    "ade20k": DatasetFamily(ade20k_dataset),
    "coco_stuff": DatasetFamily(coco_stuff_dataset),
    "gta5": DatasetFamily(gta5_dataset),
    "folder": DatasetFamily(folder_dataset, options=FOLDER_OPTIONS),
    "synthetic": DatasetFamily(synthetic_dataset),
}


def list_datasets() -> list[str]:
    return sorted(DATASETS)


def family_options(name: str) -> tuple[str, ...]:
    """The options dataset family ``name`` takes beyond ``transforms`` and ``on_error``, e.g. ``label_mapping`` for
    ``folder``; none for a name that is no family (``build_dataset`` refuses it, naming the choices)."""
    family = DATASETS.get(name)
    return family.options if family is not None else ()


def datasets_taking(option: str) -> list[str]:
    """The dataset families that take ``option`` (``["folder"]`` for ``label_mapping``), for messages that say
    where an option belongs."""
    return [name for name in list_datasets() if option in DATASETS[name].options]


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
        raise MissingFileError(f"dataset root {root} does not exist (dataset {name!r}): point data.root=PATH (atrous "
                               "train --data-root, atrous data --root) at the folder that holds it")  # fmt: skip
    return DATASETS[name](root, split, transforms=transforms, on_error=on_error, **options)


__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "SYNTHETIC_CLASSES",
    "DataError",
    "DatasetFamily",
    "SegmentationDataset",
    "SynthSpec",
    "build_dataset",
    "datasets_taking",
    "eval_transforms",
    "family_options",
    "list_datasets",
    "read_image",
    "read_mask",
    "train_transforms",
    "write_synthetic",
]
