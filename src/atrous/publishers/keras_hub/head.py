"""KerasHub's DeepLabV3+ head (``keras_hub/src/models/deeplab_v3/deeplab_v3_backbone.py`` and ``_layers.py``, 0.32):
ASPP on P5 (1x1, three dilated 3x3, image pooling; concatenated in that order -> 1x1 projection), upsampled x8 to
P2's grid (bilinear, half-pixel); P2 projected to 48 channels; the two concatenated (ASPP first) -> one 1x1 conv of 256
(no 3x3 decoder convs) -> classifier (1x1, no bias; KerasHub applies it after its x4 upsampling: the same map, as both
are linear). Every conv without bias, each followed by BatchNorm with Keras's default eps 1e-3, and ReLU."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...models.layers import ASPP, ConvBNReLU

KERAS_BN_EPS = 1e-3


class DeepLabV3PlusKerasHead(nn.Module):
    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int],
                 separable: bool = False, low_channels: int = 48, width: int = 256):  # fmt: skip
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, out_channels=width, dropout=0.0,
                         separable=separable)  # fmt: skip
        self.low_project = ConvBNReLU(channels["low"], low_channels, 1)
        self.fuse = ConvBNReLU(width + low_channels, width, 1)
        self.classifier = nn.Conv2d(width, num_classes, 1, bias=False)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eps = KERAS_BN_EPS

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.low_project(features["low"])
        # KerasHub upsamples by 8, which is P2's grid for inputs of a multiple of 32 (the only sizes its concat takes).
        context = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, low], dim=1)))
