"""Google's TensorFlow DeepLab checkpoints (``research/deeplab``), as ``atrous.weights.tf_bundle`` reads them: TF1
variable names (``xception_65/entry_flow/conv1_1/weights``, ``aspp1_depthwise/BatchNorm/moving_mean``,
``logits/semantic/biases``) over NHWC-era layouts. Here, once, at the edge: convolutions HWIO -> OIHW, depthwise
HWCM -> (C*M)1HW, BatchNorm gamma/beta/moving_* -> weight/bias/running_*, and the ASPP projection's input channels
from Google's concatenation (image pooling, 1x1, rates) to atrous's (1x1, rates, image pooling).

What a file holds besides the network is set aside before translation and named in the load report: Google's
eval.py and export_model.py restore variables by their own names (no moving averages: its training keeps none),
so ``global_step``, Momentum slots and any ``ExponentialMovingAverage`` shadows are not the published model."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ...errors import WeightsError
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import classes
from .layers import GOOGLE_RGB
from .xception import unit_names

_TRAINING_STATE = re.compile(r"(^global_step$|/Momentum(_\d+)?$|/ExponentialMovingAverage(_\d+)?$|/Adam(_\d+)?$)")
# The classifiers of ImageNet files: not part of a segmentation network.
_IMAGENET_CLASSIFIER = re.compile(r"^(xception_\d+/logits/|resnet_v1_\d+/logits/|MobilenetV2/(Logits|Conv_1)/)")
_BACKBONE_SCOPES = {"xception_41": "xception41_google", "xception_65": "xception65_google",
                    "xception_71": "xception71_google", "resnet_v1_50": "resnet50_beta_google",
                    "resnet_v1_101": "resnet101_beta_google", "MobilenetV2": "mobilenet_v2",
                    "MobilenetV3": "mobilenet_v3", "MobilenetEdgeTPU": "mobilenet_edgetpu"}  # fmt: skip
_NOT_BUILT = {"resnet_v1_18": "ResNet-v1-18", "pnasnet": "PNASNet", "hnasnet": "Auto-DeepLab's HNASNet"}
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def set_aside(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the network's variables, a line for the report on what was not taken and why)."""
    kept = {key: value for key, value in state.items() if not _TRAINING_STATE.search(key)}
    training = sorted(set(state) - set(kept))
    classifier = sorted(key for key in kept if _IMAGENET_CLASSIFIER.search(key))
    kept = {key: value for key, value in kept.items() if key not in classifier}
    notes = [(f"took the {len(kept)} variables of the network by their own names, as Google's eval.py and "
              "export_model.py restore them (its training keeps no moving averages)")]  # fmt: skip
    if training:
        kinds = sorted({re.sub(r"_\d+$", "", _TRAINING_STATE.search(key)[1].lstrip("/")) for key in training})
        notes.append(f"ignored {len(training)} variables of training state ({', '.join(kinds)}): not the network")
    if classifier:
        notes.append(f"ignored the ImageNet classifier ({len(classifier)} variables): not part of a segmentation "
                     "network")  # fmt: skip
    return kept, notes


def _scope(state: Mapping[str, torch.Tensor]) -> str | None:
    """The backbone's root scope: ``xception_65``, ``MobilenetV2``, ``resnet_v1_101``..."""
    roots = {key.split("/", 1)[0] for key in state}
    for root in roots:
        if root in _NOT_BUILT:
            raise WeightsError(f"a Google DeepLab checkpoint on {_NOT_BUILT[root]} ({root}/...): atrous "
                               "does not build that network yet (it builds Xception-41/65/71, MobileNetV2/V3, "
                               "EdgeTPU-MobileNet and ResNet-v1-50/101-beta)")  # fmt: skip
    found = [root for root in roots if root in _BACKBONE_SCOPES]
    return found[0] if len(found) == 1 else None


def _recognise(state, source) -> bool:
    return any("/" in key for key in state) and _scope(state) is not None


