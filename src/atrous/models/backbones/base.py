"""What every backbone is: the ``Backbone`` base class, ``dilate()`` (output stride by dilation), the ResNet wrapper
the three ResNet families share (torchvision's, DeepLab-v2's Caffe one, mmsegmentation's V1c), and the registry entry
that holds a backbone's facts (``BackboneEntry``: builder, input normalisation, ImageNet weights and their key
layout).

Every backbone returns ``{"low": ..., "aux": ..., "out": ...}``:
- ``low``: the last stride-4 feature map (DeepLabV3+ decoder input),
- ``aux``: the feature map the auxiliary head reads (ResNet ``layer3``),
- ``out``: the last feature map (ASPP / classifier input), at the backbone's output stride.
``backbone.channels`` and ``backbone.strides`` give the channel count and stride of each, so heads never hard-code
``in_channels``. A new backbone is one ``BackboneEntry`` in its family's module (or its publisher's folder), listed by
``atrous.registry``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...errors import ConfigError
from ..normalization import InputNormalization

# The output strides a backbone reaches by trading strides for dilation; a backbone whose stride is part of its
# architecture lists its own (``BackboneEntry.output_strides``: HRNet's 4).
OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)


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


def convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def strided_convs(blocks: Sequence[nn.Module]) -> tuple[list[nn.Conv2d], int]:
    """A stage's strided convs (all in its first block, shortcut included) and the stage's stride."""
    strided = [conv for conv in convs(blocks[0]) if conv.stride[0] > 1]
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
        strided, stage_stride = strided_convs(blocks)
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
                targets = dilated_convs(block) if dilated_convs else [c for c in convs(block) if c.kernel_size[0] > 1]
                for conv in targets:
                    _set_dilation(conv, block_dilation)
        strides.append(stride)
    return strides


def out_channels(module: nn.Module) -> int:
    return convs(module)[-1].out_channels


# ------------------------------------------------------------------------------------------------ ResNets


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

