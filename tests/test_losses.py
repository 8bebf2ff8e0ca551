"""Losses against direct references: weighted CE with ignore, aux weighting, OHEM's pixel selection."""

import torch
import torch.nn.functional as F

from atrous.losses import SegmentationLoss
from atrous.models.segmenter import SegmentationOutput


def batch(seed=0, classes=5):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 9, 11, generator=generator)
    target = torch.randint(0, classes, (2, 9, 11), generator=generator)
    target[0, :2] = 255
    return logits, target


def test_cross_entropy_with_ignore_and_class_weights_matches_a_direct_computation():
    logits, target = batch()
    weights = [0.5, 1.0, 2.0, 1.5, 0.25]
    loss, _ = SegmentationLoss(class_weights=weights)(SegmentationOutput(logits, None), target)
    valid = target != 255
    log_probability = torch.log_softmax(logits, 1).permute(0, 2, 3, 1)[valid]
    t = target[valid]
    w = torch.tensor(weights)[t]
    expected = -(w * log_probability[torch.arange(len(t)), t]).sum() / w.sum()
    torch.testing.assert_close(loss, expected)


def test_aux_loss_is_added_with_its_weight():
    logits, target = batch()
    aux, _ = batch(seed=1)
    total, parts = SegmentationLoss(aux_weight=0.4)(SegmentationOutput(logits, aux), target)
    main = F.cross_entropy(logits, target, ignore_index=255)
    torch.testing.assert_close(parts["loss_main"], main)
    torch.testing.assert_close(total, main + 0.4 * F.cross_entropy(aux, target, ignore_index=255))


def test_ohem_keeps_the_hard_pixels():
    logits, target = batch(seed=2)
    valid = target != 255
    probability = torch.softmax(logits, 1).gather(1, target.clamp(max=4)[:, None])[:, 0]
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    for threshold, min_kept in [(0.7, 10), (0.05, 60), (0.99, 1000)]:
        loss, _ = SegmentationLoss(ohem=True, ohem_thresh=threshold, ohem_min_kept=min_kept)(
            SegmentationOutput(logits, None), target
        )
        kth = torch.sort(probability[valid]).values[min(min_kept, int(valid.sum())) - 1].item()
        keep = valid & (probability <= max(threshold, kth))
        assert keep.sum() >= min(min_kept, int(valid.sum()))
        torch.testing.assert_close(loss, per_pixel[keep].mean())