def _backbone(state, scope: str) -> str:
    if scope == "MobilenetV3":  # the large one has 15 expanded convs, the small 11
        return "mobilenet_v3_large_seg_google" if "MobilenetV3/expanded_conv_14/project/weights" in state else \
            "mobilenet_v3_small_seg_google"  # fmt: skip
    if scope == "MobilenetEdgeTPU":
        width = state["MobilenetEdgeTPU/Conv/weights"].shape[-1]
        if width not in (32, 24):
            raise WeightsError(f"Google's EdgeTPU-MobileNet with a {width}-channel first conv: atrous builds depth "
                               "multiplier 1.0 (32) and 0.75 (24)")  # fmt: skip
        return "mobilenet_edgetpu_google" if width == 32 else "mobilenet_edgetpu_dm075_google"
    if scope.startswith("resnet") and f"{scope}/conv1/weights" in state:
        raise WeightsError(f"Google's plain {scope} (a 7x7 stem, ImageNet-mean input): atrous builds the beta variant "
                           "(three 3x3 stem convs, conv1_1..conv1_3) that its DeepLab zoo publishes")  # fmt: skip
    if scope != "MobilenetV2":
        return _BACKBONE_SCOPES[scope]
    width = state["MobilenetV2/Conv/weights"].shape[-1]
    if width not in (32, 16):
        raise WeightsError(f"Google's MobileNetV2 with a {width}-channel first conv: atrous builds depth multiplier "
                           "1.0 (32) and 0.5 (16)")  # fmt: skip
    return "mobilenet_v2_google" if width == 32 else "mobilenet_v2_dm05_google"


def _describe(state, contents, source):
    state, _ = set_aside(state)
    scope = _scope(state)
    backbone = _backbone(state, scope)
    padding = ("pad_to", ("no padding: the image is its own crop (a checkpoint does not record Google's crop_size; "
                          "the zoo entries carry the published one)"))  # fmt: skip
    if "decoder/decoder_conv0/biases" in state:  # a decoder whose output is the logits: MobileNetV3's head
        assumed = [("output_stride", "output stride 32, Google's MobileNetV3 flags (not in a checkpoint)"), padding]
        return ModelSpec(name="deeplabv3plus_mnv3_google", backbone=backbone, output_stride=32, align_corners=True,
                         num_classes=classes(state, "decoder/decoder_conv0/biases")), assumed  # fmt: skip
    if "logits/semantic/weights" not in state:
        raise WeightsError(f"{source}: Google's {scope} checkpoint holds a backbone only (no logits/semantic), not a "
                           f"segmentation model: start a training from it, model.pretrained_backbone={source} (in "
                           "Python build_model(..., pretrained_backbone=path))")  # fmt: skip
    assumed = [("output_stride", "output stride 16, Google's eval.py default (a checkpoint does not record it)"), padding]
    fields = {"backbone": backbone, "num_classes": classes(state, "logits/semantic/biases"), "output_stride": 16,
              "align_corners": True}  # fmt: skip
    if "meta_architecture/branch0_depthwise/depthwise_weights" in state:
        return ModelSpec(name="deeplabv3plus_dpc_google", **fields), assumed
    branches = sum(1 for key in state if re.fullmatch(r"aspp[1-9]\d*(_depthwise/depthwise_weights|/weights)", key))
    # None: Google's MobileNetV2 models (1x1 and image pooling only). Three: its zoo's 6, 12, 18 at stride 16; other
    # counts come from other flags, whose rates a checkpoint does not record either: 6 apart is only a guess.
    fields["atrous_rates"] = tuple(6 * (i + 1) for i in range(branches))
    if branches:
        known = "Google's zoo's" if branches == 3 else "a guess: Google's zoo has 3 rates or none"
        rates = f"rates {fields['atrous_rates']} at output stride 16, {known} (not in a checkpoint)"
        assumed.append(("atrous_rates", rates))
    name = "deeplabv3plus" if "decoder/feature_projection0/weights" in state else "deeplabv3_google"
    if name == "deeplabv3_google" and state["aspp0/weights"].shape[-1] == 128:
        name = "deeplabv3_google_slim"  # EdgeTPU-DeepLab-slim's 128-channel ASPP
    # Google's ASPP and decoder convs are separable unless its flags said otherwise (then a plain 3x3 "aspp1").
    # (an ASPP without rates and no decoder has no separable conv: False, as the zoo's specs say)
    separable = "aspp1/weights" not in state and (branches > 0 or name == "deeplabv3plus")
    return ModelSpec(name=name, separable=separable, **fields), assumed


