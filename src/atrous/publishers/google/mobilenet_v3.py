"""Google's DeepLab MobileNetV3 (large and small "seg" variants) and EdgeTPU-MobileNet backbones
(``deeplab/core/feature_extractor.py`` over slim's ``nets/mobilenet/mobilenet_v3.py``): TensorFlow 'SAME' padding,
BatchNorm eps 1e-3, hard-swish ``x * relu6(x + 3) / 6``, squeeze-and-excite gated by ``relu6(x + 3) * 0.16667`` (slim's
constant, not 1/6). The "seg" variants halve the last block's channels (large: 160 -> 80, expansions 336/480/480,
final 1x1 conv 480; small: 96 -> 48, 144/288/288, 288). EdgeTPU's first blocks are "fused": a full kxk conv expands
(carrying the stride), no depthwise."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.backbones.base import Backbone
from .layers import SE_GATE, SameConv2d, bn
from .mobilenet_v2 import make_divisible
from .strides import stride_plan


def hard_swish(x: torch.Tensor) -> torch.Tensor:
    return x * F.relu6(x + 3.0) * (1.0 / 6.0)


# A layer: ("conv", out, kernel, stride, activation) or (kind, expansion, out, kernel, stride, activation, SE,
# residual) with kind "ir" (expand 1x1, depthwise kxk, project) or "fused" (expand kxk at the stride, project);
# expansion: a factor of the input's width, rounded to 8.
_RELU, _HSWISH = "relu", "hswish"
LARGE_SEG = [
    ("conv", 16, 3, 2, _HSWISH),
    ("ir", 1, 16, 3, 1, _RELU, False, True), ("ir", 4, 24, 3, 2, _RELU, False, True),
    ("ir", 3, 24, 3, 1, _RELU, False, True), ("ir", 3, 40, 5, 2, _RELU, True, True),
    ("ir", 3, 40, 5, 1, _RELU, True, True), ("ir", 3, 40, 5, 1, _RELU, True, True),
    ("ir", 6, 80, 3, 2, _HSWISH, False, True), ("ir", 2.5, 80, 3, 1, _HSWISH, False, True),
    ("ir", 184 / 80, 80, 3, 1, _HSWISH, False, True), ("ir", 184 / 80, 80, 3, 1, _HSWISH, False, True),
    ("ir", 6, 112, 3, 1, _HSWISH, True, True), ("ir", 6, 112, 3, 1, _HSWISH, True, True),
    ("ir", 336 / 112, 80, 5, 2, _HSWISH, True, True), ("ir", 480 / 80, 80, 5, 1, _HSWISH, True, True),
    ("ir", 480 / 80, 80, 5, 1, _HSWISH, True, True),
    ("conv", 480, 1, 1, _HSWISH),
]  # fmt: skip
SMALL_SEG = [
    ("conv", 16, 3, 2, _HSWISH),
    ("ir", 1, 16, 3, 2, _RELU, True, True), ("ir", 72 / 16, 24, 3, 2, _RELU, False, True),
    ("ir", 88 / 24, 24, 3, 1, _RELU, False, True), ("ir", 4, 40, 5, 2, _HSWISH, True, True),
    ("ir", 6, 40, 5, 1, _HSWISH, True, True), ("ir", 6, 40, 5, 1, _HSWISH, True, True),
    ("ir", 3, 48, 5, 1, _HSWISH, True, True), ("ir", 3, 48, 5, 1, _HSWISH, True, True),
    ("ir", 144 / 48, 48, 5, 2, _HSWISH, True, True), ("ir", 288 / 48, 48, 5, 1, _HSWISH, True, True),
    ("ir", 288 / 48, 48, 5, 1, _HSWISH, True, True),
    ("conv", 288, 1, 1, _HSWISH),
]  # fmt: skip
EDGETPU = [
    ("conv", 32, 3, 2, _RELU),
    ("fused", 1, 16, 3, 1, _RELU, False, True), ("fused", 8, 32, 3, 2, _RELU, False, True),
    *[("fused", 4, 32, 3, 1, _RELU, False, True)] * 3, ("fused", 8, 48, 3, 2, _RELU, False, True),
    *[("fused", 4, 48, 3, 1, _RELU, False, True)] * 3, ("ir", 8, 96, 3, 2, _RELU, False, True),
    *[("ir", 4, 96, 3, 1, _RELU, False, True)] * 3, ("ir", 8, 96, 3, 1, _RELU, False, False),
    *[("ir", 4, 96, 3, 1, _RELU, False, True)] * 3, ("ir", 8, 160, 5, 2, _RELU, False, True),
    *[("ir", 4, 160, 5, 1, _RELU, False, True)] * 3, ("ir", 8, 192, 3, 1, _RELU, False, True),
    ("conv", 1280, 1, 1, _RELU),
]  # fmt: skip
# variant: (layers, TF scope, the stride-4 and stride-8 taps: a layer whose depthwise output, or else output, is read)
VARIANTS = {
    "large_seg": (LARGE_SEG, "MobilenetV3", 3, 6),
    "small_seg": (SMALL_SEG, "MobilenetV3", 1, 3),
    "edgetpu": (EDGETPU, "MobilenetEdgeTPU", 2, 6),
}


def _activation(name: str) -> nn.Module:
    return nn.ReLU() if name == _RELU else _HardSwish()


class _HardSwish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return hard_swish(x)


class ConvBNAct(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, activation: str | None, *, stride: int = 1,
                 dilation: int = 1, groups: int = 1):  # fmt: skip
        layers = [SameConv2d(in_channels, out_channels, kernel, stride=stride, dilation=dilation, groups=groups),
                  bn(out_channels)]  # fmt: skip
        super().__init__(*layers, *([_activation(activation)] if activation else []))


class SqueezeExcite(nn.Module):
    """slim's ``squeeze_excite`` (squeeze factor 4, rounded to 8): global mean -> 1x1 (bias) + ReLU -> 1x1 (bias)
    -> relu6(x + 3) * 0.16667, multiplying the input."""

    def __init__(self, channels: int):
        super().__init__()
        squeezed = make_divisible(channels / 4, 8)
        self.squeeze = nn.Conv2d(channels, squeezed, 1)
        self.excite = nn.Conv2d(squeezed, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.excite(F.relu(self.squeeze(x.mean(dim=(2, 3), keepdim=True))))
        return x * (F.relu6(gate + 3.0) * SE_GATE)


class ExpandedConv(nn.Module):
    """slim's ``expanded_conv`` as MobileNetV3 uses it: expand (1x1, or kxk carrying the stride when fused; absent
    when the expansion is the input's width) + BN + act; depthwise kxk + BN + act (not when fused); squeeze-excite;
    1x1 project + BN; the input added back at stride 1 when the widths match (and the layer has a residual)."""

    def __init__(self, in_channels: int, expansion: int, out_channels: int, *, kernel: int, stride: int, dilation: int,
                 activation: str, se: bool, residual: bool, fused: bool):  # fmt: skip
        super().__init__()
        self.expand = None
        if expansion > in_channels:
            self.expand = ConvBNAct(in_channels, expansion, kernel if fused else 1, activation,
                                    stride=stride if fused else 1)  # fmt: skip
        self.depthwise = None if fused else ConvBNAct(expansion, expansion, kernel, activation, stride=stride,
                                                      dilation=dilation, groups=expansion)  # fmt: skip
        self.squeeze_excite = SqueezeExcite(expansion) if se else None
        self.project = ConvBNAct(expansion, out_channels, 1, None)
        self.residual = residual and stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (output, the depthwise output, or the expansion's when fused: Google's decoder taps it)."""
        h = x if self.expand is None else self.expand(x)
        if self.depthwise is not None:
            h = self.depthwise(h)
        tap = h
        if self.squeeze_excite is not None:
            h = self.squeeze_excite(h)
        out = self.project(h)
        return (out + x if self.residual else out), tap


