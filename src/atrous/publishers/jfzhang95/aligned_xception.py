"""The Aligned Xception-65 of jfzhang95/pytorch-deeplab-xception (``modeling/backbone/xception.py``,
``AlignedXception``), for its DeepLabV3+ files.

The DeepLabV3+ paper's Xception-65: a stem of two 3x3 convs, 20 blocks of three separable convs with a residual
shortcut (entry flow: blocks 1-3, middle flow: blocks 4-19, exit flow: block 20), then three separable convs up to
2048 channels. jfzhang95's version differs from the paper's (TensorFlow DeepLab's, timm's ``xception65``) in ways
that change its outputs, all reproduced here:

- a separable conv is depthwise conv -> BN -> pointwise conv, with no activation between, also in the exit flow;
- every block's ReLU is applied to its input in place, so the shortcut adds ReLU(x), not x;
- the low-level feature is ReLU(block 1's output), 128 channels at stride 4;
- block 20's third separable conv is never dilated (at output stride 8 its first two have dilation 2), and ReLU
  follows block 20;
- BatchNorm has PyTorch's eps (1e-5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from ...models.backbones.base import Backbone

# output stride -> (block 3's stride, block 20's stride, middle flow's dilation, block 20's dilation, exit convs'
# dilation). jfzhang95 builds 16 and 8; at 32 block 20 keeps its stride (its third conv and shortcut stride 2, the
# layout of jfzhang95's own Block class for stride 2, same weights), as in the ImageNet network.
_LAYOUTS = {32: (2, 2, 1, 1, 1), 16: (2, 1, 1, 1, 2), 8: (1, 1, 2, 2, 4)}
_MIDDLE_BLOCKS = range(4, 20)


class SeparableConv(nn.Module):
    """3x3 depthwise conv (padding = dilation) -> BN -> 1x1 pointwise conv; no bias, no activation.

    (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=dilation, dilation=dilation,
                                   groups=in_channels, bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(in_channels)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.bn(self.depthwise(x)))


class XceptionBlock(nn.Module):
    """r = ReLU(x); (separable conv -> BN) three times on r with ReLUs between, plus the shortcut of r: r itself, or
    a strided 1x1 conv + BN (``skip``, ``skip_bn``) where the channels or the stride change.

    channels: the three separable convs' output channels; the last conv holds the stride, and has ``last_dilation``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, int, int],
        *,
        stride: int = 1,
        dilation: int = 1,
        last_dilation: int = 1,
    ) -> None:
        super().__init__()
        inputs = (in_channels, *channels[:2])
        dilations = (dilation, dilation, last_dilation)
        strides = (1, 1, stride)
        for index, (inp, out, d, s) in enumerate(zip(inputs, channels, dilations, strides), start=1):
            self.add_module(f"sepconv{index}", SeparableConv(inp, out, stride=s, dilation=d))
            self.add_module(f"bn{index}", nn.BatchNorm2d(out))
        self.skip: nn.Conv2d | None = None
        if channels[-1] != in_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, channels[-1], 1, stride=stride, bias=False)
            self.skip_bn = nn.BatchNorm2d(channels[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        out = self.bn1(self.sepconv1(x))
        out = self.bn2(self.sepconv2(torch.relu(out)))
        out = self.bn3(self.sepconv3(torch.relu(out)))
        return out + (x if self.skip is None else self.skip_bn(self.skip(x)))


class AlignedXceptionBackbone(Backbone):
    """jfzhang95's Aligned Xception-65 at output stride 8, 16 (its two) or 32.

    Keys: ``conv1``/``bn1``, ``conv2``/``bn2`` (stem), ``block1``-``block20``, ``conv3``-``conv5`` (separable) with
    ``bn3``-``bn5``. "low" = ReLU(block1) (128 ch, stride 4), "aux" = block19, the end of the middle flow (728 ch),
    "out" = ReLU(bn5) (2048 ch, at the output stride).
    """

    def __init__(
        self, *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str | None = None
    ) -> None:
        super().__init__()
        if output_stride not in _LAYOUTS:
            raise ConfigError(f"xception65_jfzhang95 supports output_stride {sorted(_LAYOUTS)}, got {output_stride!r}")
        if multi_grid is not None or first_block is not None:
            raise ConfigError("xception65_jfzhang95 has jfzhang95's own dilation rule: no multi_grid or "
                              "first_block_dilation")  # fmt: skip
        block3_stride, block20_stride, middle, block20_dilation, exit_dilation = _LAYOUTS[output_stride]
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.block1 = XceptionBlock(64, (128, 128, 128), stride=2)
        self.block2 = XceptionBlock(128, (256, 256, 256), stride=2)
        self.block3 = XceptionBlock(256, (728, 728, 728), stride=block3_stride)
        for index in _MIDDLE_BLOCKS:
            self.add_module(f"block{index}", XceptionBlock(728, (728, 728, 728), dilation=middle, last_dilation=middle))
        self.block20 = XceptionBlock(728, (728, 1024, 1024), stride=block20_stride, dilation=block20_dilation)
        self.conv3, self.bn3 = SeparableConv(1024, 1536, dilation=exit_dilation), nn.BatchNorm2d(1536)
        self.conv4, self.bn4 = SeparableConv(1536, 1536, dilation=exit_dilation), nn.BatchNorm2d(1536)
        self.conv5, self.bn5 = SeparableConv(1536, 2048, dilation=exit_dilation), nn.BatchNorm2d(2048)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # jfzhang95's init: N(0, 2 / (k * k * out_channels))
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        entry_stride = 8 * block3_stride
        self.channels = {"low": 128, "aux": 728, "out": 2048}
        self.strides = {"low": 4, "aux": entry_stride, "out": entry_stride * block20_stride}
        self.output_stride = output_stride

    def _exit_convs(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x)
        for conv, bn in ((self.conv3, self.bn3), (self.conv4, self.bn4), (self.conv5, self.bn5)):
            x = torch.relu(bn(conv(x)))
        return x

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised (ImageNet mean/std) -> {"low", "aux", "out"} feature maps."""
        x = torch.relu(self.bn1(self.conv1(images)))
        x = torch.relu(self.bn2(self.conv2(x)))
        low = torch.relu(self._stage(self.block1, x))
        x = self._stage(self.block3, self._stage(self.block2, low))
        for index in _MIDDLE_BLOCKS:
            x = self._stage(getattr(self, f"block{index}"), x)
        aux = x
        out = self._stage(self._exit_convs, self._stage(self.block20, x))
        return {"low": low, "aux": aux, "out": out}
