"""Model construction: ``build_model(spec or name, **fields)``, the architectures and the named presets."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .atrous_conv import adopt_dilated_convs
from .backbones import BACKBONES, Backbone, build_backbone
from .heads import (
    ClassifierHead,
    DeepLabV2Head,
    DeepLabV3BottleneckHead,
    DeepLabV3Head,
    DeepLabV3PaperHead,
    DeepLabV3PlusBottleneckHead,
    DeepLabV3PlusHead,
    DeepLabV3PlusLowFirstHead,
    DeepLabV3PlusPairHead,
    FCNHead,
)
from .normalization import CAFFE_BGR, IMAGENET_RGB, InputNormalization
from .segmenter import SegmentationOutput, Segmenter
from .spec import ModelSpec

log = logging.getLogger(__name__)


def _scaled_rates(output_stride: int) -> tuple[int, ...]:
    # The paper's (6, 12, 18) are for OS16; the rates scale with the feature resolution (doubled at OS8).
    return tuple(rate * 16 // output_stride for rate in (6, 12, 18))


@dataclass(frozen=True)
class Architecture:
    """A head layout and its defaults.

    head(*, channels, num_classes, atrous_rates[, separable]) -> the main head; aux_head(*, channels, num_classes,
    atrous_rates) -> the auxiliary head. ``channels`` is the backbone's feature name -> channel count.
    """

    head: Callable[..., nn.Module]
    aux_head: Callable[..., nn.Module]
    backbone: str
    output_stride: int
    default_rates: Callable[[int], tuple[int, ...]] = _scaled_rates
    frozen_bn: str = "none"
    head_lr_mult: float = 1.0
    separable: bool = True  # whether the head has the atrous-separable option
    align_corners: bool = False  # whether the head upsamples inside, as ``spec.align_corners`` says


def _deeplabv2_aux(**kwargs) -> DeepLabV2Head:
    # The port's auxiliary classifier ("layer5") is the same summed classifier on layer3.
    return DeepLabV2Head(**kwargs, feature="aux")


MODELS: dict[str, Architecture] = {
    "deeplabv2": Architecture(
        DeepLabV2Head, _deeplabv2_aux, backbone="resnet101_caffe", output_stride=8,
        default_rates=lambda output_stride: (6, 12, 18, 24), frozen_bn="all", head_lr_mult=10.0, separable=False,
    ),
    "deeplabv3": Architecture(DeepLabV3Head, FCNHead, backbone="resnet50", output_stride=16),
    "deeplabv3plus": Architecture(DeepLabV3PlusHead, FCNHead, backbone="resnet50", output_stride=16, align_corners=True),
    # The DeepLabV3+ decoders of two popular implementations, for their files (from_pretrained):
    # segmentation_models_pytorch's (pair-separable convs, one decoder conv) and VainF's (low-level first, one conv).
    "deeplabv3plus_smp": Architecture(DeepLabV3PlusPairHead, FCNHead, backbone="resnet50", output_stride=16,
                                      default_rates=lambda output_stride: (12, 24, 36), align_corners=True),
    "deeplabv3plus_vainf": Architecture(DeepLabV3PlusLowFirstHead, FCNHead, backbone="resnet50", output_stride=16),
    # The network of DeepLab-v2's COCO-pretrained init file (kazuto1011's "DeepLabV1"): the Caffe ResNet-101 at OS8
    # and a 1x1 classifier.
    "deeplabv1_kazuto": Architecture(ClassifierHead, FCNHead, backbone="resnet101_caffe", output_stride=8,
                                     default_rates=lambda output_stride: (), frozen_bn="all", head_lr_mult=10.0,
                                     separable=False),
    # kazuto1011/deeplab-pytorch's DeepLabV3 (ASPP straight into the classifier, as in the paper).
    "deeplabv3_kazuto": Architecture(DeepLabV3PaperHead, FCNHead, backbone="resnet101_caffe", output_stride=16),
    # mmsegmentation's ASPPHead / DepthwiseSeparableASPPHead (512 channels, image pooling first, 3x3 bottleneck; the
    # V3+ one always separable, the V3 one never).
    "deeplabv3_mmseg": Architecture(DeepLabV3BottleneckHead, FCNHead, backbone="resnet50_v1c", output_stride=8,
                                    separable=False),
    "deeplabv3plus_mmseg": Architecture(DeepLabV3PlusBottleneckHead, FCNHead, backbone="resnet50_v1c", output_stride=8,
                                        separable=False),
}  # fmt: skip


# Named specs. The torchvision ones reproduce torchvision's DeepLabV3 models (load their files with load_weights
# or `--preset NAME --weights FILE`): OS8 for the ResNets, rates (12, 24, 36) at both strides, an aux head.
PRESETS: dict[str, ModelSpec] = {
    "deeplabv3_resnet50": ModelSpec(name="deeplabv3", backbone="resnet50", output_stride=8, atrous_rates=(12, 24, 36), aux=True),
    "deeplabv3_resnet101": ModelSpec(name="deeplabv3", backbone="resnet101", output_stride=8, atrous_rates=(12, 24, 36), aux=True),
    "deeplabv3_mobilenet_v3_large": ModelSpec(
        name="deeplabv3", backbone="mobilenet_v3_large", output_stride=16, atrous_rates=(12, 24, 36), aux=True
    ),
    # DeepLab-v2 as published (Caffe ResNet-101, OS8, rates 6-24) for PASCAL VOC's 21 classes.
    "deeplabv2_resnet101_caffe": ModelSpec(name="deeplabv2", backbone="resnet101_caffe", num_classes=21),
}  # fmt: skip
TORCHVISION_DEEPLABV3: dict[str, ModelSpec] = {name: PRESETS[name] for name in PRESETS if name.startswith("deeplabv3_")}


def list_models() -> list[str]:
    """The architecture names ``build_model`` accepts."""
    return sorted(MODELS)


def list_backbones() -> list[str]:
    """The backbone names ``build_model`` accepts."""
    return sorted(BACKBONES)


def list_presets() -> list[str]:
    return sorted(PRESETS)


def preset(name: str) -> ModelSpec:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {list_presets()}")
    return PRESETS[name]


def make_spec(spec: ModelSpec | str | None = None, /, **fields) -> ModelSpec:
    """``spec`` (a ``ModelSpec``, or an architecture name) with ``fields`` replaced; see ``ModelSpec``."""
    if isinstance(spec, str):
        spec, fields = None, {"name": spec, **fields}
    try:
        return dataclasses.replace(spec, **fields) if spec is not None else ModelSpec(**fields)
    except TypeError as error:  # an unknown field name
        names = [f.name for f in dataclasses.fields(ModelSpec)]
        raise ConfigError(f"{error}; the model fields are {names}") from error


def build_model(spec: ModelSpec | str | None = None, /, **fields) -> Segmenter:
    """Build a DeepLab model from a ``ModelSpec``, or from its fields.

        build_model("deeplabv3plus", backbone="resnet18", num_classes=7)
        build_model(PRESETS["deeplabv3_resnet50"], num_classes=19)

    The fields and their defaults are ``ModelSpec``'s. The returned model's ``spec`` is the architecture with
    every default written in and the init fields (``pretrained_backbone``, ``weights``) cleared.
    """
    spec = make_spec(spec, **fields).resolved()
    arch = MODELS[spec.name]
    body = build_backbone(spec.backbone, output_stride=spec.output_stride, multi_grid=spec.multi_grid,
                          multi_grid_absolute=spec.multi_grid_absolute,
                          first_block_dilation=spec.first_block_dilation)  # fmt: skip
    adopt_dilated_convs(body)  # the dilated stages' 3x3 convolutions skip dead taps and train fast on the CPU
    rates = spec.atrous_rates if spec.atrous_rates is not None else arch.default_rates(spec.output_stride)
    common = {"channels": body.channels, "num_classes": spec.num_classes, "atrous_rates": rates}
    options = {"separable": spec.separable} if arch.separable else {}
    options |= {"align_corners": spec.align_corners} if arch.align_corners else {}
    head = arch.head(**common, **options)
    model = Segmenter(
        backbone=body,
        head=head,
        aux_head=arch.aux_head(**common) if spec.aux else None,
        num_classes=spec.num_classes,
        head_lr_mult=spec.head_lr_mult,
        spec=spec.architecture(),
        align_corners=spec.align_corners,
    )
    if spec.pretrained_backbone is not None:
        from .weights import load_pretrained_backbone

        log.info("%s", load_pretrained_backbone(model, spec.pretrained_backbone))
    if spec.weights is not None:
        from .weights import load_weights

        log.info("%s", load_weights(model, spec.weights))
    if spec.frozen_bn != "none":
        model.freeze_batchnorm(stats=spec.frozen_bn == "all")
    return model


__all__ = [
    "BACKBONES",
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "MODELS",
    "PRESETS",
    "TORCHVISION_DEEPLABV3",
    "Architecture",
    "Backbone",
    "InputNormalization",
    "ModelSpec",
    "SegmentationOutput",
    "Segmenter",
    "build_model",
    "list_backbones",
    "list_models",
    "list_presets",
    "make_spec",
    "preset",
]
