"""KerasHub's DeepLabV3+ files: a preset folder or Hub repository (``config.json`` = the ``DeepLabV3Backbone``,
``model.weights.h5`` its weights, ``task.json`` + ``task.weights.h5`` the segmenter's classifier) or one
``segmenter.save_weights`` file, read by ``atrous.weights.keras_h5`` as ``{layer name/index: array}``.

Layer names are KerasHub's (``conv1_conv``, ``stack2_block0_1_bn``, ``aspp_conv_3``, ``decoder_conv``,
``segmentation_output``); a file whose groups carry no names is mapped from Keras's class-counter paths, whose order
for this network is fixed (``_named``). Kernels HWIO -> OIHW; BatchNorm gamma, beta, moving mean, moving variance.
atrous's logits are the classifier's output: a task saved with ``activation="softmax"`` gives their softmax (the same
argmax)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...errors import WeightsError
from ...models.normalization import InputNormalization
from ...models.spec import ModelSpec
from ...weights.format import Format
from .resnet import RESNET50_BLOCKS

# The preset's image converter has neither scale nor offset: the network takes RGB values 0..255 as they are.
KERAS_RAW_RGB = InputNormalization(name="raw_rgb", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), channel_order="RGB")
_BN = ("weight", "bias", "running_mean", "running_var")
_HEAD = {"aspp_conv_1": "head.aspp.branch1x1.conv", "aspp_bn_1": "head.aspp.branch1x1.bn",
         **{f"aspp_conv_{i}": f"head.aspp.atrous_branches.{i - 2}.conv" for i in (2, 3, 4)},
         **{f"aspp_bn_{i}": f"head.aspp.atrous_branches.{i - 2}.bn" for i in (2, 3, 4)},
         "conv_pooling": "head.aspp.pooling.conv", "bn_pooling": "head.aspp.pooling.bn",
         "conv_projection": "head.aspp.project.conv", "bn_projection": "head.aspp.project.bn",
         "decoder_conv": "head.low_project.conv", "decoder_norm": "head.low_project.bn",
         "segmentation_head_conv": "head.fuse.conv", "segmentation_head_norm": "head.fuse.bn",
         "segmentation_output": "head.classifier"}  # fmt: skip
_BLOCK = re.compile(r"stack(\d+)_block(\d+)_(\d|pre_activation)_(conv|bn)")


def _name(layer: str) -> str | None:
    """atrous's module for a KerasHub layer name, or None for one that is not part of the network atrous builds."""
    if layer in _HEAD:
        return _HEAD[layer]
    if layer in ("conv1_conv", "conv1_bn"):
        return {"conv1_conv": "backbone.stem_conv", "conv1_bn": "backbone.stem_bn"}[layer]
    match = _BLOCK.fullmatch(layer)
    if match is None:
        return None
    stack, block, part, kind = match.groups()
    which = "pre" if part == "pre_activation" else part
    return f"backbone.stacks.{stack}.{block}.{kind}{which}".replace("bnpre", "bn_pre")


def _named(state: Mapping[str, torch.Tensor], pre_activation: bool) -> dict[str, torch.Tensor]:
    """Keys of groups without a ``name`` attribute (``layers/.../conv2d_7/vars/0``) -> layer names: Keras counts each
    class in the functional model's layer order, which for this network is per block conv 1, 2, shortcut 0, 3."""
    paths = {key.rsplit("/", 1)[0]: key for key in state if "/vars/" in key}
    if not paths:
        return dict(state)
    convs, norms = ["conv1_conv"], [] if pre_activation else ["conv1_bn"]
    for stack, count in enumerate(RESNET50_BLOCKS):
        for block in range(count):
            prefix = f"stack{stack}_block{block}_"
            parts = ["1", "2", "0", "3"] if block == 0 else ["1", "2", "3"]
            convs += [f"{prefix}{part}_conv" for part in parts]
            norms += [f"{prefix}pre_activation_bn", f"{prefix}1_bn", f"{prefix}2_bn"] if pre_activation else \
                [f"{prefix}{part}_bn" for part in parts]  # fmt: skip
    layers = {f"functional/layers/conv2d{_counter(i)}": name for i, name in enumerate(convs)}
    layers |= {f"functional/layers/batch_normalization{_counter(i)}": name for i, name in enumerate(norms)}
    pyramid = "spatial_pyramid_pooling/aspp_parallel_channels/"
    for branch in range(4):
        layers[f"{pyramid}sequential{_counter(branch)}/layers/conv2d"] = f"aspp_conv_{branch + 1}"
        layers[f"{pyramid}sequential{_counter(branch)}/layers/batch_normalization"] = f"aspp_bn_{branch + 1}"
    layers |= {f"{pyramid}sequential_4/layers/conv2d": "conv_pooling",
               f"{pyramid}sequential_4/layers/batch_normalization": "bn_pooling",
               "spatial_pyramid_pooling/projection/layers/conv2d": "conv_projection",
               "spatial_pyramid_pooling/projection/layers/batch_normalization": "bn_projection",
               "conv2d": "decoder_conv", "batch_normalization": "decoder_norm",
               "conv2d_1": "segmentation_head_conv", "batch_normalization_1": "segmentation_head_norm"}  # fmt: skip
    # The segmenter's own layer, the classifier: "layers/conv2d" in a whole segmenter's file (the backbone's layers
    # under layers/deep_lab_v3_backbone/), "task/layers/conv2d" from a preset's task.weights.h5 (read.read_folder).
    whole_segmenter = any(key.startswith("layers/deep_lab_v3_backbone/") for key in state)
    classifier = {"task/layers/conv2d/vars", *(["layers/conv2d/vars"] if whole_segmenter else [])}
    renamed = {}
    for key, value in state.items():
        group, _, index = key.rpartition("/")
        inner = re.sub(r"^(layers/deep_lab_v3_backbone/)?layers/", "", group.removesuffix("/vars"))
        name = "segmentation_output" if group in classifier else layers.get(inner, group)
        renamed[f"{name}/{index}"] = value
    return renamed


