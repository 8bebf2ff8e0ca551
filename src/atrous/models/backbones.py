"""Feature extractors. Each backbone returns a dict of three feature maps and says what they are.

Every backbone returns ``{"low": ..., "aux": ..., "out": ...}``:
- ``low``: the last stride-4 feature map (DeepLabV3+ decoder input),
- ``aux``: the stride-8/16 feature map the auxiliary head reads (ResNet ``layer3``),
- ``out``: the last feature map (ASPP / classifier input), at the backbone's output stride.
``backbone.channels`` and ``backbone.strides`` give the channel count and stride of each, so heads
never hard-code ``in_channels``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.mobilenetv3 import InvertedResidual
from torchvision.models.resnet import BasicBlock

from .normalization import CAFFE_BGR, IMAGENET_RGB, InputNormalization

FEATURE_NAMES = ("low", "aux", "out")
OUTPUT_STRIDES = (8, 16, 32)


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"unsupported output_stride {output_stride!r}; choose from {list(OUTPUT_STRIDES)}")


class Backbone(nn.Module):
    """Base class: subclasses set ``channels``, ``strides`` (per feature name), ``normalization``, ``output_stride``.

    ``activation_checkpointing = True`` recomputes each stage's activations in the backward pass instead of
    keeping them: less training memory for one more forward of the backbone. (Stages whose BatchNorm trains
    see the batch twice, so their running statistics get two momentum updates per step.)
    """

    channels: dict[str, int]
    strides: dict[str, int]
    normalization: InputNormalization
    output_stride: int
    activation_checkpointing: bool = False

    def _stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(stage, x, use_reentrant=False)
        return stage(x)


class ResNetBackbone(Backbone):
    """A torchvision ResNet (or the Caffe-style variant) without ``avgpool``/``fc``.

    State-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer1.0.downsample.0``),
    which are also the keys of the DeepLab-v2 Caffe file once its ``Scale.`` prefix is dropped.
    """

    def __init__(self, resnet: nn.Module, *, output_stride: int, normalization: InputNormalization) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4
        final_channels = [m for m in self.layer4.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        self.channels = {"low": final_channels // 8, "aux": final_channels // 2, "out": final_channels}
        self.strides = {"low": 4, "aux": min(16, output_stride), "out": output_stride}
        self.output_stride = output_stride
        self.normalization = normalization

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: (N, 3, H, W) float32, normalised -> {"low", "aux", "out"} feature maps."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        low = self._stage(self.layer1, x)
        aux = self._stage(self.layer3, self._stage(self.layer2, low))
        out = self._stage(self.layer4, aux)
        return {"low": low, "aux": aux, "out": out}


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    conv.dilation = (dilation, dilation)
    conv.padding = ((conv.kernel_size[0] - 1) // 2 * dilation, (conv.kernel_size[1] - 1) // 2 * dilation)


def _stage_dilations(output_stride: int) -> list[bool]:
    """Which of layer2..layer4 trade their stride for dilation (torchvision's replace_stride_with_dilation)."""
    return {8: [False, True, True], 16: [False, False, True], 32: [False, False, False]}[output_stride]


def dilate_torchvision_resnet(resnet: nn.Module, output_stride: int, multi_grid: Sequence[int] | None) -> None:
    """Turn strides into dilation in place, exactly as ``replace_stride_with_dilation`` would.

    Done after construction because torchvision's BasicBlock refuses dilation in its constructor.
    torchvision gives the first block of a dilated stage the previous dilation; with ``multi_grid``
    the last stage follows the paper instead: block i gets ``stage_dilation * multi_grid[i]``.
    """
    dilation = 1
    layers = [resnet.layer2, resnet.layer3, resnet.layer4]
    for index, (layer, dilate) in enumerate(zip(layers, _stage_dilations(output_stride))):
        previous_dilation = dilation
        if dilate:
            dilation *= 2
        grid = multi_grid if (index == 2 and multi_grid is not None) else None
        if grid is not None and len(grid) != len(layer):
            raise ValueError(f"multi_grid {tuple(grid)} needs one value per block of the last stage ({len(layer)})")
        for block_index, block in enumerate(layer):
            if grid is not None:
                block_dilation = dilation * grid[block_index]
            else:
                block_dilation = previous_dilation if block_index == 0 else dilation
            spatial = [block.conv1, block.conv2] if isinstance(block, BasicBlock) else [block.conv2]
            if dilate and block_index == 0:
                spatial[0].stride = (1, 1)
                if block.downsample is not None:
                    block.downsample[0].stride = (1, 1)
            for conv in spatial:
                _set_dilation(conv, block_dilation)


TORCHVISION_RESNETS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
}


def torchvision_resnet(name: str, *, output_stride: int, multi_grid: Sequence[int] | None = None) -> ResNetBackbone:
    resnet = TORCHVISION_RESNETS[name](weights=None)
    dilate_torchvision_resnet(resnet, output_stride, multi_grid)
    return ResNetBackbone(resnet, output_stride=output_stride, normalization=IMAGENET_RGB)


