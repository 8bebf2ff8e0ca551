"""torchvision's ResNets (18-152) as DeepLab backbones, and the layout of torchvision's ImageNet ResNet files."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from ..normalization import IMAGENET_RGB
from .base import Backbone, BackboneEntry, ImageNetFormat, dilate, out_channels


class ResNetBackbone(Backbone):
    """A torchvision ResNet (or the Caffe-style variant) without ``avgpool``/``fc``.

    State-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``),
    which are also the keys of the DeepLab-v2 Caffe file once its ``Scale.`` prefix is dropped.
    """

    def __init__(
        self, resnet: nn.Module, *, output_stride: int, multi_grid: Sequence[int] | None, first_block: str, **rules
    ):
        """rules: ``dilate``'s ``multi_grid_absolute`` and ``dilated_convs``, for the variants that differ."""
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        layers = [self.layer1, self.layer2, self.layer3, self.layer4]
        strides = dilate(
            [list(layer) for layer in layers], input_stride=4, output_stride=output_stride, multi_grid=multi_grid,
            first_block=first_block, **rules,
        )  # fmt: skip
        self.channels = {"low": out_channels(self.layer1), "aux": out_channels(self.layer3), "out": out_channels(self.layer4)}
        self.strides = {"low": strides[0], "aux": strides[2], "out": strides[3]}
        self.output_stride = output_stride

    def _stem(self, images: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(images))))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps."""
        x = self._stem(images)
        low = self._stage(self.layer1, x)
        aux = self._stage(self.layer3, self._stage(self.layer2, low))
        out = self._stage(self.layer4, aux)
        return {"low": low, "aux": aux, "out": out}


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