# ------------------------------------------------------------------------------------------------ translation


def _xception_scopes(depth: int) -> dict[str, tuple[str, str]]:
    scopes = {"entry_flow/conv1_1": ("stem.0", "stem.1"), "entry_flow/conv1_2": ("stem.3", "stem.4")}
    for index, unit in enumerate(unit_names(depth)):
        prefix, ours = f"{unit}/xception_module", f"units.{index}"
        for i in (1, 2, 3):
            scopes[f"{prefix}/separable_conv{i}_depthwise"] = (f"{ours}.convs.{i - 1}.depthwise",
                                                               f"{ours}.convs.{i - 1}.depthwise_bn")  # fmt: skip
            scopes[f"{prefix}/separable_conv{i}_pointwise"] = (f"{ours}.convs.{i - 1}.pointwise",
                                                               f"{ours}.convs.{i - 1}.pointwise_bn")  # fmt: skip
        scopes[f"{prefix}/shortcut"] = (f"{ours}.shortcut", f"{ours}.shortcut_bn")
    return scopes


def _mobilenet_scopes() -> dict[str, tuple[str, str]]:
    scopes = {"Conv": ("stem.0", "stem.1")}
    for index in range(17):
        unit = "expanded_conv" if index == 0 else f"expanded_conv_{index}"
        for part in ("expand", "depthwise", "project"):
            scopes[f"{unit}/{part}"] = (f"units.{index}.{part}.0", f"units.{index}.{part}.1")
    return scopes


def _resnet_scopes(depth: int) -> dict[str, tuple[str, str]]:
    scopes = {f"conv1_{i}": (f"stem.{2 * (i - 1)}.0", f"stem.{2 * (i - 1)}.1") for i in (1, 2, 3)}
    for block, count in enumerate({50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]):
        for unit in range(count):
            for part in ("conv1", "conv2", "conv3", "shortcut"):
                ours = f"blocks.{block}.{unit}.{part}"
                scopes[f"block{block + 1}/unit_{unit + 1}/bottleneck_v1/{part}"] = (f"{ours}.0", f"{ours}.1")
    return scopes


def _mobilenet_v3_scopes(state, scope: str) -> dict[str, tuple[str, str | None]]:
    """Google's names of the ``GoogleMobileNetV3`` units in order: Conv, expanded_conv, expanded_conv_1 ..., Conv_1."""
    count = sum(1 for key in state if re.fullmatch(rf"{scope}/expanded_conv(_\d+)?/project/weights", key))
    scopes = {"Conv": ("units.0.0", "units.0.1"), "Conv_1": (f"units.{count + 1}.0", f"units.{count + 1}.1")}
    for index in range(count):
        unit, ours = "expanded_conv" + (f"_{index}" if index else ""), f"units.{index + 1}"
        for part in ("expand", "depthwise", "project"):
            scopes[f"{unit}/{part}"] = (f"{ours}.{part}.0", f"{ours}.{part}.1")
        scopes[f"{unit}/squeeze_excite/Conv"] = (f"{ours}.squeeze_excite.squeeze", None)
        scopes[f"{unit}/squeeze_excite/Conv_1"] = (f"{ours}.squeeze_excite.excite", None)
    return scopes


def _backbone_scopes(state, scope: str) -> dict[str, tuple[str, str | None]]:
    if scope in ("MobilenetV3", "MobilenetEdgeTPU"):
        return _mobilenet_v3_scopes(state, scope)
    if scope == "MobilenetV2":
        return _mobilenet_scopes()
    depth = int(scope.rsplit("_", 1)[1])
    return _xception_scopes(depth) if scope.startswith("xception") else _resnet_scopes(depth)


# MobileNetV3's head (``MobileNetV3SegHead``): image pooling with a bias and no BN, a decoder of 1x1 convs with bias.
_MOBILENET_V3_HEAD = {"image_pooling": ("image_pooling", None), "aspp0": ("aspp0.conv", "aspp0.bn"),
                      "decoder/decoder_conv0": ("classifiers.0", None),
                      "decoder/feature_projection0": ("classifiers.1", None)}  # fmt: skip


