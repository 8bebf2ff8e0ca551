"""The Xception of VainF/DeepLabV3Plus-Pytorch (its ``network/backbone/xception.py``): Chollet's Xception as Cadene's
pretrainedmodels ports it from Keras, dilated the way VainF's ``replace_stride_with_dilation`` does, and cut where
VainF's DeepLab reads it.

Layout (the stride after each part, undilated):
- stem: conv1 3x3/2 (32 ch) and conv2 3x3 (64 ch), both UNPADDED, each followed by BN and ReLU [2]
- entry flow: block1 (128 ch; no ReLU before its first conv) [4], block2 (256) [8], block3 (728) [16]
- middle flow: block4-block11, three separable convs of 728 channels each and an identity shortcut
- exit flow: block12 (728 -> 1024; its LAST conv grows the channels) [32], conv3 (1536) + BN + ReLU, conv4 (2048).
A block is (ReLU, separable 3x3 conv, BN) repeated, then a 3x3/2 max pool (padding 1) if it is strided; its shortcut
is a 1x1 conv (with the block's stride) + BN where the shape changes, else the identity. A separable conv is a
depthwise 3x3 then a pointwise 1x1, nothing between, no bias.

The names are the pretrainedmodels/VainF ones where they name something (conv1-conv4, bn1-bn3, block1-block12);
inside a block the (ReLU, conv, BN) triples are ``units`` and the 1x1 projection is ``shortcut`` (VainF keeps them in
one positional ``rep`` Sequential with ``skip``/``skipbn``; ``formats/vainf.py`` renames).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError, DataError
from ...models.backbones.base import Backbone

# (in channels, out channels, separable convs, stride, ReLU before the first conv, the first conv grows the channels)
_BLOCKS = (
    (64, 128, 2, 2, False, True),
    (128, 256, 2, 2, True, True),
    (256, 728, 2, 2, True, True),
    *((728, 728, 3, 1, True, True),) * 8,
    (728, 1024, 2, 2, True, False),
)  # fmt: skip
_LOW, _AUX = 1, 11  # block1: the stride-4 feature VainF's V3+ reads; block11: the end of the middle flow


class SeparableConv(nn.Module):
    """Depthwise 3x3 (``dilation``, ``padding``) then pointwise 1x1, no bias, nothing between.

    ``padding`` is explicit because VainF's exit-flow convs keep padding 1 whatever their dilation."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int, padding: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, padding=padding, dilation=dilation, groups=in_channels,
                                   bias=False)  # fmt: skip
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class SeparableUnit(nn.Module):
    """[ReLU] -> separable 3x3 conv ('same' padding at its dilation) -> BN."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int, relu: bool) -> None:
        super().__init__()
        self.relu = relu
        self.conv = SeparableConv(in_channels, out_channels, dilation=dilation, padding=dilation)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: a block's input is also its shortcut.
        return self.bn(self.conv(F.relu(x) if self.relu else x))


class ConvBN(nn.Module):
    """1x1 conv (no bias) -> BN: a block's projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class XceptionBlock(nn.Module):
    """``repeats`` separable units, then a 3x3/2 max pool (padding 1) when strided, plus the shortcut.

    grow_first: the first unit changes the channel count (else the last one does, as in block12).
    relu_first: a ReLU before the first unit (all blocks but block1, which follows the stem's ReLU).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        repeats: int,
        stride: int,
        dilation: int,
        relu_first: bool,
        grow_first: bool,
    ) -> None:
        super().__init__()
        if grow_first:
            widths = [(in_channels, out_channels)] + [(out_channels, out_channels)] * (repeats - 1)
        else:
            widths = [(in_channels, in_channels)] * (repeats - 1) + [(in_channels, out_channels)]
        self.units = nn.ModuleList(
            SeparableUnit(a, b, dilation=dilation, relu=index > 0 or relu_first) for index, (a, b) in enumerate(widths)
        )
        self.pool = nn.MaxPool2d(3, stride, padding=1) if stride > 1 else nn.Identity()
        projects = in_channels != out_channels or stride > 1
        self.shortcut = ConvBN(in_channels, out_channels, stride=stride) if projects else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for unit in self.units:
            out = unit(out)
        return self.pool(out) + self.shortcut(x)


class XceptionVainFBackbone(Backbone):
    """VainF's Xception up to conv4: "low" = block1 (128 ch, stride 4), "aux" = block11 (728 ch, the middle flow's
    end: stride 16, 8 at OS8), "out" = conv4 (2048 ch).

    Output stride (VainF's ``replace_stride_with_dilation``, [F, F, F, T] at OS16 and [F, F, T, T] at OS8; OS32 is the
    undilated network): a strided block that would take the network past ``output_stride`` loses its stride (no pool,
    a stride-1 shortcut) and from it on every block's convs, its first included, are dilated by the strides given
    up, with 'same' padding. conv3 and conv4 take the final dilation but keep padding 1 (VainF passes padding 1
    positionally and the dilation beside it), so each shrinks the map by 2 * (dilation - 1) pixels: "out" is 4 pixels
    smaller than block11's map at OS16, 12 at OS8; ``minimum_input_size()`` is the smallest image side it takes.
    "out" is conv4's output with no BN or ReLU: VainF's IntermediateLayerGetter stops at conv4, so the ImageNet model's
    bn4 is not part of its DeepLab.
    """

    def __init__(self, *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str = "stage"):
        super().__init__()
        if multi_grid is not None:
            raise ConfigError(f"multi_grid {tuple(multi_grid)} is not an option of xception_vainf (VainF's Xception "
                              "has no multi-grid)")  # fmt: skip
        if first_block != "stage":
            raise ConfigError(f"xception_vainf dilates a dilated block's first conv with the block's own rate (VainF's "
                              f"rule, first_block_dilation 'stage'), got {first_block!r}")  # fmt: skip
        self.conv1 = nn.Conv2d(3, 32, 3, stride=2, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        stride, dilation, strides = 2, 1, {}
        self._pooled: list[bool] = []  # which blocks keep their stride: for minimum_input_size
        for index, (inp, out, repeats, block_stride, relu_first, grow_first) in enumerate(_BLOCKS, start=1):
            if stride * block_stride > output_stride:
                dilation, block_stride = dilation * block_stride, 1
            stride *= block_stride
            block = XceptionBlock(inp, out, repeats=repeats, stride=block_stride, dilation=dilation,
                                  relu_first=relu_first, grow_first=grow_first)  # fmt: skip
            self.add_module(f"block{index}", block)
            self._pooled.append(block_stride > 1)
            strides[index] = stride
        self.exit_dilation = dilation
        self.conv3 = SeparableConv(1024, 1536, dilation=dilation, padding=1)
        self.bn3 = nn.BatchNorm2d(1536)
        self.conv4 = SeparableConv(1536, 2048, dilation=dilation, padding=1)
        self.channels = {"low": 128, "aux": 728, "out": 2048}
        self.strides = {"low": strides[_LOW], "aux": strides[_AUX], "out": stride}
        self.output_stride = output_stride

    def _feature_size(self, size: int) -> int:
        """The side of "out" for an input side of ``size`` pixels (< 1: too small)."""
        size = (size - 3) // 2 + 1 - 2  # the unpadded stem convs
        for pooled in self._pooled:
            size = (size - 1) // 2 + 1 if pooled else size
        return size - 4 * (self.exit_dilation - 1)  # conv3 and conv4

    def minimum_input_size(self) -> int:
        """The smallest image side (pixels) this network gives a feature map for."""
        return next(size for size in range(3, 4096) if self._feature_size(size) >= 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised, H and W >= ``minimum_input_size()`` -> {"low", "aux", "out"}."""
        height, width = images.shape[-2:]
        if min(self._feature_size(int(height)), self._feature_size(int(width))) < 1:
            raise DataError(
                f"xception_vainf at output stride {self.output_stride} needs images of at least "
                f"{self.minimum_input_size()}x{self.minimum_input_size()} pixels (its stem convs are unpadded and its "
                f"exit-flow convs, padding 1 at dilation {self.exit_dilation}, shrink the map), got {height}x{width}"
            )
        x = F.relu(self.bn1(self.conv1(images)))
        x = F.relu(self.bn2(self.conv2(x)))
        features: dict[str, torch.Tensor] = {}
        for index in range(1, len(_BLOCKS) + 1):
            x = self._stage(getattr(self, f"block{index}"), x)
            if index == _LOW:
                features["low"] = x
            elif index == _AUX:
                features["aux"] = x
        x = F.relu(self.bn3(self.conv3(x)))
        features["out"] = self.conv4(x)
        return features


def xception_vainf(
    *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str = "stage"
) -> XceptionVainFBackbone:
    return XceptionVainFBackbone(output_stride=output_stride, multi_grid=multi_grid, first_block=first_block)
