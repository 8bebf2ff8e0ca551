"""Streaming confusion matrix and the scores read from it (mIoU, per-class IoU, accuracies, fwIoU, Dice).

Rows are ground truth, columns predictions. A class absent from both the ground truth and the predictions
has no defined IoU: it is NaN in the per-class arrays and left out of every mean.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .data.labels import IGNORE_INDEX
from .errors import DataError


class ConfusionMatrix:
    """Integer counts on the device of the predictions.

    update(prediction, target): any shapes that match, integer class indices; ``target`` may hold 255 (ignored).
    A ground-truth value outside [0, num_classes) ∪ {255} raises ``ValueError``: it is never dropped or counted
    as another class. Predictions must lie in [0, num_classes).
    """

    def __init__(self, num_classes: int, *, device: torch.device | str | None = None, ignore_index: int = IGNORE_INDEX):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        if prediction.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(prediction.shape)} != target shape {tuple(target.shape)}")
        n = self.num_classes
        target = target.to(self.matrix.device, torch.int64).reshape(-1)
        prediction = prediction.to(self.matrix.device, torch.int64).reshape(-1)
        if target.numel() == 0:
            return
        low, high = (int(v) for v in torch.aminmax(target))
        if low < 0 or high > 255:
            bad = torch.unique(target[(target < 0) | (target > 255)])[:10].tolist()
            raise DataError(f"ground-truth values {bad} are outside [0, {n}) and not the ignore label {self.ignore_index}")
        low, high = (int(v) for v in torch.aminmax(prediction))
        if low < 0 or high >= n:
            raise ValueError(f"predictions must lie in [0, {n}), got values in [{low}, {high}]")
        # One bincount over (target 0..255) x (prediction 0..n-1): rows < n are the confusion matrix, the ignore
        # row is dropped, any other row holds invalid ground truth. No boolean compaction of the image.
        counts = torch.bincount(torch.add(prediction, target, alpha=n), minlength=256 * n).view(256, n)
        rows = counts.sum(dim=1)
        invalid = [v for v in torch.nonzero(rows[n:]).flatten().add(n).tolist() if v != self.ignore_index]
        if invalid:
            raise ValueError(
                f"ground-truth values {invalid[:10]} are outside [0, {n}) and not the ignore label {self.ignore_index}"
            )
        self.matrix += counts[:n]

    def all_reduce(self) -> None:
        """Sum the counts of every process (call on all ranks)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def reset(self) -> None:
        self.matrix.zero_()

    def scores(self) -> dict:
        return scores_from_matrix(self.matrix)


def scores_from_matrix(matrix: torch.Tensor) -> dict:
    """mIoU, per-class IoU, pixel accuracy, mean class accuracy, frequency-weighted IoU, per-class Dice/F1.

    Per-class values are lists (NaN where undefined); means skip NaN.
    """
    m = matrix.double().cpu()
    true_positive = m.diag()
    gt = m.sum(dim=1)
    predicted = m.sum(dim=0)
    union = gt + predicted - true_positive
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, true_positive / union.clamp(min=1), nan)
    class_accuracy = torch.where(gt > 0, true_positive / gt.clamp(min=1), nan)
    dice = torch.where(gt + predicted > 0, 2 * true_positive / (gt + predicted).clamp(min=1), nan)
    total = gt.sum()
    frequency = gt / total if total > 0 else torch.zeros_like(gt)
    present = gt > 0
    return {
        "mIoU": _nanmean(iou),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mean_class_accuracy": _nanmean(class_accuracy),
        "fwIoU": float((frequency[present] * iou[present]).sum()) if total > 0 else float("nan"),
        "mean_dice": _nanmean(dice),
        "per_class_iou": iou.tolist(),
        "per_class_accuracy": class_accuracy.tolist(),
        "per_class_dice": dice.tolist(),
        "pixels": int(total),
    }


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return float(finite.mean()) if finite.numel() else float("nan")
