"""Xception-41/65/71 as Google's DeepLab builds them (``research/deeplab/core/xception.py``): the "aligned" Xception
of the DeepLabV3+ paper. A unit is three separable convs (depthwise 3x3 + BN, pointwise 1x1 + BN), each after a
ReLU and with nothing between its depthwise and pointwise parts, its stride in the third; the exit flow's last unit
instead has BN + ReLU after both parts, no pre-activation and no shortcut. Backbone BatchNorms use eps 1e-3."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.backbones.base import Backbone
from .layers import bn
from .strides import stride_plan

# (flow, block, units, depths of the three separable convs, stride, shortcut); the exit flow's last block is built
# with activations inside its separable convs. The decoder taps separable_conv2 of the unit named by LOW_TAP.
_ENTRY_65 = [("entry_flow", 1, 1, (128,) * 3, 2, "conv"), ("entry_flow", 2, 1, (256,) * 3, 2, "conv"),
             ("entry_flow", 3, 1, (728,) * 3, 2, "conv")]  # fmt: skip
_ENTRY_71 = [("entry_flow", 1, 1, (128,) * 3, 2, "conv"), ("entry_flow", 2, 1, (256,) * 3, 1, "conv"),
             ("entry_flow", 3, 1, (256,) * 3, 2, "conv"), ("entry_flow", 4, 1, (728,) * 3, 1, "conv"),
             ("entry_flow", 5, 1, (728,) * 3, 2, "conv")]  # fmt: skip
_EXIT = [("exit_flow", 1, 1, (728, 1024, 1024), 2, "conv"), ("exit_flow", 2, 1, (1536, 1536, 2048), 1, "none")]
BLOCKS = {
    41: _ENTRY_65 + [("middle_flow", 1, 8, (728,) * 3, 1, "sum")] + _EXIT,
    65: _ENTRY_65 + [("middle_flow", 1, 16, (728,) * 3, 1, "sum")] + _EXIT,
    71: _ENTRY_71 + [("middle_flow", 1, 16, (728,) * 3, 1, "sum")] + _EXIT,
}
LOW_TAP = {41: ("entry_flow", 2), 65: ("entry_flow", 2), 71: ("entry_flow", 3)}


def unit_names(depth: int) -> list[str]:
    """Google's scope of each unit, in order: ``entry_flow/block1/unit_1`` ..."""
    return [f"{flow}/block{block}/unit_{unit}" for flow, block, units, *_ in BLOCKS[depth] for unit in range(1, units + 1)]


class SeparableConv(nn.Module):
    """Depthwise 3x3 + BN, pointwise 1x1 + BN; ReLU after each when ``activations`` (else none: the unit puts one
    before). A strided depthwise is padded by its reach on both sides, as Google's ``fixed_padding``."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, dilation: int, activations: bool):
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                                   groups=in_channels, bias=False)  # fmt: skip
        self.depthwise_bn = bn(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.pointwise_bn = bn(out_channels)
        self.activations = activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_bn(self.depthwise(x))
        if self.activations:
            x = F.relu(x)
        x = self.pointwise_bn(self.pointwise(x))
        return F.relu(x) if self.activations else x


class XceptionUnit(nn.Module):
    """Three separable convs and a shortcut ("conv": 1x1 + BN at the unit's stride, "sum": the input, "none")."""

    def __init__(self, in_channels: int, depths: Sequence[int], *, stride: int, dilations: Sequence[int],
                 shortcut: str, activations: bool):  # fmt: skip
        super().__init__()
        channels = [in_channels, *depths]
        self.convs = nn.ModuleList(
            SeparableConv(channels[i], channels[i + 1], stride=stride if i == 2 else 1, dilation=dilations[i],
                          activations=activations)
            for i in range(3)
        )  # fmt: skip
        self.shortcut_kind = shortcut
        if shortcut == "conv":
            self.shortcut = nn.Conv2d(in_channels, depths[-1], 1, stride=stride, bias=False)
            self.shortcut_bn = bn(depths[-1])
        self.pre_activation = not activations

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (output, separable_conv2's output: the decoder's tap where this unit is Google's)."""
        h, tap = x, None
        for index, conv in enumerate(self.convs):
            h = conv(F.relu(h) if self.pre_activation else h)
            if index == 1:
                tap = h
        if self.shortcut_kind == "conv":
            h = h + self.shortcut_bn(self.shortcut(x))
        elif self.shortcut_kind == "sum":
            h = h + x
        return h, tap


class GoogleXception(Backbone):
    """Xception-``depth`` (41, 65 or 71): ``stem`` (3x3/2 conv 32 + BN + ReLU, 3x3 conv 64 + BN + ReLU), then the
    units of ``BLOCKS`` in order. Features: "low" the decoder's tap (256 channels, stride 4), "aux" the exit flow's
    first block (1024), "out" its last (2048, after ReLU)."""

    def __init__(self, depth: int, *, output_stride: int, multi_grid: Sequence[int] | None = None,
                 first_block: str = "previous"):  # fmt: skip
        super().__init__()
        if first_block != "previous":
            raise ConfigError(f"xception{depth}_google dilates as Google's code does (the 'previous' rule), not "
                              f"{first_block!r}")  # fmt: skip
        if multi_grid is not None and len(multi_grid) != 3:
            raise ConfigError(f"multi_grid {tuple(multi_grid)} needs three values (the exit flow's separable convs)")
        blocks = [(flow, block, stride, depths, kind) for flow, block, units, depths, stride, kind in BLOCKS[depth]
                  for _ in range(units)]  # fmt: skip
        # The stem's stride 2 comes first: the units reach the rest.
        plan = stride_plan([stride for _, _, stride, _, _ in blocks], output_stride // 2, name=f"xception{depth}_google")
        self.stem = nn.Sequential(
            nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), bn(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), bn(64), nn.ReLU(),
        )  # fmt: skip
        units, in_channels, stride = [], 64, 2
        self.low_unit = self.aux_unit = 0
        for index, ((flow, block, _, depths, kind), (unit_stride, dilation)) in enumerate(zip(blocks, plan)):
            last = index == len(blocks) - 1
            grid = multi_grid if last and multi_grid is not None else (1, 1, 1)
            units.append(XceptionUnit(in_channels, depths, stride=unit_stride, dilations=[dilation * g for g in grid],
                                      shortcut=kind, activations=last))  # fmt: skip
            in_channels, stride = depths[-1], stride * unit_stride
            if (flow, block) == LOW_TAP[depth]:
                self.low_unit, low_stride = index, stride // unit_stride  # its tap precedes its stride
            if (flow, block) == ("exit_flow", 1):
                self.aux_unit, aux_stride = index, stride
        self.units = nn.ModuleList(units)
        self.channels = {"low": 256, "aux": 1024, "out": 2048}
        self.strides = {"low": low_stride, "aux": aux_stride, "out": output_stride}
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)
        features = {}
        for index, unit in enumerate(self.units):
            x, tap = unit(x)
            if index == self.low_unit:
                features["low"] = tap
            if index == self.aux_unit:
                features["aux"] = x
        features["out"] = x
        return features
