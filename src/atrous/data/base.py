"""``SegmentationDataset``: a list of (image, mask) files, a label mapping, validation, joint transforms."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..errors import ConfigError, MissingFileError
from .io import DataError, read_image, read_mask
from .labels import IGNORE_INDEX

log = logging.getLogger(__name__)

ON_ERROR_CHOICES = ("raise", "skip")


def jpg_png_pairs(image_dir: Path, mask_dir: Path, *, missing: str) -> list[tuple[Path, Path]]:
    """Every ``image_dir/*.jpg`` with ``mask_dir/<same stem>.png`` (the ADE20K and COCO-Stuff layouts);
    ``FileNotFoundError(missing)`` when either folder is absent."""
    if not image_dir.is_dir() or not mask_dir.is_dir():
        raise MissingFileError(missing)
    return [(image, mask_dir / f"{image.stem}.png") for image in sorted(image_dir.glob("*.jpg"))]


class SegmentationDataset(Dataset):
    """Pairs of image and mask files read the same way for every dataset family.

    samples: (image path, mask path) pairs.
    label_table: (256,) uint8 lookup from raw mask values to class indices (255 = ignore).
    valid_raw: (256,) bool, which raw values may appear; any other raises ``DataError`` naming file and values.
    transforms: called as ``transforms(image, mask)`` on (H, W, 3) uint8 RGB and (H, W) uint8 labels.
    on_error: "raise" (default) or "skip": a bad sample is logged, counted and replaced by the next good one.
    invalid_label_hint: what fixes invalid label values, for a family whose classes are the user's to set.

    ``dataset[i]`` returns ``transforms(image, mask)``, or the two arrays when there are no transforms.
    """

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        *,
        class_names: Sequence[str],
        palette: np.ndarray,
        label_table: np.ndarray,
        valid_raw: np.ndarray,
        transforms: Callable | None = None,
        on_error: str = "raise",
        name: str = "dataset",
        invalid_label_hint: str = "",
    ):
        if on_error not in ON_ERROR_CHOICES:
            raise ConfigError(f"unknown on_error {on_error!r}; choose from {list(ON_ERROR_CHOICES)}")
        if not samples:
            raise DataError(f"{name}: no samples found")
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.palette = palette
        self.label_table = label_table
        self.valid_raw = valid_raw
        self.transforms = transforms
        self.on_error = on_error
        self.name = name
        self.invalid_label_hint = invalid_label_hint
        self.ignore_index = IGNORE_INDEX
        self.skipped = 0
        # Tables that keep every valid value (VOC-style data) need no lookup once values are checked.
        self._identity = bool(np.array_equal(label_table[valid_raw], np.flatnonzero(valid_raw)))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The sample's image (H, W, 3) uint8 RGB and mask (H, W) uint8 class indices, validated, untransformed."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        raw = read_mask(mask_path)
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but mask {mask_path} is "
                f"{raw.shape[1]}x{raw.shape[0]} (width x height); atrous never resizes a mask to fit"
            )
        return image, self.map_labels(raw, mask_path)

    def map_labels(self, raw: np.ndarray, mask_path: Path | str) -> np.ndarray:
        """Raw mask values -> class indices, raising ``DataError`` naming the file and every invalid value."""
        if raw.dtype != np.uint8:
            bad = np.unique(raw[(raw < 0) | (raw > 255)])
            raise DataError(f"{mask_path}: label values {bad[:10].tolist()} are outside 0..255")
        if not np.take(self.valid_raw, raw).all():
            invalid = np.flatnonzero((np.bincount(raw.ravel(), minlength=256) > 0) & ~self.valid_raw)
            raise DataError(
                f"{mask_path}: label values {invalid.tolist()} are not valid for {self.name} "
                f"({self.num_classes} classes: expected {self._valid_description()}){self.invalid_label_hint}"
            )
        return raw if self._identity else np.take(self.label_table, raw)

    def _valid_description(self) -> str:
        valid = np.flatnonzero(self.valid_raw)
        ranges, start = [], valid[0]
        for previous, current in itertools.pairwise(valid):
            if current != previous + 1:
                ranges.append((start, previous))
                start = current
        ranges.append((start, valid[-1]))
        return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in ranges)

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            current = (index + attempt) % len(self)
            try:
                image, mask = self.load(current)
                break
            except DataError as error:
                if self.on_error == "raise":
                    raise
                self.skipped += 1
                log.warning("skipped sample %d (%d skipped so far): %s", current, self.skipped, error)
        else:
            raise DataError(f"{self.name}: every sample failed to load")
        if self.transforms is None:
            return image, mask
        return self.transforms(image, mask)
