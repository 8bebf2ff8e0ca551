"""The papers' heads: DeepLab-v2's summed atrous classifier, DeepLabV3's (torchvision's ``DeepLabHead``), DeepLabV3+'s
decoder and the FCN aux head, with the architectures they make (``ARCHITECTURES``).

Each head follows ``atrous.models.architecture.HeadBuilder``: built from the backbone's ``channels`` (feature name ->
channel count), ``num_classes`` and ``atrous_rates`` (and the options its architecture declares), it maps the feature
dict to logits at the resolution of the feature it reads; the ``Segmenter`` upsamples. Submodules that output class
scores are named ``classifier``/``classifiers``: weight loading recognises a class-count mismatch by that name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..architecture import Architecture
from ..layers import ASPP, AtrousConv2d, ConvBNReLU, conv3x3_bn_relu


class DeepLabV2Head(nn.Module):
    """DeepLab-v2 ASPP classifier: parallel 3x3 convs (with bias) at dilations 6/12/18/24 whose outputs are summed.

    All four branches are summed (a widespread copy returns inside its loop and sums only two).
    ``feature``: the backbone feature it reads ("out"; "aux" for the port's multi-level classifier on layer3).
    """

    def __init__(
        self,
        *,
        channels: Mapping[str, int],
        num_classes: int,
        atrous_rates: Sequence[int] = (6, 12, 18, 24),
        feature: str = "out",
    ):
        super().__init__()
        self.feature = feature
        in_channels = channels[feature]
        self.classifiers = nn.ModuleList(
            AtrousConv2d(in_channels, num_classes, dilation=rate, bias=True) for rate in atrous_rates
        )
        for conv in self.classifiers:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features[feature]: (N, channels[feature], h, w) -> logits (N, num_classes, h, w)."""
        x = features[self.feature]
        logits = self.classifiers[0](x)
        for conv in self.classifiers[1:]:
            logits = logits + conv(x)
        return logits


class DeepLabV3Head(nn.Module):
    """ASPP -> 3x3 conv (256) + BN + ReLU -> 1x1 classifier (torchvision's ``DeepLabHead``), on the "out" feature."""

    def __init__(
        self,
        *,
        channels: Mapping[str, int],
        num_classes: int,
        atrous_rates: Sequence[int],
        dropout: float = 0.5,
        separable: bool = False,
    ):
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, dropout=dropout, separable=separable)
        self.conv = conv3x3_bn_relu(256, 256, separable=separable)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features["out"]: (N, channels["out"], h, w) -> logits (N, num_classes, h, w)."""
        return self.classifier(self.conv(self.aspp(features["out"])))


class DeepLabV3PlusHead(nn.Module):
    """DeepLabV3+ : ASPP on the "out" features, fused at stride 4 with the projected "low" features.

    low (N, channels["low"], H/4, W/4) -> 1x1 conv (48) + BN + ReLU; ASPP output upsampled to H/4 x W/4;
    concat (304 ch) -> two 3x3 convs (256) + BN + ReLU -> 1x1 classifier. Returns stride-4 logits.
    ``align_corners``: of the ASPP output's upsampling (True in jfzhang95/pytorch-deeplab-xception).
    """

    def __init__(
        self,
        *,
        channels: Mapping[str, int],
        num_classes: int,
        atrous_rates: Sequence[int],
        low_project_channels: int = 48,
        dropout: float = 0.1,
        separable: bool = False,
        align_corners: bool = False,
    ):
        super().__init__()
        self.align_corners = align_corners
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, dropout=dropout, separable=separable)
        self.low_project = ConvBNReLU(channels["low"], low_project_channels, 1)
        self.fuse1 = conv3x3_bn_relu(256 + low_project_channels, 256, separable=separable)
        self.fuse2 = conv3x3_bn_relu(256, 256, separable=separable)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """features["out"] and features["low"] -> logits (N, num_classes, H/4, W/4)."""
        low = features["low"]
        context = self.aspp(features["out"])
        context = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=self.align_corners)
        fused = torch.cat([context, self.low_project(low)], dim=1)
        return self.classifier(self.fuse2(self.fuse1(fused)))


class FCNHead(nn.Module):
    """Auxiliary head (torchvision's ``FCNHead``) on the "aux" feature: 3x3 conv (in/4) + BN + ReLU + dropout 0.1
    -> 1x1 classifier. ``atrous_rates`` is accepted and unused (no atrous convs): every aux head is built by one call.
    """

    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int] = ()):
        super().__init__()
        in_channels = channels["aux"]
        self.conv = ConvBNReLU(in_channels, in_channels // 4, 3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(in_channels // 4, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(features["aux"])))




def _deeplabv2_aux(**kwargs) -> DeepLabV2Head:
    # The port's auxiliary classifier ("layer5") is the same summed classifier on layer3.
    return DeepLabV2Head(**kwargs, feature="aux")


ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv2": Architecture(
        DeepLabV2Head, _deeplabv2_aux, backbone="resnet101_caffe", output_stride=8,
        default_rates=lambda output_stride: (6, 12, 18, 24), frozen_bn="all", head_lr_mult=10.0, separable=False,
        needs_rates=True,
    ),
    "deeplabv3": Architecture(DeepLabV3Head, FCNHead, backbone="resnet50", output_stride=16),
    "deeplabv3plus": Architecture(DeepLabV3PlusHead, FCNHead, backbone="resnet50", output_stride=16, align_corners=True),
}  # fmt: skip
