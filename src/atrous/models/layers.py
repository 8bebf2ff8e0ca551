"""The convolution blocks DeepLab heads are made of: conv + BN + ReLU at any dilation, the atrous-separable
variants (BN after each of depthwise and pointwise, or one BN after the pair), ASPP and its image-pooling branch.
Dilated 3x3 convolutions are ``AtrousConv2d`` (``atrous_conv``), which skips the taps that fall in the padding."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
