"""kazuto1011/deeplab-pytorch's heads: its DeepLabV3 (ASPP straight into the classifier, as the paper draws it) and
the 1x1 classifier of DeepLab-v2's COCO-pretrained init model (its "DeepLabV1")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ...models.layers import ASPP


class ClassifierHead(nn.Module):
    """One 1x1 conv classifier (with bias) on the "out" feature, no context module: the network of DeepLab-v2's
    COCO-pretrained init model (kazuto1011's "DeepLabV1" container). ``atrous_rates`` is accepted and unused."""

    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int] = ()):
        super().__init__()
        self.classifier = nn.Conv2d(channels["out"], num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(features["out"])


class DeepLabV3PaperHead(nn.Module):
    """DeepLabV3 as the paper draws it: ASPP (its 1x1 projection included) -> 1x1 classifier, with no 3x3 conv between
    (kazuto1011/deeplab-pytorch's layout; torchvision's ``DeepLabHead`` adds the 3x3)."""

    def __init__(
        self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int], separable: bool = False
    ):
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, separable=separable)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features["out"]))
