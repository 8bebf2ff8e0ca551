"""ResNet-v1-50/101 "beta" as Google's DeepLab builds it (``deeplab/core/resnet_v1_beta.py``): three 3x3 convs for
the 7x7 stem (64/2, 64, 128), a 3x3/2 max pool ('SAME'), then bottleneck units whose stride sits in the *last* unit
of each block (in its 3x3 conv; the identity shortcut of such a unit subsamples). BatchNorm eps 1e-5."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.backbones.base import Backbone
from .layers import same_max_pool
from .strides import stride_plan

RESNET_BN_EPS = 1e-5  # feature_extractor.py's for the ResNets
_UNITS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _conv_bn(in_channels: int, out_channels: int, kernel: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    # slim's conv2d_same: a strided 3x3 is padded by its reach on both sides, as a stride-1 one is.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2 * dilation,
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels, eps=RESNET_BN_EPS),
    )  # fmt: skip


class Bottleneck(nn.Module):
    """1x1 + BN + ReLU, 3x3 (stride, dilation) + BN + ReLU, 1x1 + BN; plus the shortcut (1x1 conv + BN where the
    width changes, else the input taken at the stride); ReLU after the sum."""

    def __init__(self, in_channels: int, width: int, *, stride: int, dilation: int):
        super().__init__()
        self.conv1 = _conv_bn(in_channels, width, 1)
        self.conv2 = _conv_bn(width, width, 3, stride=stride, dilation=dilation)
        self.conv3 = _conv_bn(width, width * 4, 1)
        self.shortcut = _conv_bn(in_channels, width * 4, 1, stride=stride) if in_channels != width * 4 else None
        self.stride = stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (output, conv3's output before the sum: the decoder's tap where this unit is Google's)."""
        residual = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        shortcut = x[..., :: self.stride, :: self.stride] if self.shortcut is None else self.shortcut(x)
        return F.relu(shortcut + residual), residual


class GoogleResNetBeta(Backbone):
    """ResNet-v1-``depth``-beta. Features: "low" the residual branch of block1's second unit (Google's
    ``block1/unit_2/bottleneck_v1/conv3``, 256 channels, stride 4), "aux" block3's output, "out" block4's (2048)."""

    def __init__(self, depth: int, *, output_stride: int, multi_grid: Sequence[int] | None = None,
                 first_block: str = "previous"):  # fmt: skip
        super().__init__()
        if first_block != "previous":
            raise ConfigError(f"resnet{depth}_beta_google dilates as Google's code does (the 'previous' rule)")
        grid = tuple(multi_grid) if multi_grid is not None else (1, 1, 1)
        if len(grid) != 3:
            raise ConfigError(f"multi_grid {grid} needs three values (block4's units)")
        self.stem = nn.Sequential(
            _conv_bn(3, 64, 3, stride=2), nn.ReLU(), _conv_bn(64, 64, 3), nn.ReLU(), _conv_bn(64, 128, 3), nn.ReLU(),
        )  # fmt: skip
        # (block, unit): width, nominal stride (in each block's last unit; block4 has none), unit rate (multi-grid).
        units = [(block, unit, 64 * 2**block, 2 if unit == count - 1 and block < 3 else 1, grid[unit] if block == 3 else 1)
                 for block, count in enumerate(_UNITS[depth]) for unit in range(count)]  # fmt: skip
        plan = stride_plan([stride for *_, stride, _ in units], output_stride // 4, name=f"resnet{depth}_beta_google")
        self.blocks = nn.ModuleList(nn.ModuleList() for _ in range(4))
        in_channels = 128
        for (block, _, width, _, unit_rate), (stride, dilation) in zip(units, plan):
            self.blocks[block].append(Bottleneck(in_channels, width, stride=stride, dilation=dilation * unit_rate))
            in_channels = width * 4
        strides = [4 * s for s in _block_strides(plan, units)]
        self.channels = {"low": 256, "aux": 1024, "out": 2048}
        self.strides = {"low": 4, "aux": strides[2], "out": output_stride}
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = same_max_pool(self.stem(images), 3, 2)
        features = {}
        for index, block in enumerate(self.blocks):
            for unit_index, unit in enumerate(block):
                x, residual = unit(x)
                if (index, unit_index) == (0, 1):
                    features["low"] = residual
            if index == 2:
                features["aux"] = x
        features["out"] = x
        return features


def _block_strides(plan: list[tuple[int, int]], units: list[tuple]) -> list[int]:
    """The running stride (over the units) at the end of each block."""
    stride, ends = 1, {}
    for (block, *_), (unit_stride, _) in zip(units, plan):
        stride *= unit_stride
        ends[block] = stride
    return [ends[block] for block in range(4)]
