"""torchvision's MobileNetV3-Large as a DeepLab backbone, and the layout of its ImageNet file."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision

from ..normalization import IMAGENET_RGB
from .base import Backbone, BackboneEntry, ImageNetFormat, convs, dilate, out_channels


class MobileNetV3Backbone(Backbone):
    """torchvision's MobileNetV3-Large ``features`` (blocks 0-16, 960 channels out), dilated to the output stride.

    The aux feature is torchvision's choice for its DeepLabV3 model: the first block of the stride-8 stage (40 ch).
    """

    def __init__(self, *, output_stride: int, multi_grid: Sequence[int] | None = None, first_block: str = "stage"):
        super().__init__()
        self.features = torchvision.models.mobilenet_v3_large(weights=None).features
        # Stages of the inverted residuals (the stem conv before them, the final 1x1 conv after): a block with a
        # strided conv starts one.
        blocks = list(self.features)[1:-1]
        starts = [i for i, block in enumerate(blocks) if i == 0 or any(c.stride[0] > 1 for c in convs(block))]
        stages = [blocks[a:b] for a, b in zip(starts, [*starts[1:], len(blocks)])]
        strides = dilate(stages, input_stride=2, output_stride=output_stride, multi_grid=multi_grid,
                         first_block=first_block)  # fmt: skip
        low_stage = max(i for i, stride in enumerate(strides) if stride == 4)
        self.low_index = 1 + starts[low_stage + 1] - 1  # the stage's last block, in `features` numbering
        self.aux_index = 1 + starts[low_stage + 1]  # the next stage's first block
        self.out_index = len(self.features) - 1
        indices = {"low": self.low_index, "aux": self.aux_index, "out": self.out_index}
        self.channels = {name: out_channels(self.features[i]) for name, i in indices.items()}
        self.strides = {"low": strides[low_stage], "aux": strides[low_stage + 1], "out": strides[-1]}
        self.output_stride = output_stride

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps."""
        features: dict[str, torch.Tensor] = {}
        x = images
        for index, block in enumerate(self.features):
            x = self._stage(block, x)
            if index == self.low_index:
                features["low"] = x
            if index == self.aux_index:
                features["aux"] = x
        features["out"] = x
        return features


TORCHVISION_MOBILENET_V3 = ImageNetFormat(
    "torchvision_mobilenet_v3_large",
    recognise=lambda state: "features.0.0.weight" in state,
    translate=lambda state: {key: value for key, value in state.items() if key.startswith("features.")},
)

BACKBONES: dict[str, BackboneEntry] = {
    "mobilenet_v3_large": BackboneEntry(
        build=MobileNetV3Backbone, normalization=IMAGENET_RGB, imagenet_format=TORCHVISION_MOBILENET_V3,
        imagenet_weights="MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    ),
}
