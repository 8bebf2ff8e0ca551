"""Losses, kept outside the model: cross-entropy with the ignore label, class weights, aux loss, OHEM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data.labels import IGNORE_INDEX
from .models.segmenter import SegmentationOutput


class SegmentationLoss(nn.Module):
    """``loss = CE(logits) + aux_weight * CE(aux_logits)``; CE ignores 255 and may weight classes.

    With ``ohem``, only hard pixels count (online hard example mining as in mmseg's OHEMPixelSampler):
    pixels whose probability for the true class is below max(ohem_thresh, the ``ohem_min_kept``-th lowest).
    forward(output, target (N, H, W) int64) -> (total loss, {"loss_main": ..., "loss_aux": ...} detached).
    """

    def __init__(
        self,
        *,
        class_weights: Sequence[float] | None = None,
        aux_weight: float = 0.4,
        ohem: bool = False,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int = 100000,
    ):
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weight, persistent=False)
        self.aux_weight = aux_weight
        self.ohem, self.ohem_thresh, self.ohem_min_kept = ohem, ohem_thresh, ohem_min_kept

    def cross_entropy(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if not self.ohem:
            return F.cross_entropy(logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        per_pixel = F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=IGNORE_INDEX, reduction="none"
        )
        with torch.no_grad():
            valid = target != IGNORE_INDEX
            probability = torch.softmax(logits, dim=1).gather(1, target.clamp(max=logits.shape[1] - 1)[:, None])[:, 0]
            valid_probability = probability[valid]
            if valid_probability.numel() == 0:
                return per_pixel.sum() * 0.0
            kth = min(self.ohem_min_kept, valid_probability.numel()) - 1
            threshold = max(self.ohem_thresh, valid_probability.sort().values[kth].item())
            keep = valid & (probability <= threshold)
        return per_pixel[keep].sum() / keep.sum().clamp(min=1)

    def forward(self, output: SegmentationOutput, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        main = self.cross_entropy(output.logits, target)
        parts = {"loss_main": main.detach()}
        total = main
        if output.aux_logits is not None and self.aux_weight > 0:
            aux = self.cross_entropy(output.aux_logits, target)
            parts["loss_aux"] = aux.detach()
            total = total + self.aux_weight * aux
        return total, parts
