"""Feature extractors and the registry that knows each one's facts.

Every backbone returns ``{"low": ..., "aux": ..., "out": ...}``:
- ``low``: the last stride-4 feature map (DeepLabV3+ decoder input),
- ``aux``: the feature map the auxiliary head reads (ResNet ``layer3``),
- ``out``: the last feature map (ASPP / classifier input), at the backbone's output stride.
``backbone.channels`` and ``backbone.strides`` give the channel count and stride of each, so heads never hard-code
``in_channels``. A new backbone is one ``BACKBONES`` entry: its builder, the input normalisation its weights expect
and where its ImageNet weights come from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .normalization import CAFFE_BGR, IMAGENET_RGB, InputNormalization
from .spec import OUTPUT_STRIDES


class Backbone(nn.Module):
    """Base class: subclasses set ``channels`` and ``strides`` (per feature name) and ``output_stride``;
    ``build_backbone`` sets ``normalization`` from the registry entry.

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


# ------------------------------------------------------------------------------------------------ dilation


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _strided_convs(blocks: Sequence[nn.Module]) -> tuple[list[nn.Conv2d], int]:
    """A stage's strided convs (all in its first block, shortcut included) and the stage's stride."""
    strided = [conv for conv in _convs(blocks[0]) if conv.stride[0] > 1]
    return strided, max((conv.stride[0] for conv in strided), default=1)


def _set_dilation(conv: nn.Conv2d, dilation: int) -> None:
    conv.dilation = (dilation, dilation)
    conv.padding = ((conv.kernel_size[0] - 1) // 2 * dilation, (conv.kernel_size[1] - 1) // 2 * dilation)


def dilate(
    stages: Sequence[Sequence[nn.Module]],
    *,
    input_stride: int,
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    multi_grid_absolute: bool = False,
    first_block: str = "stage",
    dilated_convs: Callable[[nn.Module], list[nn.Conv2d]] | None = None,
) -> list[int]:
    """Trade the strides that would take the network past ``output_stride`` for dilation, in place.

    stages: the network's blocks grouped by stage; a stage's first block holds its stride (every conv with
        stride > 1 in it, shortcut included). input_stride: the stride before the first stage.
    multi_grid: per-block multipliers of the last stage's dilation (the DeepLabV3 paper's Multi-Grid), or with
        ``multi_grid_absolute`` the last stage's per-block dilations themselves (mmsegmentation's ``multi_grid``).
    first_block: the dilation of a dilated stage's first block: "stage" (the stage's own, as DeepLab-v2's Caffe
        model and torchvision's dilated MobileNetV3) or "previous" (torchvision's ``replace_stride_with_dilation``).
    dilated_convs: a block's convs that take its dilation (default: every conv with a kernel larger than 1).
    Returns the output stride of each stage.
    """
    stride, dilation, strides = input_stride, 1, []
    for index, blocks in enumerate(stages):
        strided, stage_stride = _strided_convs(blocks)
        previous = dilation
        if stride * stage_stride > output_stride:
            dilation *= stage_stride
            for conv in strided:
                conv.stride = (1, 1)
        else:
            stride *= stage_stride
        grid = multi_grid if index == len(stages) - 1 else None
        if grid is not None and len(grid) != len(blocks):
            raise ConfigError(f"multi_grid {tuple(grid)} needs one value per block of the last stage ({len(blocks)})")
        for block_index, block in enumerate(blocks):
            if grid is not None:
                block_dilation = grid[block_index] if multi_grid_absolute else dilation * grid[block_index]
            elif block_index == 0 and first_block == "previous":
                block_dilation = previous
            else:
                block_dilation = dilation
            if block_dilation > 1:
                convs = dilated_convs(block) if dilated_convs else [c for c in _convs(block) if c.kernel_size[0] > 1]
                for conv in convs:
                    _set_dilation(conv, block_dilation)
        strides.append(stride)
    return strides


def _out_channels(module: nn.Module) -> int:
    return _convs(module)[-1].out_channels


# -------------------------------------------------------------------------------------------------- ResNets


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
        self.channels = {"low": _out_channels(self.layer1), "aux": _out_channels(self.layer3), "out": _out_channels(self.layer4)}
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


# --------------------------------------------------------------------------------------------- MobileNetV3


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
        starts = [i for i, block in enumerate(blocks) if i == 0 or any(c.stride[0] > 1 for c in _convs(block))]
        stages = [blocks[a:b] for a, b in zip(starts, [*starts[1:], len(blocks)])]
        strides = dilate(stages, input_stride=2, output_stride=output_stride, multi_grid=multi_grid,
                         first_block=first_block)  # fmt: skip
        low_stage = max(i for i, stride in enumerate(strides) if stride == 4)
        self.low_index = 1 + starts[low_stage + 1] - 1  # the stage's last block, in `features` numbering
        self.aux_index = 1 + starts[low_stage + 1]  # the next stage's first block
        self.out_index = len(self.features) - 1
        indices = {"low": self.low_index, "aux": self.aux_index, "out": self.out_index}
        self.channels = {name: _out_channels(self.features[i]) for name, i in indices.items()}
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
            strided, stage_stride = _strided_convs(blocks)
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


# ------------------------------------------------------------------------------------------------ registry


@dataclass(frozen=True)
class ImageNetFormat:
    """The key layout of one family's ImageNet classification checkpoints.

    recognise(state) -> whether a state dict is in this layout; translate(state) -> the backbone's keys (the
    classifier dropped).
    """

    name: str
    recognise: Callable[[Mapping[str, torch.Tensor]], bool]
    translate: Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]


