"""transformers' DeepLabV3 head of its MobileViT models (``MobileViTDeepLabV3``): ASPP (1x1, three 3x3 rates, image
pooling, each conv + BN + ReLU; concatenated in that order -> 1x1 projection) -> dropout -> 1x1 classifier with bias,
with no 3x3 conv between (torchvision's has one). Its ASPP width is the model's: 256 for MobileViT, 512 for
MobileViTV2."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...models.layers import ASPP


class DeepLabV3TransformersHead(nn.Module):
    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int],
                 separable: bool = False, width: int = 256):  # fmt: skip
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, out_channels=width, dropout=0.1,
                         separable=separable)  # fmt: skip
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features["out"]))
