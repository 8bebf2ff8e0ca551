"""DRN-D-54, the Dilated Residual Network of Yu, Koltun and Funkhouser ("Dilated Residual Networks", CVPR 2017;
fyu/drn), as jfzhang95/pytorch-deeplab-xception builds it for DeepLabV3+ (``DeepLab(backbone='drn')``).

DRN reaches stride 8 with no stride beyond it: the two stages after stride 8 are dilated (2, then 4) instead of
strided, and two plain 3x3 conv layers without shortcut (dilation 2, then 1) follow to remove the gridding that the
dilation leaves. Its output stride is therefore fixed at 8; jfzhang95's ``DeepLab`` sets ``output_stride = 8`` for
DRN whatever its ``--out-stride`` says, so its ASPP rates are also the stride-8 ones (12, 24, 36).

Layers (channels, output stride; D-54's block counts):
  layer0  7x7 conv 3->16, BN, ReLU                               16, 1
  layer1  3x3 conv 16->16, BN, ReLU                              16, 1
  layer2  3x3 conv 16->32 stride 2, BN, ReLU                     32, 2
  layer3  3 bottlenecks, the first strided                      256, 4   -> "low" (jfzhang95's low-level feature)
  layer4  4 bottlenecks, the first strided                      512, 8
  layer5  6 bottlenecks, dilation 2 (every block)              1024, 8   -> "aux"
  layer6  3 bottlenecks, dilation 4 (every block)              2048, 8
  layer7  3x3 conv 2048->512 dilation 2, BN, ReLU (no shortcut)  512, 8
  layer8  3x3 conv 512->512, BN, ReLU (no shortcut)              512, 8   -> "out" (ASPP input)
Its bottlenecks are torchvision's (stride and dilation on the 3x3, padding = dilation; every stage's first block has
a 1x1 conv + BN shortcut, since each changes the width), so their state-dict keys are torchvision's ResNet keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck

from ...errors import ConfigError
from ...models.backbones.base import Backbone


class ConvLayer(nn.Module):
    """DRN-D's single-conv layers: conv (no bias, "same" padding for its dilation) -> BN -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, dilation: int = 1):
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _bottlenecks(in_channels: int, planes: int, count: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    """One residual stage: ``count`` bottlenecks of width ``planes`` (``4 * planes`` out), all at ``dilation`` (DRN
    builds its dilated stages with ``new_level=False``: the first block too)."""
    out_channels = planes * Bottleneck.expansion
    shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                             nn.BatchNorm2d(out_channels))  # fmt: skip
    blocks = [Bottleneck(in_channels, planes, stride=stride, downsample=shortcut, dilation=dilation)]
    blocks += [Bottleneck(out_channels, planes, dilation=dilation) for _ in range(1, count)]
    return nn.Sequential(*blocks)


class DRNBackbone(Backbone):
    """DRN-D with bottleneck blocks (``blocks``: the counts of layer3-6; D-54 (3, 4, 6, 3), D-105 (3, 4, 23, 3)).

    Output stride 8 only. Returns {"low": layer3 (256 ch, stride 4), "aux": layer5 (1024 ch, stride 8, the stage
    that plays ResNet's layer3), "out": layer8 (512 ch, stride 8)}.
    """

    def __init__(self, *, blocks: Sequence[int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.layer0 = ConvLayer(3, 16, 7)
        self.layer1 = ConvLayer(16, 16, 3)
        self.layer2 = ConvLayer(16, 32, 3, stride=2)
        self.layer3 = _bottlenecks(32, 64, blocks[0], stride=2)
        self.layer4 = _bottlenecks(256, 128, blocks[1], stride=2)
        self.layer5 = _bottlenecks(512, 256, blocks[2], dilation=2)
        self.layer6 = _bottlenecks(1024, 512, blocks[3], dilation=4)
        self.layer7 = ConvLayer(2048, 512, 3, dilation=2)
        self.layer8 = ConvLayer(512, 512, 3)
        for module in self.modules():  # DRN's init: He normal over the fan-out; BN at identity
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        self.channels = {"low": 256, "aux": 1024, "out": 512}
        self.strides = {"low": 4, "aux": 8, "out": 8}
        self.output_stride = 8

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps."""
        x = self._stage(self.layer2, self._stage(self.layer1, self._stage(self.layer0, images)))
        low = self._stage(self.layer3, x)
        aux = self._stage(self.layer5, self._stage(self.layer4, low))
        x = self._stage(self.layer6, aux)
        out = self._stage(self.layer8, self._stage(self.layer7, x))
        return {"low": low, "aux": aux, "out": out}


def drn_d_54(
    *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str | None = None
) -> DRNBackbone:
    """DRN-D-54. Its dilation is part of the architecture: only ``output_stride=8`` (its registry entry says so; its
    stages after stride 8 are dilated, not strided, and jfzhang95's DeepLab builds it at 8 whatever its --out-stride),
    no multi-grid or dilation rule."""
    if multi_grid is not None or first_block is not None:
        raise ConfigError("drn_d_54 has its own fixed dilations (layer5 2, layer6 4, layer7 2): no multi_grid or "
                          "first_block_dilation")  # fmt: skip
    return DRNBackbone(blocks=(3, 4, 6, 3))
