"""The ResNet-101 of DeepLab-v2's Caffe model (stride on the first 1x1 conv, Caffe BGR input), the backbone of
every DeepLab-v2 file: the Caffe-converted ones, the PyTorch port's and kazuto1011's."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..normalization import CAFFE_BGR
from .base import BackboneEntry, ResNetBackbone

CAFFE_IMAGENET_FILE = "DeepLab_resnet_pretrained_imagenet.pth"


class CaffeBottleneck(nn.Module):
    """DeepLab-v2's bottleneck: the stride sits on the first 1x1 conv, and the 3x3's padding equals its dilation."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class _CaffeResNet(nn.Module):
    """The ResNet-101 of the DeepLab-v2 Caffe model ("ResNetMulti" port) without its classifiers, undilated."""

    def __init__(self, blocks: Sequence[int]) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        planes, strides = (64, 128, 256, 512), (1, 2, 2, 2)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(p, n, stride=s) for p, n, s in zip(planes, blocks, strides)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)

    def _make_layer(self, planes: int, blocks: int, *, stride: int) -> nn.Sequential:
        # The port gives every stage's first block a projection shortcut (also where only dilation changes).
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        layers = [CaffeBottleneck(self.inplanes, planes, stride=stride, downsample=downsample)]
        self.inplanes = planes * 4
        layers += [CaffeBottleneck(self.inplanes, planes, stride=1, downsample=None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def caffe_resnet101(
    *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str = "stage"
) -> ResNetBackbone:
    """At OS8 layer3 has dilation 2 and layer4 dilation 4 in every block, first included, as DeepLab-v2."""
    return ResNetBackbone(_CaffeResNet((3, 4, 23, 3)), output_stride=output_stride, multi_grid=multi_grid,
                          first_block=first_block)  # fmt: skip


BACKBONES: dict[str, BackboneEntry] = {
    # Its ImageNet file is DeepLab-v2's own (Caffe-converted, keys "Scale.*"), read by atrous.publishers.deeplabv2.
    "resnet101_caffe": BackboneEntry(
        build=caffe_resnet101, normalization=CAFFE_BGR,
        imagenet_hint=f"torchvision does not distribute the Caffe ImageNet weights of resnet101_caffe: download "
        f"{CAFFE_IMAGENET_FILE} (DeepLab-v2's init file) and pass its path as pretrained_backbone (zoo entries "
        "deeplabv2_resnet101_caffe_imagenet and deeplabv2_resnet101_caffe_init_adaptsegnet say where to get it)",
    ),
}
