"""Whole-dataset checks (``atrous data check``) and class statistics (``atrous data stats``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import write_text_whole
from ..errors import ConfigError
from ..progress import progress_bar
from .base import SegmentationDataset
from .io import DataError, read_mask
from .labels import IGNORE_INDEX

IGNORE_DOMINATES = 0.5  # more ignored pixels than this fraction: the masks are probably read wrongly


@dataclass
class CheckReport:
    """Bad pairs (``problems``: the dataset cannot be used as it is) and ``warnings``: it loads, but what it holds
    looks unlike what was meant (a class with no pixel, mostly ignored pixels)."""

    dataset: str
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"{self.dataset}: {self.checked} pairs checked, {len(self.problems)} bad, {len(self.warnings)} warnings"
        return "\n".join([head, *(f"  BAD {problem}" for problem in self.problems),
                          *(f"  WARNING {warning}" for warning in self.warnings)])  # fmt: skip


def check_dataset(dataset: SegmentationDataset, *, progress: bool = True) -> CheckReport:
    """Decode every pair fully; collect unreadable/truncated files, size mismatches and invalid label values, and warn
    about label distributions that mean the masks are read wrongly (e.g. 0/255 masks read as class 0 / ignore)."""
    report = CheckReport(dataset=dataset.name)
    counts = np.zeros(256, dtype=np.int64)  # pixels per class index after the dataset's mapping; 255: ignored
    for index in progress_bar(range(len(dataset)), desc=f"check {dataset.name}", disable=not progress, unit="pair"):
        report.checked += 1
        try:
            _, mask = dataset.load(index)
        except (DataError, FileNotFoundError) as error:
            report.problems.append(str(error))
            continue
        counts += np.bincount(mask.ravel(), minlength=256)[:256]
    report.warnings += _distribution_warnings(dataset, counts)
    return report


def _distribution_warnings(dataset: SegmentationDataset, counts: np.ndarray) -> list[str]:
    total = int(counts.sum())
    if not total:
        return []
    warnings = []
    ignored = counts[IGNORE_INDEX] / total
    empty = [name for name, count in zip(dataset.class_names, counts) if count == 0]
    if empty:
        warnings.append(f"{len(empty)} of {dataset.num_classes} classes have no pixel in this split: "
                        f"{', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}")  # fmt: skip
    if ignored > IGNORE_DOMINATES or (empty and ignored > 0):
        # The classic mistake: 0/255 binary masks, where 255 (the ignore label) was meant as the foreground class.
        warnings.append(
            f"{ignored:.1%} of all pixels are 255, ignored in training and scoring. If 255 marks a class (0/255 "
            "binary masks), map it: --label-map 0:0,255:1 (data.label_mapping={0: 0, 255: 1} in a config)"
        )
    return warnings


# Masks read before training to recognise 0/255 binary masks: enough that a dataset of real classes shows one (VOC,
# Cityscapes and the synthetic set do in any mask), few enough to cost a fraction of a second.
BINARY_MASK_SAMPLE = 16


def refuse_binary_masks_read_as_ignore(dataset: SegmentationDataset, *, sample: int = BINARY_MASK_SAMPLE) -> None:
    """Raise ``DataError`` before any training when ``dataset``'s masks look like 0/255 binary masks read without a
    label mapping: every mask of an evenly spread sample holds only 0 and 255, and 255 is the ignore label, so every
    object pixel would be ignored and the model would learn background alone (``check_dataset`` warns of the same
    in a full scan). The message names a mask, the values found and both fixes: map 255 to a class, or say that it
    is meant as ignore. Unreadable masks are left to the dataset's own error handling."""
    if dataset.num_classes < 2 or not len(dataset):
        return
    count = min(sample, len(dataset))
    indices = sorted({round(i * (len(dataset) - 1) / max(count - 1, 1)) for i in range(count)})  # first and last in
    example, checked = None, 0
    for index in indices:
        mask_path = dataset.samples[index][1]
        try:
            values = np.flatnonzero(np.bincount(read_mask(mask_path).ravel(), minlength=256))
        except DataError:
            continue
        checked += 1
        if not set(values.tolist()) <= {0, IGNORE_INDEX}:
            return  # a mask with a class other than 0: the masks hold class indices
        if IGNORE_INDEX in values and example is None:
            example = mask_path
    if example is None:
        return
    raise DataError(
        f"{example}: the masks of {dataset.name} hold only the values 0 and 255 ({checked} of {len(dataset)} read, "
        f"spread over the set), and 255 is the ignore label: every object pixel would be ignored and the model "
        f"would learn background alone. If 255 marks a class (0/255 binary masks), map it: "
        f"data.label_mapping={{0: 0, 255: 1}} (atrous data check ... --label-map 0:0,255:1 checks it); if 255 is "
        f"meant as ignore, say so: data.label_mapping={{0: 0, 255: 255}}"
    )


def class_statistics(dataset: SegmentationDataset, *, progress: bool = True) -> dict:
    """Per-class pixel counts and frequencies, and class weights for the loss.

    ``inverse``: 1 / frequency, scaled to mean 1 over present classes.
    ``median_frequency``: median(freq) / freq (Eigen & Fergus). Absent classes get weight 0.
    """
    counts = np.zeros(dataset.num_classes, dtype=np.int64)
    for index in progress_bar(range(len(dataset)), desc=f"stats {dataset.name}", disable=not progress, unit="pair"):
        _, mask = dataset.load(index)
        counts += np.bincount(mask.ravel(), minlength=256)[: dataset.num_classes]
    total = counts.sum()
    frequency = counts / total if total else np.zeros_like(counts, dtype=np.float64)
    present = counts > 0
    inverse = np.zeros_like(frequency)
    inverse[present] = 1.0 / frequency[present]
    if present.any():
        inverse[present] /= inverse[present].mean()
    median = np.zeros_like(frequency)
    if present.any():
        median[present] = np.median(frequency[present]) / frequency[present]
    return {
        "dataset": dataset.name,
        "classes": dataset.class_names,
        "pixel_counts": counts.tolist(),
        "frequency": frequency.tolist(),
        "weights": {"inverse": inverse.tolist(), "median_frequency": median.tolist()},
    }


def write_class_statistics(stats: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_whole(path, json.dumps(stats, indent=2))


def read_class_weights(path: str | Path, *, kind: str = "median_frequency", num_classes: int) -> list[float]:
    """The class weights ``write_class_statistics`` wrote, checked against the model's class count."""
    stats = json.loads(Path(path).read_text())
    weights = stats["weights"].get(kind)
    if weights is None:
        raise ConfigError(f"{path}: no weights {kind!r}; choose from {sorted(stats['weights'])}")
    if len(weights) != num_classes:
        raise ConfigError(f"{path}: {len(weights)} class weights, but the model has {num_classes} classes")
    return weights
