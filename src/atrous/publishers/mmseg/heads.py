"""mmsegmentation's DeepLab heads: ``ASPPHead`` (its DeepLabV3) and ``DepthwiseSeparableASPPHead`` (its DeepLabV3+),
both on its pooling-first ASPP with a 3x3 bottleneck."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...models.layers import ConvBNReLU, ImagePooling, SeparableConvBNReLU, conv3x3_bn_relu


class PoolFirstASPP(nn.Module):
    """mmsegmentation's ASPP: image pooling, 1x1 and atrous 3x3 branches (``channels`` each; separable ones with BN
    and ReLU after depthwise and pointwise), concatenated in that order -> 3x3 "bottleneck" conv + BN + ReLU."""

    def __init__(self, *, in_channels: int, atrous_rates: Sequence[int], channels: int = 512, separable: bool = False):
        super().__init__()
        self.pooling = ImagePooling(in_channels, channels)
        self.branch1x1 = ConvBNReLU(in_channels, channels, 1)
        self.atrous_branches = nn.ModuleList(
            conv3x3_bn_relu(in_channels, channels, dilation=rate, separable=separable) for rate in atrous_rates
        )
        self.bottleneck = ConvBNReLU(channels * (len(atrous_rates) + 2), channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.pooling(x), self.branch1x1(x)] + [branch(x) for branch in self.atrous_branches]
        return self.bottleneck(torch.cat(branches, dim=1))


def _mmseg_widths(channels: Mapping[str, int]) -> tuple[int, int]:
    """The head and low-level projection widths mmsegmentation's DeepLab configs set: 512 and 48 on ResNet-50/101,
    128 and 12 on ResNet-18 (a quarter of the "out" channels, 3/16 of the "low" ones)."""
    return channels["out"] // 4, channels["low"] * 3 // 16


class DeepLabV3BottleneckHead(nn.Module):
    """mmsegmentation's ``ASPPHead`` (its DeepLabV3): ``PoolFirstASPP`` (512 channels on ResNet-50/101) -> dropout 0.1
    -> 1x1 classifier, on the "out" feature."""

    def __init__(
        self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int], separable: bool = False
    ):
        super().__init__()
        width, _ = _mmseg_widths(channels)
        self.aspp = PoolFirstASPP(in_channels=channels["out"], atrous_rates=atrous_rates, channels=width,
                                  separable=separable)  # fmt: skip
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.aspp(features["out"])))


class DeepLabV3PlusBottleneckHead(nn.Module):
    """mmsegmentation's ``DepthwiseSeparableASPPHead`` (its DeepLabV3+): separable ``PoolFirstASPP`` (512 on
    ResNet-50/101), upsampled to stride 4 and concatenated before the "low" feature projected to 48 channels, two
    separable 3x3 convs (512), dropout 0.1, 1x1 classifier. Returns stride-4 logits."""

    def __init__(
        self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int], separable: bool = True
    ):
        super().__init__()
        width, low_width = _mmseg_widths(channels)
        self.aspp = PoolFirstASPP(in_channels=channels["out"], atrous_rates=atrous_rates, channels=width,
                                  separable=separable)  # fmt: skip
        self.low_project = ConvBNReLU(channels["low"], low_width, 1)
        self.fuse1 = SeparableConvBNReLU(width + low_width, width)
        self.fuse2 = SeparableConvBNReLU(width, width)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.low_project(features["low"])
        context = F.interpolate(self.aspp(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(self.fuse2(self.fuse1(torch.cat([context, low], dim=1)))))
