"""Google's DeepLab heads that atrous's core does not have (``research/deeplab/model.py``,
``core/dense_prediction_cell.py``). Its DeepLabV3+ is the core's ``deeplabv3plus`` with separable convs and
``align_corners`` (the format module reorders its ASPP concatenation, image pooling first in Google's files)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...models.layers import ASPP, ConvBNReLU, SeparableConvBNReLU, building_a_graph
from .layers import SE_GATE

# The Xception-71 Cityscapes cell (``dense_prediction_cell_branch5_top1_cityscapes.json``): each branch a 3x3
# separable conv of 256 channels, (its input: -1 the backbone's features, else an earlier branch; [rate_h, rate_w]
# at output stride 16).
CITYSCAPES_CELL: tuple[tuple[int, tuple[int, int]], ...] = ((-1, (1, 6)), (0, (18, 15)), (1, (6, 3)), (0, (1, 1)),
                                                             (0, (6, 21)))  # fmt: skip


class DeepLabV3GoogleHead(nn.Module):
    """Google's DeepLabV3 without decoder: ASPP of ``width`` channels (its rates may be none: 1x1 and image pooling
    only, as its MobileNetV2 and EdgeTPU models; 128 channels for EdgeTPU-DeepLab-slim) -> 1x1 classifier with bias;
    no 3x3 conv between (torchvision's has one)."""

    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int],
                 separable: bool = True, width: int = 256):  # fmt: skip
        super().__init__()
        self.aspp = ASPP(in_channels=channels["out"], atrous_rates=atrous_rates, dropout=0.1, separable=separable,
                         out_channels=width)  # fmt: skip
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.aspp(features["out"]))


class DensePredictionCell(nn.Module):
    """Branches of 3x3 separable convs (depthwise with anisotropic dilation + BN + ReLU, pointwise 256 + BN + ReLU),
    each on the features or an earlier branch; their concatenation -> dropout -> 1x1 (256) + BN + ReLU. Dilations
    are the cell's at output stride 16, scaled with the features' resolution (x2 at 8, as Google's
    ``conv_rate_multiplier``; halved at 32, where Google's code has no rates, never below 1)."""

    def __init__(self, in_channels: int, *, output_stride: int, cell=CITYSCAPES_CELL, dropout: float = 0.1):
        super().__init__()

        def scaled(rate: int) -> int:
            return max(1, rate * 16 // output_stride)

        self.inputs = [source for source, _ in cell]
        self.branches = nn.ModuleList(
            SeparableConvBNReLU(in_channels if source < 0 else 256, 256, dilation=(scaled(rate_h), scaled(rate_w)))
            for source, (rate_h, rate_w) in cell
        )  # fmt: skip
        self.dropout = nn.Dropout(dropout)
        self.project = ConvBNReLU(256 * len(cell), 256, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        for source, branch in zip(self.inputs, self.branches):
            outputs.append(branch(x if source < 0 else outputs[source]))
        return self.project(self.dropout(torch.cat(outputs, dim=1)))


class DPCDecoderHead(nn.Module):
    """Google's Xception-71 Cityscapes head: the dense prediction cell on "out", then DeepLabV3+'s decoder (the
    "low" features projected to 48, the cell's output upsampled to them with ``align_corners``, two 3x3 separable
    convs of 256) -> 1x1 classifier with bias."""

    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int] = (),
                 output_stride: int = 16):  # fmt: skip
        super().__init__()
        self.cell = DensePredictionCell(channels["out"], output_stride=output_stride)
        self.low_project = ConvBNReLU(channels["low"], 48, 1)
        self.fuse1 = SeparableConvBNReLU(256 + 48, 256)
        self.fuse2 = SeparableConvBNReLU(256, 256)
        self.classifier = nn.Conv2d(256, num_classes, 1)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        low = features["low"]
        context = F.interpolate(self.cell(features["out"]), size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifier(self.fuse2(self.fuse1(torch.cat([context, self.low_project(low)], dim=1))))


def scale_dimension(size: int, scale: float) -> int:
    """Google's ``scale_dimension``: a crop size at a feature stride (513 at 1/16 -> 33)."""
    return int((size - 1) * scale + 1)


class MobileNetV3SegHead(nn.Module):
    """The head of Google's MobileNetV3 Cityscapes models (model_zoo.md's flags): image pooling as a
    squeeze-and-excite gate (average pool of the 769x769 pooling crop's size at the output stride, stride (4, 5),
    'VALID'; 1x1 conv with bias; relu6(x + 3) * 0.16667; resized back with ``align_corners``) multiplying the 1x1
    branch (128 channels, BN, ReLU); no projection; a decoder whose output is the logits: the gated features resized
    to the stride-8 "aux" tap's size and a 1x1 conv of them (``decoder_conv0``), plus a 1x1 conv of the tap
    (``feature_projection0``), both with bias and num_classes outputs. A feature map smaller than the pooling window
    is pooled whole (Google's graph needs inputs of the pooling crop's size at least)."""

    POOLING_CROP, POOLING_STRIDE, WIDTH = 769, (4, 5), 128

    def __init__(self, *, channels: Mapping[str, int], num_classes: int, atrous_rates: Sequence[int] = (),
                 output_stride: int = 32):  # fmt: skip
        super().__init__()
        self.pool_size = scale_dimension(self.POOLING_CROP, 1.0 / output_stride)
        self.image_pooling = nn.Conv2d(channels["out"], self.WIDTH, 1)
        self.aspp0 = ConvBNReLU(channels["out"], self.WIDTH, 1)
        # (decoder_conv0 on the gated features, feature_projection0 on the tap): summed, they are the logits.
        self.classifiers = nn.ModuleList([nn.Conv2d(self.WIDTH, num_classes, 1), nn.Conv2d(channels["aux"], num_classes, 1)])

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        x, low = features["out"], features["aux"]
        height, width = x.shape[-2:]
        window = (min(self.pool_size, height), min(self.pool_size, width))
        if building_a_graph() and window != (self.pool_size, self.pool_size):
            # A graph keeps the example's window: right only where every input's features cover the full window.
            raise ConfigError(f"export this model with pad_to of {self.POOLING_CROP}x{self.POOLING_CROP} at least (its "
                              "zoo entries' 1025x2049): smaller inputs pool a smaller window")  # fmt: skip
        gate = F.relu6(self.image_pooling(F.avg_pool2d(x, window, self.POOLING_STRIDE)) + 3.0) * SE_GATE
        gate = F.interpolate(gate, size=(height, width), mode="bilinear", align_corners=True)
        context = F.interpolate(self.aspp0(x) * gate, size=low.shape[-2:], mode="bilinear", align_corners=True)
        return self.classifiers[0](context) + self.classifiers[1](low)