def _head_scopes(state) -> dict[str, tuple[str, str | None]]:
    if "decoder/decoder_conv0/biases" in state:
        return _MOBILENET_V3_HEAD
    scopes = {"image_pooling": ("aspp.pooling.conv", "aspp.pooling.bn"), "aspp0": ("aspp.branch1x1.conv", "aspp.branch1x1.bn"),
              "concat_projection": ("aspp.project.conv", "aspp.project.bn"), "logits/semantic": ("classifier", None),
              "decoder/feature_projection0": ("low_project.conv", "low_project.bn"),
              "meta_architecture/concat_projection": ("cell.project.conv", "cell.project.bn")}  # fmt: skip
    for i in range(1, 10):
        branch = f"aspp.atrous_branches.{i - 1}"
        scopes[f"aspp{i}"] = (f"{branch}.conv", f"{branch}.bn")
        for part in ("depthwise", "pointwise"):
            scopes[f"aspp{i}_{part}"] = (f"{branch}.{part}.conv", f"{branch}.{part}.bn")
            scopes[f"meta_architecture/branch{i - 1}_{part}"] = (f"cell.branches.{i - 1}.{part}.conv",
                                                                 f"cell.branches.{i - 1}.{part}.bn")  # fmt: skip
    for i, ours in ((0, "fuse1"), (1, "fuse2")):
        for part in ("depthwise", "pointwise"):
            scopes[f"decoder/decoder_conv{i}_{part}"] = (f"{ours}.{part}.conv", f"{ours}.{part}.bn")
    return scopes


def _tensor(variable: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    """A variable's own name (``weights``, ``BatchNorm/gamma``...) -> (atrous's, the tensor in PyTorch's layout)."""
    if variable == "weights":
        return "weight", value.permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
    if variable == "depthwise_weights":
        height, width, channels, multiplier = value.shape
        return "weight", value.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width).contiguous()
    if variable == "biases":
        return "bias", value
    kind = variable.removeprefix("BatchNorm/")
    if kind in _BN:
        return _BN[kind], value
    raise KeyError(variable)


def _aspp_order(projection: torch.Tensor, branches: int) -> torch.Tensor:
    """Google concatenates (image pooling, 1x1, rates...); atrous (1x1, rates..., image pooling): the projection's
    input channels moved by one branch."""
    width = projection.shape[1] // branches
    return torch.cat([projection[:, width:], projection[:, :width]], dim=1)


def _translate(state, model):
    state, _ = set_aside(state)
    scope = _scope(state)
    places = {f"{scope}/{tf}": tuple(f"backbone.{part}" if part else None for part in ours)
              for tf, ours in _backbone_scopes(state, scope).items()}  # fmt: skip
    places |= {tf: tuple(f"head.{part}" if part else None for part in ours) for tf, ours in _head_scopes(state).items()}
    translated = {}
    for key, value in state.items():
        layer, _, variable = key.rpartition("/")
        if variable in _BN or layer.endswith("/BatchNorm"):
            layer, variable = layer.rsplit("/", 1)[0], f"BatchNorm/{variable}"
        place = places.get(layer)
        try:
            name, tensor = _tensor(variable, value)
        except KeyError:
            place = None
        if place is None or (variable.startswith("BatchNorm/") and place[1] is None):
            translated[key] = value  # not Google's DeepLab: reported as unexpected under its own name
            continue
        prefix = place[1] if variable.startswith("BatchNorm/") else place[0]
        translated[f"{prefix}.{name}"] = tensor
    projection = "head.aspp.project.conv.weight"
    if projection in translated and "image_pooling/weights" in state:
        branches = 2 + sum(1 for key in state if re.fullmatch(r"aspp[1-9]\d*(_pointwise)?/weights", key))
        translated[projection] = _aspp_order(translated[projection], branches)
    head = any(key.startswith("head.") for key in translated)
    return translated, "" if head else "backbone."


# Google evaluates its models at other strides and crops than it trained them (model_zoo.md: OS 8 for OS 16 training):
# the same weights, as its rates scale with the stride.
FORMATS = [Format("google_tf_deeplab", _recognise, _translate, _describe, GOOGLE_RGB, aside=set_aside,
                  free_fields=("output_stride", "atrous_rates", "pad_to"))]
