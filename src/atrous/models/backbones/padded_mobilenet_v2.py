"""The MobileNetV2 that VainF/DeepLabV3Plus-Pytorch and jfzhang95/pytorch-deeplab-xception both build (blocks whose
input is padded before the expansion conv): core, since two publishers share it; each registers its own variant."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ...errors import ConfigError
from .base import Backbone, dilate, strided_convs


class _PaddedInvertedResidual(nn.Module):
    """VainF/DeepLabV3Plus-Pytorch's MobileNetV2 block: the input is zero-padded for the 3x3 depthwise conv BEFORE
    the 1x1 expansion (so the border the depthwise conv sees is ReLU6(BN(0)), not 0); ``conv`` = [expansion
    (conv, BN, ReLU6) when expand_ratio > 1], depthwise (conv, BN, ReLU6, unpadded), projection conv, BN."""

    def __init__(self, inp: int, oup: int, *, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_bn_relu6(inp, hidden, 1))
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride=stride, groups=hidden), nn.Conv2d(hidden, oup, 1, bias=False),
                   nn.BatchNorm2d(oup)]  # fmt: skip
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.conv[-3][0].dilation[0]  # the depthwise conv's: "same" output for a 3x3 kernel
        out = self.conv(torch.nn.functional.pad(x, (pad, pad, pad, pad)))
        return x + out if self.residual else out


def _conv_bn_relu6(inp: int, oup: int, kernel: int, *, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, kernel, stride, 0, groups=groups, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU6(inplace=True))  # fmt: skip


class PaddedMobileNetV2Backbone(Backbone):
    """The MobileNetV2 of VainF/DeepLabV3Plus-Pytorch (``stem_padding=0``, ``lagging=False``) and of
    jfzhang95/pytorch-deeplab-xception (``stem_padding=1``, ``lagging=True``): ``features`` 0-17 (the 1280-channel
    conv dropped), blocks whose input is padded before the expansion conv, output stride by dilation. VainF's stem
    is unpadded and its dilated stages follow torchvision's first-block rule; jfzhang95's gives the stage that loses
    its stride the dilation before the change (every block), the next stages the multiplied one.
    "low" = features[3] (24 ch, stride 4), "aux" = features[6] (32 ch, stride 8), "out" = features[17] (320 ch)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(
        self,
        *,
        output_stride: int,
        multi_grid: Sequence[int] | None = None,
        first_block: str = "previous",
        stem_padding: int = 0,
        lagging: bool = False,
    ):
        super().__init__()
        if lagging and (multi_grid is not None or first_block != "previous"):
            raise ConfigError("mobilenet_v2_jfzhang95 has its own dilation rule: no multi_grid or first_block_dilation")
        stem = _conv_bn_relu6(3, 32, 3, stride=2)
        stem[0].padding = (stem_padding, stem_padding)
        blocks: list[nn.Module] = [stem]
        stages, channels = [], 32
        for expand, out, count, stride in self.SETTINGS:
            stage = [_PaddedInvertedResidual(channels if i == 0 else out, out, stride=stride if i == 0 else 1,
                                             expand_ratio=expand) for i in range(count)]  # fmt: skip
            stages.append(stage)
            blocks += stage
            channels = out
        self.features = nn.Sequential(*blocks)
        if lagging:
            strides = self._lagging_dilation(stages, output_stride)
        else:
            strides = dilate(stages, input_stride=2, output_stride=output_stride, multi_grid=multi_grid,
                             first_block=first_block)  # fmt: skip
        for block in blocks[1:]:  # the padding is the block's F.pad, sized from the dilation dilate() set
            block.conv[-3][0].padding = (0, 0)
        self.channels = {"low": 24, "aux": 32, "out": 320}
        self.strides = {"low": strides[1], "aux": strides[2], "out": strides[-1]}
        self.output_stride = output_stride

    @staticmethod
    def _lagging_dilation(stages: list[list[nn.Module]], output_stride: int) -> list[int]:
        """jfzhang95's rule: once the output stride is reached, a stage keeps stride 1 and the running rate, and the
        rate is multiplied by its stride for the stages after it. Returns each stage's output stride."""
        stride, rate, strides = 2, 1, []
        for blocks in stages:
            strided, stage_stride = strided_convs(blocks)
            dilation = 1
            if stride == output_stride:
                for conv in strided:
                    conv.stride = (1, 1)
                dilation, rate = rate, rate * stage_stride
            else:
                stride *= stage_stride
            for block in blocks:
                block.conv[-3][0].dilation = (dilation, dilation)
            strides.append(stride)
        return strides

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features: dict[str, torch.Tensor] = {}
        x = images
        for index, block in enumerate(self.features):
            x = self._stage(block, x)
            if index == 3:
                features["low"] = x
            elif index == 6:
                features["aux"] = x
        features["out"] = x
        return features

