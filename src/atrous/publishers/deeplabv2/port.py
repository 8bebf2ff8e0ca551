"""The entry point of the widely used DeepLab-v2 PyTorch port, kept so its users' scripts keep working."""

from __future__ import annotations

import logging
from pathlib import Path

from ...build import build_model
from ...errors import ConfigError
from ...models.segmenter import Segmenter

log = logging.getLogger(__name__)


def get_deeplab_v2(
    num_classes: int = 19,
    multi_level: bool = False,
    pretrain: bool = False,
    pretrain_model_path: str | Path | None = None,
) -> Segmenter:
    """DeepLab-v2 (Caffe ResNet-101, OS8, summed 4-branch classifier, frozen BN) as the port builds it.

    multi_level: add the port's auxiliary classifier on layer3 (its ``layer5``).
    pretrain: load ``pretrain_model_path`` (the Caffe-converted ``DeepLab_resnet_pretrained_*.pth`` or a
        checkpoint of the port); a classifier with another class count keeps its fresh init.
    Unlike the port, the model returns full-resolution logits (``SegmentationOutput``); its
    ``optim_parameters(lr)`` gives the same 1x backbone / 10x classifier groups.
    """
    if pretrain and pretrain_model_path is None:
        raise ConfigError("pretrain=True needs pretrain_model_path (e.g. DeepLab_resnet_pretrained_imagenet.pth)")
    weights = str(pretrain_model_path) if pretrain else None
    # build_model logs what it loaded (atrous.weights.load.WeightsReport) at INFO level.
    return build_model("deeplabv2", backbone="resnet101_caffe", num_classes=num_classes, aux=multi_level, weights=weights)