class GoogleMobileNetV3(Backbone):
    """``variant``: "large_seg", "small_seg" or "edgetpu" (``depth_multiplier`` 1.0 or 0.75: EdgeTPU-DeepLab-slim).
    Features: "low" a stride-4 tap, "aux" the stride-8 one (the depthwise output Google's MobileNetV3 decoder reads:
    layer_7 of the large, layer_4 of the small), "out" the last 1x1 conv's output."""

    def __init__(self, variant: str, depth_multiplier: float = 1.0, *, output_stride: int,
                 multi_grid: Sequence[int] | None = None, first_block: str = "previous"):  # fmt: skip
        super().__init__()
        if multi_grid is not None or first_block != "previous":
            raise ConfigError("Google's MobileNetV3 has no multi_grid and dilates by Google's rule only")
        layers, self.scope, low, aux = VARIANTS[variant]
        # The fused layers keep their stride whatever the output stride (Google binds it to their expansion conv):
        # output strides below their reach would not be Google's.
        plan = stride_plan([layer[3] if layer[0] == "conv" else layer[4] for layer in layers], output_stride,
                           name=f"mobilenet_{variant}_google")  # fmt: skip
        units, in_channels, stride, strides = [], 3, 1, []
        for layer, (layer_stride, dilation) in zip(layers, plan):
            if layer[0] == "conv":
                _, out, kernel, _, activation = layer
                out = make_divisible(out * depth_multiplier, 8)
                units.append(ConvBNAct(in_channels, out, kernel, activation, stride=layer_stride))
            else:
                kind, factor, out, kernel, _, activation, se, residual = layer
                out = make_divisible(out * depth_multiplier, 8)
                expansion = make_divisible(in_channels * factor, 8)
                fused = kind == "fused"
                if fused and layer_stride != layer[4]:
                    raise ConfigError(f"mobilenet_{variant}_google: output stride {output_stride} would drop a fused "
                                      "layer's stride, which Google's code never does")  # fmt: skip
                units.append(ExpandedConv(in_channels, expansion, out, kernel=kernel, stride=layer_stride,
                                          dilation=dilation, activation=activation, se=se, residual=residual,
                                          fused=fused))  # fmt: skip
            in_channels, stride = out, stride * layer_stride
            strides.append(stride)
        self.units = nn.ModuleList(units)
        self.taps = {"low": low, "aux": aux}
        self.channels = {name: self._tap_channels(index) for name, index in self.taps.items()} | {"out": in_channels}
        self.strides = {"low": strides[low], "aux": strides[aux], "out": output_stride}
        self.output_stride = output_stride

    def _tap_channels(self, index: int) -> int:
        unit = self.units[index]
        part = unit.depthwise if unit.depthwise is not None else unit.expand or unit.project
        return part[0].out_channels

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x, features = images, {}
        for index, unit in enumerate(self.units):
            if isinstance(unit, ExpandedConv):
                x, tap = unit(x)
            else:
                x = tap = unit(x)
            for name, at in self.taps.items():
                if at == index:
                    features[name] = tap
        features["out"] = x
        return features
