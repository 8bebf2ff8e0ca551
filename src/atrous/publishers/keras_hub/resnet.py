"""KerasHub's ``ResNetBackbone`` as its DeepLabV3 preset builds it (``keras_hub/src/models/resnet/resnet_backbone.py``,
0.32): a 7x7/2 stem conv (no bias), then v1: BN + ReLU; max pool 3x3/2 padded by 1; four stacks of bottlenecks with
the stride in each stack's FIRST block (its 3x3 conv, padded by 1, and its 1x1 shortcut conv). v1 blocks end
BN -> add -> ReLU with a BN'd conv shortcut; v2 (``use_pre_activation``) blocks start BN -> ReLU, the shortcut conv
reads the pre-activated input, and nothing follows the add. BatchNorm eps 1e-5. DeepLabV3 reads each stack's raw
output (P2..P5), never v2's final ``post_bn``. No dilation: output stride 32."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.backbones.base import Backbone

BN_EPS = 1e-5
RESNET50_BLOCKS = (3, 4, 6, 3)
_FILTERS = (64, 128, 256, 512)
_STRIDES = (1, 2, 2, 2)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class Bottleneck(nn.Module):
    """``stack{s}_block{b}``: convs ``conv0`` (shortcut, first block only) ``conv1`` 1x1, ``conv2`` 3x3 (stride),
    ``conv3`` 1x1 (4x); v1 a BN after each, v2 ``bn_pre`` before and BNs after conv1 and conv2 only."""

    def __init__(self, in_channels: int, filters: int, *, stride: int, shortcut: bool, pre_activation: bool):
        super().__init__()
        self.pre_activation = pre_activation
        self.bn_pre = _bn(in_channels) if pre_activation else None
        self.conv0 = nn.Conv2d(in_channels, 4 * filters, 1, stride=stride, bias=False) if shortcut else None
        self.bn0 = _bn(4 * filters) if shortcut and not pre_activation else None
        self.conv1, self.bn1 = nn.Conv2d(in_channels, filters, 1, bias=False), _bn(filters)
        self.conv2, self.bn2 = nn.Conv2d(filters, filters, 3, stride=stride, padding=1, bias=False), _bn(filters)
        self.conv3 = nn.Conv2d(filters, 4 * filters, 1, bias=False)
        self.bn3 = None if pre_activation else _bn(4 * filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = F.relu(self.bn_pre(x)) if self.pre_activation else x
        if self.conv0 is None:
            shortcut = x  # v2 too: the block's input, not its pre-activated one
        else:
            shortcut = self.conv0(inner)
            shortcut = shortcut if self.bn0 is None else self.bn0(shortcut)
        y = F.relu(self.bn1(self.conv1(inner)))
        y = self.conv3(F.relu(self.bn2(self.conv2(y))))
        if self.pre_activation:
            return shortcut + y
        return F.relu(shortcut + self.bn3(y))


class KerasHubResNet(Backbone):
    """``stem_conv`` (+ ``stem_bn`` in v1), ``stacks``. Features: "low" P2 (stack 0, stride 4), "aux" P4, "out" P5."""

    def __init__(self, *, pre_activation: bool, blocks: Sequence[int] = RESNET50_BLOCKS, output_stride: int = 32,
                 multi_grid: Sequence[int] | None = None, first_block: str = "previous"):  # fmt: skip
        super().__init__()
        if output_stride != 32 or multi_grid is not None or first_block != "previous":
            raise ConfigError("KerasHub's ResNet has no dilation (output stride 32) and no multi_grid")
        self.stem_conv = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.stem_bn = None if pre_activation else _bn(64)
        stacks, in_channels = [], 64
        for filters, count, stride in zip(_FILTERS, blocks, _STRIDES):
            stacks.append(nn.Sequential(*(
                Bottleneck(in_channels if b == 0 else 4 * filters, filters, stride=stride if b == 0 else 1,
                           shortcut=b == 0, pre_activation=pre_activation)
                for b in range(count)
            )))  # fmt: skip
            in_channels = 4 * filters
        self.stacks = nn.ModuleList(stacks)
        self.channels = {"low": 4 * _FILTERS[0], "aux": 4 * _FILTERS[2], "out": 4 * _FILTERS[3]}
        self.strides = {"low": 4, "aux": 16, "out": 32}
        self.output_stride = 32

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem_conv(images)
        if self.stem_bn is not None:
            x = F.relu(self.stem_bn(x))
        x = F.max_pool2d(x, 3, 2, padding=1)  # v2 pads a signed map: torch pads with -inf, as KerasHub does
        pyramid = []  # P2..P5
        for stack in self.stacks:
            x = self._stage(stack, x)
            pyramid.append(x)
        return {"low": pyramid[0], "aux": pyramid[2], "out": pyramid[3]}
