"""VainF/DeepLabV3Plus-Pytorch's DeepLabV3+ decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...models.layers import ASPP, ConvBNReLU, conv3x3_bn_relu


class DeepLabV3PlusLowFirstHead(nn.Module):
    """The DeepLabV3+ of VainF/DeepLabV3Plus-Pytorch: the "low" feature projected to 48 channels, concatenated BEFORE
    the ASPP output (upsampled to stride 4); ONE 3x3 conv (256) + BN + ReLU; 1x1 classifier. ASPP dropout 0.1.
    ``separable``: ASPP's atrous branches and the 3x3 conv as depthwise-pointwise pairs with one BN (its
    ``--separable_conv``). Returns stride-4 logits."""

    def __init__(
        self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int], separable: bool = False
    ):
        super().__init__()
        style = "pair" if separable else False
        self.low_project = ConvBNReLU(channels["low"], 48, 1)
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, dropout=0.1, separable=style)
        self.fuse = conv3x3_bn_relu(48 + 256, 256, separable=style)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.low_project(features["low"])
        context = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([low, context], dim=1)))