class CaffeBottleneck(nn.Module):
    """DeepLab-v2's bottleneck: the stride sits on the first 1x1 conv, and the 3x3's padding equals its dilation."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int, dilation: int, downsample: nn.Module | None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=dilation, dilation=dilation, bias=False)
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
    """The ResNet-101 of the DeepLab-v2 Caffe model ("ResNetMulti" port) without its classifiers."""

    def __init__(self, blocks: Sequence[int], stage_settings: Sequence[tuple[int, int]]) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        planes = (64, 128, 256, 512)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(p, n, stride=s, dilation=d) for p, n, (s, d) in zip(planes, blocks, stage_settings)
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.01)

    def _make_layer(self, planes: int, blocks: int, *, stride: int, dilation: int) -> nn.Sequential:
        # The port gives every stage's first block a projection shortcut (also where only dilation changes).
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
        )
        layers = [CaffeBottleneck(self.inplanes, planes, stride=stride, dilation=dilation, downsample=downsample)]
        self.inplanes = planes * 4
        layers += [
            CaffeBottleneck(self.inplanes, planes, stride=1, dilation=dilation, downsample=None) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)


def caffe_resnet101(*, output_stride: int = 8, multi_grid: Sequence[int] | None = None) -> ResNetBackbone:
    """(stride, dilation) of layer1..layer4: at OS8 layer3 dilation 2 and layer4 dilation 4, as DeepLab-v2."""
    settings = {
        8: [(1, 1), (2, 1), (1, 2), (1, 4)],
        16: [(1, 1), (2, 1), (2, 1), (1, 2)],
        32: [(1, 1), (2, 1), (2, 1), (2, 1)],
    }[output_stride]
    resnet = _CaffeResNet((3, 4, 23, 3), settings)
    if multi_grid is not None:
        last_dilation = settings[3][1]
        if len(multi_grid) != len(resnet.layer4):
            raise ValueError(f"multi_grid {tuple(multi_grid)} needs one value per block of layer4 ({len(resnet.layer4)})")
        for block, grid in zip(resnet.layer4, multi_grid):
            _set_dilation(block.conv2, last_dilation * grid)
    return ResNetBackbone(resnet, output_stride=output_stride, normalization=CAFFE_BGR)


class MobileNetV3Backbone(Backbone):
    """torchvision's MobileNetV3-Large ``features`` (stages 0-16, 960 channels out), dilated to the output stride.

    The aux feature is torchvision's choice for its DeepLabV3 model: the first block of the stride-8 stage (40 ch).
    """

    def __init__(self, *, output_stride: int) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v3_large(weights=None).features
        strides = self._dilate(output_stride)
        stage_starts = [0] + [i for i, block in enumerate(self.features) if getattr(block, "_is_cn", False)]
        self.aux_index = stage_starts[-3]
        self.low_index = max(i for i, stride in enumerate(strides) if stride == 4)
        self.out_index = len(self.features) - 1
        out_channels = [self._out_channels(block) for block in self.features]
        indices = {"low": self.low_index, "aux": self.aux_index, "out": self.out_index}
        self.channels = {name: out_channels[i] for name, i in indices.items()}
        self.strides = {name: strides[i] for name, i in indices.items()}
        self.output_stride = output_stride
        self.normalization = IMAGENET_RGB

    @staticmethod
    def _out_channels(block: nn.Module) -> int:
        return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def _dilate(self, output_stride: int) -> list[int]:
        """Replace strides past ``output_stride`` by dilation (torchvision's ``dilated=True`` at OS16).

        Returns the stride of each block's output.
        """
        stride, dilation, strides = 1, 1, []
        for block in self.features:
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            spatial = [c for c in convs if c.kernel_size[0] > 1]
            block_stride = max((c.stride[0] for c in spatial), default=1)
            if block_stride > 1 and stride * block_stride > output_stride:
                dilation *= block_stride
                for conv in spatial:
                    conv.stride = (1, 1)
            else:
                stride *= block_stride
            if dilation > 1 and isinstance(block, InvertedResidual):
                for conv in spatial:
                    _set_dilation(conv, dilation)
            strides.append(stride)
        return strides

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


BACKBONES: dict[str, Callable[..., Backbone]] = {
    **{name: (lambda name=name, **kw: torchvision_resnet(name, **kw)) for name in TORCHVISION_RESNETS},
    "resnet101_caffe": caffe_resnet101,
    "mobilenet_v3_large": lambda *, output_stride, multi_grid=None: _mobilenet(output_stride, multi_grid),
}


def _mobilenet(output_stride: int, multi_grid: Sequence[int] | None) -> MobileNetV3Backbone:
    if multi_grid is not None:
        raise ValueError("multi_grid applies to ResNet backbones only, not mobilenet_v3_large")
    return MobileNetV3Backbone(output_stride=output_stride)


def build_backbone(name: str, *, output_stride: int, multi_grid: Sequence[int] | None = None) -> Backbone:
    """Build a randomly initialised backbone by name; see ``BACKBONES`` for the names."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    check_output_stride(output_stride)
    return BACKBONES[name](output_stride=output_stride, multi_grid=multi_grid)
