"""torchvision's ResNets (18-152) as DeepLab backbones, and the layout of torchvision's ImageNet ResNet files."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision

from ..normalization import IMAGENET_RGB
from .base import BackboneEntry, ImageNetFormat, ResNetBackbone


def torchvision_resnet(
    name: str, *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str = "previous"
) -> ResNetBackbone:
    resnet = getattr(torchvision.models, name)(weights=None)
    return ResNetBackbone(resnet, output_stride=output_stride, multi_grid=multi_grid, first_block=first_block)


TORCHVISION_RESNET = ImageNetFormat(
    "torchvision_resnet",
    recognise=lambda state: "conv1.weight" in state and any(key.startswith("layer1.") for key in state),
    translate=lambda state: {key: value for key, value in state.items() if not key.startswith("fc.")},
)


def _torchvision_resnet_entry(name: str, weights: str) -> BackboneEntry:
    return BackboneEntry(
        build=lambda **kwargs: torchvision_resnet(name, **kwargs), normalization=IMAGENET_RGB,
        imagenet_format=TORCHVISION_RESNET, imagenet_weights=weights,
    )  # fmt: skip


BACKBONES: dict[str, BackboneEntry] = {
    f"resnet{depth}": _torchvision_resnet_entry(f"resnet{depth}", f"ResNet{depth}_Weights.IMAGENET1K_V1")
    for depth in (18, 34, 50, 101, 152)
}