TORCHVISION_RESNET = ImageNetFormat(
    "torchvision_resnet",
    recognise=lambda state: "conv1.weight" in state and any(key.startswith("layer1.") for key in state),
    translate=lambda state: {key: value for key, value in state.items() if not key.startswith("fc.")},
)
TORCHVISION_MOBILENET_V3 = ImageNetFormat(
    "torchvision_mobilenet_v3_large",
    recognise=lambda state: "features.0.0.weight" in state,
    translate=lambda state: {key: value for key, value in state.items() if key.startswith("features.")},
)


def _drn_d_54(**kwargs) -> Backbone:
    from .drn import drn_d_54  # here, not at the top: drn.py subclasses this module's Backbone

    return drn_d_54(**kwargs)


def _fyu_drn_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fyu/drn's DRN-D keys -> atrous's: its single-conv layers are positional Sequentials (conv 0, BN 1, ReLU 2),
    atrous names them (``layer0.conv``, ``layer0.bn``); its "fc" classifier dropped."""
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "fc":
            continue
        if parts[0] in ("layer0", "layer1", "layer2", "layer7", "layer8"):
            parts[1] = ("conv", "bn")[int(parts[1])]
        renamed[".".join(parts)] = value
    return renamed


FYU_DRN = ImageNetFormat(
    "fyu_drn",
    recognise=lambda state: "layer0.0.weight" in state and "layer8.0.weight" in state,
    translate=_fyu_drn_keys,
)


def _xception65_jfzhang95(**kwargs) -> Backbone:
    from .aligned_xception import AlignedXceptionBackbone  # here, not at the top: it subclasses this module's Backbone

    return AlignedXceptionBackbone(**kwargs)


def _xception_vainf(**kwargs) -> Backbone:
    from .xception import xception_vainf  # here, not at the top: xception.py subclasses this module's Backbone

    return xception_vainf(**kwargs)


def _hrnetv2(width: int, **kwargs) -> Backbone:
    from .hrnet import hrnetv2  # here, not at the top: hrnet.py subclasses this module's Backbone

    return hrnetv2(width, **kwargs)


@dataclass(frozen=True)
class BackboneEntry:
    """What atrous knows about one backbone.

    build(*, output_stride, multi_grid[, first_block]) -> a randomly initialised ``Backbone``; ``first_block`` ("previous"
    or "stage", see ``dilate``) is passed only when a spec asks for a rule other than the backbone's own.
    normalization: the input its weights expect. imagenet_format: the layout of its ImageNet file.
    imagenet_weights: torchvision's weights name (downloaded for ``pretrained_backbone="imagenet"``), or None with
    ``imagenet_hint`` saying where the weights come from instead.
    """

    build: Callable[..., Backbone]
    normalization: InputNormalization
    imagenet_format: ImageNetFormat | None = None
    imagenet_weights: str | None = None
    imagenet_hint: str = "no ImageNet weights are known for it"
    output_strides: tuple[int, ...] = OUTPUT_STRIDES  # what build() accepts: the dilation choices, HRNet's fixed 4
    absolute_multi_grid: bool = False  # whether build() takes multi_grid_absolute (mmsegmentation's multi-grid)


def _torchvision_resnet_entry(name: str, weights: str) -> BackboneEntry:
    return BackboneEntry(
        build=lambda **kwargs: torchvision_resnet(name, **kwargs), normalization=IMAGENET_RGB,
        imagenet_format=TORCHVISION_RESNET, imagenet_weights=weights,
    )  # fmt: skip


CAFFE_IMAGENET_FILE = "DeepLab_resnet_pretrained_imagenet.pth"

BACKBONES: dict[str, BackboneEntry] = {
    "resnet18": _torchvision_resnet_entry("resnet18", "ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": _torchvision_resnet_entry("resnet34", "ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": _torchvision_resnet_entry("resnet50", "ResNet50_Weights.IMAGENET1K_V1"),
    "resnet101": _torchvision_resnet_entry("resnet101", "ResNet101_Weights.IMAGENET1K_V1"),
    "resnet152": _torchvision_resnet_entry("resnet152", "ResNet152_Weights.IMAGENET1K_V1"),
    # Its ImageNet file is DeepLab-v2's own (Caffe-converted, keys "Scale.*"), read by atrous.models.weights.
    "resnet101_caffe": BackboneEntry(
        build=caffe_resnet101, normalization=CAFFE_BGR,
        imagenet_hint=f"torchvision does not distribute the Caffe ImageNet weights of resnet101_caffe: download "
        f"{CAFFE_IMAGENET_FILE} (DeepLab-v2's init file) and pass its path as pretrained_backbone (zoo entries "
        "deeplabv2_resnet101_caffe_imagenet and deeplabv2_resnet101_caffe_init_adaptsegnet say where to get it)",
    ),
    # mmsegmentation's ResNetV1c (deep stem); ImageNet weights: open-mmlab://resnet50_v1c, not fetched here.
    **{f"{name}_v1c": BackboneEntry(
        build=lambda name=name, **kwargs: resnet_v1c(name, **kwargs), normalization=IMAGENET_RGB,
        imagenet_hint=f"its ImageNet weights are mmsegmentation's open-mmlab://{name}_v1c: pass the file's path",
        absolute_multi_grid=True,
    ) for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
    # VainF/DeepLabV3Plus-Pytorch's MobileNetV2 (its own padding), for its files; ImageNet weights: torchvision's.
    "mobilenet_v2_vainf": BackboneEntry(
        build=PaddedMobileNetV2Backbone, normalization=IMAGENET_RGB,
        imagenet_hint="VainF initialises it from torchvision's mobilenet_v2 ImageNet file: pass that file's path",
    ),
    "mobilenet_v2_jfzhang95": BackboneEntry(
        build=lambda **kwargs: PaddedMobileNetV2Backbone(**kwargs, stem_padding=1, lagging=True),
        normalization=IMAGENET_RGB,
        imagenet_hint="jfzhang95 initialises it from its own mobilenet_v2-6a65762b.pth: pass that file's path",
    ),
    "mobilenet_v3_large": BackboneEntry(
        build=MobileNetV3Backbone, normalization=IMAGENET_RGB, imagenet_format=TORCHVISION_MOBILENET_V3,
        imagenet_weights="MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    ),
    # fyu/drn's DRN-D-54 as jfzhang95/pytorch-deeplab-xception builds it (output stride 8 only), for its files.
    "drn_d_54": BackboneEntry(
        build=_drn_d_54, normalization=IMAGENET_RGB, imagenet_format=FYU_DRN, output_strides=(8,),
        imagenet_hint="jfzhang95 initialises it from fyu/drn's http://dl.yf.io/drn/drn_d_54-0e0534ff.pth: pass that "
        "file's path",
    ),
    # jfzhang95's Aligned Xception-65 (its own BN placement and in-place ReLUs), for its DeepLabV3+ files.
    "xception65_jfzhang95": BackboneEntry(
        build=_xception65_jfzhang95, normalization=IMAGENET_RGB,
        imagenet_hint="jfzhang95 initialises it, in part, from Cadene's Keras-converted Xception (not Xception-65), "
        "http://data.lip6.fr/cadene/pretrainedmodels/xception-b5690688.pth, which atrous does not read",
    ),
    # VainF/DeepLabV3Plus-Pytorch's (Cadene's Keras port of Chollet's) Xception, for its files. Normalisation:
    # VainF's main.py feeds every model ImageNet mean/std, this one too, although Cadene's ImageNet weights were
    # trained on 0.5/0.5-normalised input; its files are trained with (and expect) ImageNet mean/std.
    "xception_vainf": BackboneEntry(
        build=_xception_vainf, normalization=IMAGENET_RGB,
        imagenet_hint="VainF initialises it from Cadene's http://data.lip6.fr/cadene/pretrainedmodels/xception-"
        "43020ad28.pth (keys without VainF's 'backbone.' prefix), which atrous does not read",
    ),
    # VainF's HRNetV2-W32/W48 (features at stride 4, no other output stride), for its files.
    **{f"hrnetv2_w{width}": BackboneEntry(
        build=lambda width=width, **kwargs: _hrnetv2(width, **kwargs), normalization=IMAGENET_RGB, output_strides=(4,),
        imagenet_hint=hint,
    ) for width, hint in (
        (32, ("VainF initialises it from its model_best_epoch96_edit.pth (Google Drive only: https://drive.google.com/"
              "file/d/1NxCK7Zgn5PmeS7W1jYLt5J9E0RRZ2oyF; its keys under 'state_dict', with an ImageNet classifier "
              "'bn_classifier'), which atrous does not read as a backbone file")),
        (48, "VainF publishes no ImageNet weights for it (its hrnetv2.py: 'HRNetv2-48 not available yet')"),
    )},
}


def backbone_entry(name: str) -> BackboneEntry:
    """The registry entry of ``name``: one of ``BACKBONES``, or ``timm:<model name>`` (any timm CNN)."""
    from .timm_backbone import is_timm, timm_entry

    if is_timm(name):
        return timm_entry(name)
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)} or timm:<model name> "
                          "(pip install 'atrous[timm]'; timm.list_models('*pattern*') lists them)")  # fmt: skip
    return BACKBONES[name]


def build_backbone(
    name: str,
    *,
    output_stride: int,
    multi_grid: Sequence[int] | None = None,
    multi_grid_absolute: bool = False,
    first_block_dilation: str | None = None,
) -> Backbone:
    """Build a randomly initialised backbone by name (see ``BACKBONES``), dilated to ``output_stride``."""
    entry = backbone_entry(name)
    if output_stride not in entry.output_strides:
        choices = list(entry.output_strides)
        raise ConfigError(f"unsupported output_stride {output_stride!r}; choose from {choices} on {name}")
    rule = {"first_block": first_block_dilation} if first_block_dilation is not None else {}
    if multi_grid_absolute:
        if not entry.absolute_multi_grid:
            supported = sorted(key for key, value in BACKBONES.items() if value.absolute_multi_grid)
            raise ConfigError(f"multi_grid_absolute is not an option of {name}; backbones with it: {supported}")
        rule["multi_grid_absolute"] = True
    backbone = entry.build(output_stride=output_stride, multi_grid=multi_grid, **rule)
    backbone.normalization = entry.normalization
    return backbone
