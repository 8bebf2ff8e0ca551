"""segmentation_models_pytorch's DeepLabV3+ decoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...models.layers import ASPP, ConvBNReLU, PairSeparableConvBNReLU


class DeepLabV3PlusPairHead(nn.Module):
    """The DeepLabV3+ of segmentation_models_pytorch: ASPP (its atrous branches separable as a depthwise-pointwise
    pair with one BN, when ``separable``) -> separable 3x3 + BN + ReLU; upsampled to stride 4 (``align_corners``) and
    concatenated before the "low" feature projected to 48 channels; ONE separable 3x3 (256) + BN + ReLU; 1x1
    classifier. Returns stride-4 logits."""

    def __init__(
        self,
        *,
        channels: Mapping[str, int],
        num_classes: int,
        atrous_rates: Sequence[int],
        separable: bool = True,
        align_corners: bool = False,
        low_project_channels: int = 48,
    ):
        super().__init__()
        self.align_corners = align_corners
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, separable="pair" if separable else False)
        self.aspp_conv = PairSeparableConvBNReLU(256, 256)
        self.low_project = ConvBNReLU(channels["low"], low_project_channels, 1)
        self.fuse = PairSeparableConvBNReLU(256 + low_project_channels, 256)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = features["low"]
        context = self.aspp_conv(self.aspp(features["out"]))
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        return self.classifier(self.fuse(torch.cat([context, self.low_project(low)], dim=1)))
