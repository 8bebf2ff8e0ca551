"""Segmentation heads: DeepLabV2's summed atrous classifier, ASPP, the V3 and V3+ heads, the FCN aux head.

Each head is sized from the backbone's ``channels`` (feature name -> channel count) and maps the backbone's
feature dict to logits at feature resolution (``head(features)``); the ``Segmenter`` upsamples. Every head takes
the same keyword arguments (``channels``, ``num_classes``, ``atrous_rates``, and ``separable`` for main heads), so a
new one is a class plus one ``atrous.models.MODELS`` line.
Submodules that output class scores are named ``classifier``/``classifiers``: weight loading recognises a
class-count mismatch by that name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .atrous_conv import AtrousConv2d


class ConvBNReLU(nn.Module):
    """Conv (no bias) -> BatchNorm -> ReLU, with 'same' padding for any dilation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, dilation: int = 1, groups: int = 1):
        super().__init__()
        if dilation > 1 and kernel_size == 3:
            self.conv = AtrousConv2d(in_channels, out_channels, dilation=dilation, groups=groups)
        else:
            padding = (kernel_size - 1) // 2 * dilation
            self.conv = nn.Conv2d(
                in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=False
            )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class SeparableConvBNReLU(nn.Module):
    """Atrous-separable conv of DeepLabV3+: depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1):
        super().__init__()
        self.depthwise = ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels)
        self.pointwise = ConvBNReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise 3x3 (dilated) then pointwise 1x1, nothing between: the separable conv of Xception-style code bases
    that put BN after the pair (segmentation_models_pytorch, VainF)."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1):
        super().__init__()
        if dilation > 1:
            self.depthwise = AtrousConv2d(in_channels, in_channels, dilation=dilation, groups=in_channels)
        else:
            self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class PairSeparableConvBNReLU(nn.Module):
    """``DepthwiseSeparableConv`` -> BN -> ReLU (one BN, after the pair)."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1):
        super().__init__()
        self.conv = DepthwiseSeparableConv(in_channels, out_channels, dilation=dilation)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


# separable: False (plain 3x3), True (DeepLabV3+'s: BN + ReLU after depthwise and after pointwise), or "pair"
# (one BN + ReLU after the depthwise-pointwise pair).
Separable = bool | str


def conv3x3_bn_relu(in_channels: int, out_channels: int, *, dilation: int = 1, separable: Separable = False) -> nn.Module:
    if separable == "pair":
        return PairSeparableConvBNReLU(in_channels, out_channels, dilation=dilation)
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, dilation=dilation)
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation)


class ImagePooling(ConvBNReLU):
    """ASPP's image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> broadcast back to H x W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training and x.shape[0] == 1:
            raise ValueError(
                "batch size 1 in train mode: the BatchNorm of ASPP's image-pooling branch sees one value per "
                "channel and cannot compute batch statistics. Use a batch of 2 or more, call model.eval(), "
                "or build the model with frozen_bn='all'."
            )
        pooled = super().forward(x.mean(dim=(2, 3), keepdim=True))
        # Bilinear upsampling of a 1x1 map is a broadcast; expand avoids the interpolation kernel.
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling (DeepLabV3): 1x1, one 3x3 per rate, image pooling; concat -> 1x1 -> dropout.

    Input (N, in_channels, h, w) -> output (N, out_channels, h, w).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        atrous_rates: Sequence[int],
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: Separable = False,
    ):
        super().__init__()
        self.branch1x1 = ConvBNReLU(in_channels, out_channels, 1)
        self.atrous_branches = nn.ModuleList(
            conv3x3_bn_relu(in_channels, out_channels, dilation=rate, separable=separable) for rate in atrous_rates
        )
        self.pooling = ImagePooling(in_channels, out_channels)
        self.project = ConvBNReLU(out_channels * (len(atrous_rates) + 2), out_channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling runs first, so its gradient (a broadcast, which autograd materialises in NCHW) arrives last in the
        # backward pass and is added into the others' channels_last sum; arriving first it would set the sum's
        # layout to NCHW, and each channels_last + NCHW addition costs 6x a same-layout one.
        pooled = self.pooling(x)
        branches = [self.branch1x1(x)] + [branch(x) for branch in self.atrous_branches] + [pooled]
        return self.dropout(self.project(torch.cat(branches, dim=1)))


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


class ClassifierHead(nn.Module):
    """One 1x1 conv classifier (with bias) on the "out" feature, no context module: the network of DeepLab-v2's
    COCO-pretrained init model (kazuto1011's "DeepLabV1" container). ``atrous_rates`` is accepted and unused."""

    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int] = ()):
        super().__init__()
        self.classifier = nn.Conv2d(channels["out"], num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["out"])


class DeepLabV3PaperHead(nn.Module):
    """DeepLabV3 as the paper draws it: ASPP (its 1x1 projection included) -> 1x1 classifier, with no 3x3 conv between
    (kazuto1011/deeplab-pytorch's layout; torchvision's ``DeepLabHead`` adds the 3x3)."""

    def __init__(
        self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int], separable: bool = False
    ):
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, separable=separable)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features["out"]))


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
