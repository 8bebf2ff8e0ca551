"""Model construction: ``build_model(name, *, backbone, num_classes, ...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from .backbones import BACKBONES, Backbone, build_backbone
from .heads import DeepLabV2Head, DeepLabV3Head, DeepLabV3PlusHead, FCNHead
from .normalization import CAFFE_BGR, IMAGENET_RGB, InputNormalization
from .segmenter import SegmentationOutput, Segmenter

FROZEN_BN_CHOICES = ("none", "affine", "all")


def _default_rates(output_stride: int) -> tuple[int, int, int]:
    # The paper's (6, 12, 18) are for OS16; the rates scale with the feature resolution (doubled at OS8).
    return tuple(rate * 16 // output_stride for rate in (6, 12, 18))  # type: ignore[return-value]


def _deeplabv2_heads(backbone: Backbone, num_classes: int, aux: bool, atrous_rates, separable: bool):
    if separable:
        raise ValueError("separable convs are a DeepLabV3/V3+ option; deeplabv2's classifier has none")
    rates = tuple(atrous_rates) if atrous_rates is not None else (6, 12, 18, 24)
    head = DeepLabV2Head(in_channels=backbone.channels["out"], num_classes=num_classes, atrous_rates=rates)
    # The port's auxiliary classifier ("layer5") is the same summed classifier on layer3.
    aux_head = DeepLabV2Head(in_channels=backbone.channels["aux"], num_classes=num_classes, atrous_rates=rates)
    return head, (aux_head if aux else None)


def _deeplabv3_heads(backbone: Backbone, num_classes: int, aux: bool, atrous_rates, separable: bool):
    rates = tuple(atrous_rates) if atrous_rates is not None else _default_rates(backbone.output_stride)
    head = DeepLabV3Head(
        in_channels=backbone.channels["out"], num_classes=num_classes, atrous_rates=rates, separable=separable
    )
    return head, _fcn_aux(backbone, num_classes, aux)


def _deeplabv3plus_heads(backbone: Backbone, num_classes: int, aux: bool, atrous_rates, separable: bool):
    rates = tuple(atrous_rates) if atrous_rates is not None else _default_rates(backbone.output_stride)
    head = DeepLabV3PlusHead(
        in_channels=backbone.channels["out"],
        low_channels=backbone.channels["low"],
        num_classes=num_classes,
        atrous_rates=rates,
        separable=separable,
    )
    return head, _fcn_aux(backbone, num_classes, aux)


def _fcn_aux(backbone: Backbone, num_classes: int, aux: bool) -> nn.Module | None:
    return FCNHead(in_channels=backbone.channels["aux"], num_classes=num_classes) if aux else None


class _Architecture:
    def __init__(self, heads: Callable, *, output_stride: int, frozen_bn: str, head_lr_mult: float, backbone: str):
        self.heads = heads
        self.output_stride = output_stride
        self.frozen_bn = frozen_bn
        self.head_lr_mult = head_lr_mult
        self.backbone = backbone


MODELS: dict[str, _Architecture] = {
    "deeplabv2": _Architecture(
        _deeplabv2_heads, output_stride=8, frozen_bn="all", head_lr_mult=10.0, backbone="resnet101_caffe"
    ),
    "deeplabv3": _Architecture(_deeplabv3_heads, output_stride=16, frozen_bn="none", head_lr_mult=1.0, backbone="resnet50"),
    "deeplabv3plus": _Architecture(
        _deeplabv3plus_heads, output_stride=16, frozen_bn="none", head_lr_mult=1.0, backbone="resnet50"
    ),
}


# build_model arguments that reproduce torchvision's DeepLabV3 models (load their weights with load_weights).
TORCHVISION_DEEPLABV3: dict[str, dict] = {
    "deeplabv3_resnet50": {"name": "deeplabv3", "backbone": "resnet50", "output_stride": 8, "atrous_rates": (12, 24, 36)},
    "deeplabv3_resnet101": {
        "name": "deeplabv3", "backbone": "resnet101", "output_stride": 8, "atrous_rates": (12, 24, 36)
    },
    "deeplabv3_mobilenet_v3_large": {
        "name": "deeplabv3", "backbone": "mobilenet_v3_large", "output_stride": 16, "atrous_rates": (12, 24, 36)
    },
}


def list_models() -> list[str]:
    """The architecture names ``build_model`` accepts."""
    return sorted(MODELS)


def list_backbones() -> list[str]:
    """The backbone names ``build_model`` accepts."""
    return sorted(BACKBONES)


def build_model(
    name: str,
    *,
    backbone: str | None = None,
    num_classes: int,
    output_stride: int | None = None,
    aux: bool = False,
    atrous_rates: Sequence[int] | None = None,
    multi_grid: Sequence[int] | None = None,
    separable: bool = False,
    frozen_bn: str | None = None,
    head_lr_mult: float | None = None,
    pretrained_backbone: str | Path | None = None,
) -> Segmenter:
    """Build a DeepLab model.

    name: ``deeplabv2``, ``deeplabv3`` or ``deeplabv3plus``.
    backbone: see ``list_backbones()``; default ``resnet101_caffe`` for deeplabv2, ``resnet50`` otherwise.
    output_stride: 8, 16 or 32; default 8 for deeplabv2, 16 otherwise.
    atrous_rates: default (6, 12, 18, 24) for deeplabv2; (6, 12, 18) at OS16 for V3/V3+, doubled at OS8.
        ``TORCHVISION_DEEPLABV3`` holds the arguments that reproduce torchvision's models.
    multi_grid: per-block dilation multipliers of the last ResNet stage, e.g. (1, 2, 4).
    separable: atrous-separable (depthwise + pointwise) convs in ASPP and decoder (V3/V3+).
    frozen_bn: "none", "affine" (BN affine parameters not trained) or "all" (affine and running
        statistics frozen: BN stays in eval mode). Default "all" for deeplabv2, "none" otherwise.
    head_lr_mult: learning-rate multiplier of the heads in ``optim_parameters``; default 10 for deeplabv2.
    pretrained_backbone: None, "imagenet" (torchvision's weights API; downloads when online), or a path
        to any backbone weights file ``load_weights`` reads.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {list_models()}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    arch = MODELS[name]
    backbone_name = backbone or arch.backbone
    output_stride = output_stride or arch.output_stride
    frozen_bn = frozen_bn or arch.frozen_bn
    if frozen_bn not in FROZEN_BN_CHOICES:
        raise ValueError(f"unknown frozen_bn {frozen_bn!r}; choose from {list(FROZEN_BN_CHOICES)}")

    body = build_backbone(backbone_name, output_stride=output_stride, multi_grid=multi_grid)
    head, aux_head = arch.heads(body, num_classes, aux, atrous_rates, separable)
    spec = {
        "name": name,
        "backbone": backbone_name,
        "num_classes": num_classes,
        "output_stride": output_stride,
        "aux": aux,
        "atrous_rates": list(atrous_rates) if atrous_rates is not None else None,
        "multi_grid": list(multi_grid) if multi_grid is not None else None,
        "separable": separable,
        "frozen_bn": frozen_bn,
        "head_lr_mult": head_lr_mult if head_lr_mult is not None else arch.head_lr_mult,
    }
    model = Segmenter(
        backbone=body,
        head=head,
        aux_head=aux_head,
        num_classes=num_classes,
        head_lr_mult=spec["head_lr_mult"],
        spec=spec,
    )
    if pretrained_backbone is not None:
        from .weights import load_pretrained_backbone

        load_pretrained_backbone(model, pretrained_backbone)
    if frozen_bn != "none":
        model.freeze_batchnorm(stats=frozen_bn == "all")
    return model


def build_model_from_spec(spec: dict) -> Segmenter:
    """Rebuild a model from ``model.spec`` (as stored in atrous checkpoints)."""
    return build_model(**spec)


__all__ = [
    "CAFFE_BGR",
    "IMAGENET_RGB",
    "TORCHVISION_DEEPLABV3",
    "InputNormalization",
    "SegmentationOutput",
    "Segmenter",
    "build_model",
    "build_model_from_spec",
    "list_backbones",
    "list_models",
]
