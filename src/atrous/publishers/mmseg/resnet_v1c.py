"""mmsegmentation's ResNetV1c (the "deep stem" ResNet-C of Bag of Tricks), with its dilation rules."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from ...models.backbones.base import BackboneEntry, ResNetBackbone
from ...models.normalization import IMAGENET_RGB


class DeepStem(nn.Module):
    """The "V1c" stem (mmsegmentation's ResNetV1c, the Bag-of-Tricks ResNet-C): three 3x3 convs (32, 32, 64 channels,
    the first with stride 2), each with BN and ReLU, in place of the 7x7 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = torch.relu(bn(conv(x)))
        return x


class ResNetV1cBackbone(ResNetBackbone):
    """A torchvision ResNet with the deep stem (``stem``) in place of conv1/bn1: mmsegmentation's ResNetV1c. Its
    dilation rules: ``contract_dilation`` is torchvision's (a dilated stage's first block keeps the previous
    dilation); ``multi_grid`` sets the last stage's dilations outright; a BasicBlock (ResNet-18/34) dilates its
    first 3x3 conv only."""

    def __init__(self, resnet: nn.Module, **kwargs) -> None:
        super().__init__(resnet, **kwargs)
        del self.conv1, self.bn1
        self.stem = DeepStem()

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.stem(images))


def resnet_v1c(
    name: str,
    *,
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    multi_grid_absolute: bool = False,
    first_block: str = "previous",
) -> ResNetV1cBackbone:
    resnet = getattr(torchvision.models, name)(weights=None)
    basic = isinstance(resnet.layer1[0], torchvision.models.resnet.BasicBlock)
    return ResNetV1cBackbone(
        resnet, output_stride=output_stride, multi_grid=multi_grid, multi_grid_absolute=multi_grid_absolute,
        first_block=first_block, dilated_convs=(lambda block: [block.conv1]) if basic else None,
    )  # fmt: skip



BACKBONES: dict[str, BackboneEntry] = {
    # ImageNet weights: open-mmlab://resnet50_v1c, not fetched here.
    f"{name}_v1c": BackboneEntry(
        build=lambda name=name, **kwargs: resnet_v1c(name, **kwargs), normalization=IMAGENET_RGB,
        imagenet_hint=f"its ImageNet weights are mmsegmentation's open-mmlab://{name}_v1c: pass the file's path",
        absolute_multi_grid=True,
    ) for name in ("resnet18", "resnet34", "resnet50", "resnet101")
}  # fmt: skip