def _counter(index: int) -> str:
    return f"_{index}" if index else ""


def _pre_activation(state: Mapping) -> bool:
    """v2: its blocks' pre-activation BatchNorms by name, or its final post_bn, which sits under image_encoder/."""
    return any("pre_activation_bn/" in key or key.startswith("post_bn/") or "image_encoder/" in key for key in state)


def _recognise(state, source) -> bool:
    keys = set(state)
    named = {"segmentation_output/0", "aspp_conv_1/0"} <= keys
    unnamed = any(key.endswith("spatial_pyramid_pooling/projection/layers/conv2d/vars/0") for key in keys)
    return named or unnamed


def _network(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _named(state, _pre_activation(state)) if any("/vars/" in key for key in state) else dict(state)


def set_aside(state):
    """(the network's variables, report lines): v2's final ``post_bn`` (DeepLabV3 reads the stacks' raw outputs) and
    the compiled optimizer's scalars are not the network."""
    state = _network(state)
    kept = {key: value for key, value in state.items() if _name(key.rsplit("/", 1)[0]) is not None}
    other = sorted({key.rsplit("/", 1)[0] for key in set(state) - set(kept)})
    why = "not read by KerasHub's DeepLabV3 (post_bn) or training state (the optimizer's)"
    return kept, [f"ignored {', '.join(other)}: {why}"] if other else []


def _translate(state, model):
    kept, _ = set_aside(state)
    translated = {}
    for key, value in kept.items():
        layer, _, index = key.rpartition("/")
        module = _name(layer)
        if layer.endswith(("_bn", "_norm")) or layer.startswith(("aspp_bn", "bn_")):
            translated[f"{module}.{_BN[int(index)]}"] = value
        elif index == "0":
            translated[f"{module}.weight"] = value.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        else:
            translated[key] = value  # a bias: KerasHub's convs have none; reported as unexpected
    return translated, ""


def _describe(state, contents, source):
    config = contents.get("config") if isinstance(contents, Mapping) else None
    backbone = config.get("config", {}) if isinstance(config, Mapping) else {}
    encoder = backbone.get("image_encoder", {}).get("config", {}) if isinstance(backbone, Mapping) else {}
    assumed = []  # a weights file without the preset's config.json: its keys say v1 or v2, its shapes ResNet-50
    expected = {"stackwise_num_blocks": list(RESNET50_BLOCKS), "stackwise_num_filters": [64, 128, 256, 512],
                "stackwise_num_strides": [1, 2, 2, 2], "block_type": "bottleneck_block"}  # fmt: skip
    for field, value in expected.items():
        given = encoder.get(field, value)
        if (list(given) if isinstance(given, (list, tuple)) else given) != value:
            raise WeightsError(f"{source}: a KerasHub ResNet with {field}={encoder[field]}: atrous builds the ResNet-50 "
                               f"of KerasHub's DeepLabV3 preset ({field}={value})")  # fmt: skip
    for field, value in (("low_level_feature_key", "P2"), ("spatial_pyramid_pooling_key", "P5"), ("upsampling_size", 8),
                         ("projection_filters", 48)):  # fmt: skip
        if field in backbone and backbone[field] != value:
            raise WeightsError(f"{source}: a KerasHub DeepLabV3 with {field}={backbone[field]!r}: atrous builds its "
                               f"preset's ({field}={value!r})")  # fmt: skip
    _check_input(contents, source)
    pre_activation = encoder.get("use_pre_activation", _pre_activation(state))
    kept, _ = set_aside(state)
    if "segmentation_output/0" not in kept:
        raise WeightsError(f"{source}: KerasHub DeepLabV3 weights without segmentation_output (the classifier): pass "
                           "the preset folder (task.weights.h5 holds it) or the segmenter's save_weights file")  # fmt: skip
    rates = tuple(backbone.get("dilation_rates", (6, 12, 18)))
    return ModelSpec(name="deeplabv3plus_keras_hub", backbone="resnet50_v2_keras_hub" if pre_activation else
                     "resnet50_keras_hub", atrous_rates=rates, output_stride=32,
                     num_classes=kept["segmentation_output/0"].shape[-1]), assumed  # fmt: skip


def _check_input(contents, source) -> None:
    """The preset's image converter must feed RGB 0..255 unscaled (what atrous builds); any other scale is named."""
    preprocessor = contents.get("preprocessor.json") if isinstance(contents, Mapping) else None
    converter = (preprocessor or {}).get("config", {}).get("image_converter", {}).get("config", {}) \
        if isinstance(preprocessor, Mapping) else {}  # fmt: skip
    scale, offset = converter.get("scale"), converter.get("offset")
    if scale not in (None, 1, 1.0) or offset not in (None, 0, 0.0):
        raise WeightsError(f"{source}: its image converter scales the input (scale {scale}, offset {offset}); atrous "
                           "builds KerasHub's DeepLabV3 preset, which feeds RGB 0..255 as it is")  # fmt: skip


def _hints(model) -> list[str]:
    sizes = ("KerasHub's own forward needs image sides that are multiples of 32 (its x8 upsampling must meet P2's "
             "grid); atrous resizes to P2's grid, which is the same map at those sizes")  # fmt: skip
    return [sizes]


FORMATS = [Format("keras_hub_deeplabv3", _recognise, _translate, _describe, KERAS_RAW_RGB, hints=_hints,
                  aside=set_aside)]  # fmt: skip
