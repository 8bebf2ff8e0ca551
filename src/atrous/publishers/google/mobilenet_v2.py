"""MobileNetV2 as Google's DeepLab builds it (``deeplab/core/feature_extractor.py`` over slim's
``nets/mobilenet/mobilenet_v2.py``): up to ``expanded_conv_16`` (no final 1280-channel conv), TensorFlow 'SAME'
padding, BatchNorm eps 1e-3, ReLU6. Channels are the depth multiplier's, rounded to multiples of 8 at 1.0 but not at
all below it (DeepLab's ``divisible_by=1``, unlike slim's ImageNet MobileNetV2-0.5); expansions are six times the
input rounded to 8."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...models.backbones.base import Backbone
from .layers import SameConv2d, bn
from .strides import stride_plan

# (expansion factor, output channels at depth multiplier 1, stride) of expanded_conv, expanded_conv_1 ... _16.
_UNITS = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1), (6, 64, 2), (6, 64, 1),
          (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1), (6, 160, 2), (6, 160, 1), (6, 160, 1),
          (6, 320, 1)]  # fmt: skip
LOW_UNIT = 2  # expanded_conv_2's depthwise output ("layer_4/depthwise_output"): stride 4
AUX_UNIT = 12  # expanded_conv_12, the last unit at stride 16 before the 160-channel ones


def make_divisible(value: float, divisor: int, minimum: int | None = None) -> int:
    """slim's ``_make_divisible``: the nearest multiple of ``divisor`` (at least ``minimum``), one step more when
    rounding lost over 10%."""
    minimum = minimum or divisor
    rounded = max(minimum, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, stride: int = 1, dilation: int = 1,
                 groups: int = 1, activation: bool = True):  # fmt: skip
        layers = [SameConv2d(in_channels, out_channels, kernel, stride=stride, dilation=dilation, groups=groups),
                  bn(out_channels)]  # fmt: skip
        super().__init__(*layers, *([nn.ReLU6()] if activation else []))


class ExpandedConv(nn.Module):
    """slim's ``expanded_conv``: 1x1 expand (absent when the expansion is the input's width) + BN + ReLU6, depthwise
    3x3 + BN + ReLU6, 1x1 project + BN; the input added back at stride 1 when the widths match."""

    def __init__(self, in_channels: int, expansion: int, out_channels: int, *, stride: int, dilation: int):
        super().__init__()
        self.expand = ConvBNReLU6(in_channels, expansion, 1) if expansion > in_channels else None
        self.depthwise = ConvBNReLU6(expansion, expansion, 3, stride=stride, dilation=dilation, groups=expansion)
        self.project = ConvBNReLU6(expansion, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (output, the depthwise output: Google's decoder taps it)."""
        depthwise = self.depthwise(x if self.expand is None else self.expand(x))
        out = self.project(depthwise)
        return (out + x if self.residual else out), depthwise


class GoogleMobileNetV2(Backbone):
    """``stem`` (3x3/2 conv + BN + ReLU6) and ``units`` (expanded_conv ... expanded_conv_16). Features: "low" the
    depthwise output of expanded_conv_2 (144 channels at 1.0, stride 4), "aux" expanded_conv_12's output, "out" the
    last unit's (320 at 1.0)."""

    def __init__(self, depth_multiplier: float = 1.0, *, output_stride: int, multi_grid: Sequence[int] | None = None,
                 first_block: str = "previous"):  # fmt: skip
        super().__init__()
        if multi_grid is not None or first_block != "previous":
            raise ConfigError("Google's MobileNetV2 has no multi_grid and dilates by Google's rule only")
        divisor = 8 if depth_multiplier == 1.0 else 1  # what DeepLab's feature extractor passes slim

        def width(channels: int) -> int:
            return make_divisible(channels * depth_multiplier, divisor)

        plan = stride_plan([2] + [stride for _, _, stride in _UNITS], output_stride, name="mobilenet_v2_google")
        (stem_stride, _), *unit_plan = plan
        self.stem = ConvBNReLU6(3, width(32), 3, stride=stem_stride)
        units, in_channels, stride, strides = [], width(32), stem_stride, []
        for (factor, channels, _), (unit_stride, dilation) in zip(_UNITS, unit_plan):
            expansion = make_divisible(in_channels * factor, 8) if factor > 1 else in_channels
            units.append(ExpandedConv(in_channels, expansion, width(channels), stride=unit_stride, dilation=dilation))
            in_channels, stride = width(channels), stride * unit_stride
            strides.append(stride)
        self.units = nn.ModuleList(units)
        self.channels = {"low": units[LOW_UNIT].depthwise[0].out_channels, "aux": units[AUX_UNIT].project[0].out_channels,
                         "out": in_channels}  # fmt: skip
        self.strides = {"low": strides[LOW_UNIT], "aux": strides[AUX_UNIT], "out": output_stride}
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)
        features = {}
        for index, unit in enumerate(self.units):
            x, depthwise = unit(x)
            if index == LOW_UNIT:
                features["low"] = depthwise
            if index == AUX_UNIT:
                features["aux"] = x
        features["out"] = x
        return features
