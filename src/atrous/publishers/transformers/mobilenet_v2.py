"""transformers' ``MobileNetV2ForSemanticSegmentation`` (google/deeplabv3_mobilenet_v2_1.0_513, converted from
Google's TensorFlow DeepLab): Google's MobileNetV2 (TF 'SAME' padding, BatchNorm eps 1e-3, ReLU6) and DeepLabV3 head
without rates (image pooling and a 1x1 branch, BatchNorm eps 1e-5, concatenated pooling first): atrous builds it as
Google's own (``deeplabv3_google`` on ``mobilenet_v2_google``); only the names differ. Facts:
``transformers/models/mobilenet_v2/modeling_mobilenet_v2.py`` (5.x)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...errors import WeightsError
from ...models.spec import ModelSpec
from ...weights.keys import Table, classes, rename_all

PREFIX = "mobilenet_v2."
_CONV, _BN = r"convolution\.", r"normalization\."
# (transformers' layer, atrous's) for each conv + BatchNorm pair.
_LAYERS = [
    (r"conv_stem\.first_conv\.", "backbone.stem."),
    (r"conv_stem\.conv_3x3\.", "backbone.units.0.depthwise."),
    (r"conv_stem\.reduce_1x1\.", "backbone.units.0.project."),
    (r"layer\.(\d+)\.expand_1x1\.", lambda m: f"backbone.units.{int(m[1]) + 1}.expand."),
    (r"layer\.(\d+)\.conv_3x3\.", lambda m: f"backbone.units.{int(m[1]) + 1}.depthwise."),
    (r"layer\.(\d+)\.reduce_1x1\.", lambda m: f"backbone.units.{int(m[1]) + 1}.project."),
]
_HEAD = [
    ("conv_pool.", "head.aspp.pooling."),
    ("conv_aspp.", "head.aspp.branch1x1."),
    ("conv_projection.", "head.aspp.project."),
]


def _table() -> Table:
    table: Table = []
    for theirs, ours in _LAYERS:
        table.append((rf"^mobilenet_v2\.{theirs}{_CONV}", _then(ours, "0.")))
        table.append((rf"^mobilenet_v2\.{theirs}{_BN}", _then(ours, "1.")))
    for theirs, ours in _HEAD:
        table.append((rf"^segmentation_head\.{theirs.replace('.', '[.]')}{_CONV}", f"{ours}conv."))
        table.append((rf"^segmentation_head\.{theirs.replace('.', '[.]')}{_BN}", f"{ours}bn."))
    table.append((r"^segmentation_head\.classifier\.convolution\.", "head.classifier."))
    return table


def _then(ours, suffix: str):
    return (lambda m: ours(m) + suffix) if callable(ours) else ours + suffix


def recognise(state: Mapping) -> bool:
    return "mobilenet_v2.conv_stem.first_conv.convolution.weight" in state


# Fields of MobileNetV2Config that atrous's port (Google's network) takes as they are in Google's conversion.
_GOOGLES = {"depth_multiplier": 1.0, "tf_padding": True, "layer_norm_eps": 0.001, "hidden_act": "relu6",
            "first_layer_is_expansion": True}  # fmt: skip


def describe(state: Mapping, config: Mapping, source: str) -> tuple[ModelSpec, list[tuple[str, str]]]:
    if "segmentation_head.classifier.convolution.weight" not in state:
        raise WeightsError(f"{source}: transformers' MobileNetV2 without a segmentation head (an ImageNet classifier): "
                           "not a segmentation model")  # fmt: skip
    for field, value in _GOOGLES.items():
        if field in config and config[field] != value:
            raise WeightsError(f"{source}: a transformers MobileNetV2 with {field}={config[field]!r}: atrous builds "
                               f"the one converted from Google's DeepLab ({field}={value!r})")  # fmt: skip
    assumed = []
    if "output_stride" in config:
        output_stride = config["output_stride"]
    else:
        output_stride = 8
        why = "output stride 8, google/deeplabv3_mobilenet_v2_1.0_513's (a state dict without its config.json does not say)"
        assumed.append(("output_stride", why))
    return ModelSpec(name="deeplabv3_google", backbone="mobilenet_v2_google", output_stride=output_stride,
                     atrous_rates=(), num_classes=classes(state, "segmentation_head.classifier.convolution.bias"),
                     align_corners=False), assumed  # fmt: skip


def set_aside(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The final 1x1 conv (320 -> 1280 channels) is in every MobileNetV2Model; the segmentation head never reads it."""
    unused = [key for key in state if key.startswith("mobilenet_v2.conv_1x1.")]
    kept = {key: value for key, value in state.items() if key not in unused}
    note = f"ignored mobilenet_v2.conv_1x1 ({len(unused)} tensors): transformers builds it, its segmentation head never reads it"
    return kept, [note] if unused else []


def translate(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state, _ = set_aside(state)
    translated = rename_all(state, _table())
    projection = "head.aspp.project.conv.weight"
    if projection in translated:  # transformers concatenates (pooling, 1x1); atrous (1x1, pooling)
        weight = translated[projection]
        half = weight.shape[1] // 2
        translated[projection] = torch.cat([weight[:, half:], weight[:, :half]], dim=1)
    return translated
