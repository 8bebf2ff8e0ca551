"""DeepLab-v2's Caffe-converted ResNet-101 files (every key ``Scale.``-prefixed; ``layer5`` the classifier) and the
checkpoints of the widely used PyTorch port (``layer5``/``layer6`` ``conv2d_list`` classifiers)."""

from __future__ import annotations

import re

from ...errors import WeightsError
from ...models.normalization import CAFFE_BGR
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import classes

BACKBONE_SCOPE = "backbone."

# DeepLab-v2 as published: the Caffe ResNet-101 at OS8, rates 6-24, for PASCAL VOC's 21 classes.
PRESETS: dict[str, ModelSpec] = {
    "deeplabv2_resnet101_caffe": ModelSpec(name="deeplabv2", backbone="resnet101_caffe", num_classes=21),
}


def _classifier_targets(state, model) -> dict[str, str]:
    """Which of ``layer5``/``layer6`` is the main head and which the aux head, by input channels: the Caffe file's
    ``layer5`` reads layer4 (2048 ch), the port's multi-level ``layer5`` reads layer3 (1024 ch) and ``layer6`` layer4."""
    targets = {}
    for layer in ("layer5", "layer6"):
        weight = state.get(f"{layer}.conv2d_list.0.weight")
        if weight is not None:
            reads_aux = weight.shape[1] == model.backbone.channels["aux"] != model.backbone.channels["out"]
            targets[layer] = "aux_head" if reads_aux else "head"
    return targets


def _translate(state, model):
    state = {key.removeprefix("Scale."): value for key, value in state.items()}
    targets = _classifier_targets(state, model)
    translated = {}
    for key, value in state.items():
        match = re.match(r"(layer[56])\.conv2d_list\.(.+)$", key)
        if match:
            translated[f"{targets.get(match[1], 'head')}.classifiers.{match[2]}"] = value
        else:
            translated[f"{BACKBONE_SCOPE}{key}"] = value
    # A file with classifiers fills the heads; the bare ImageNet init file only the backbone.
    has_head = any(key.startswith("head.") for key in translated)
    return translated, ("" if has_head else BACKBONE_SCOPE)


def _describe(state, contents, source):
    found = {m[1] for key in state if (m := re.match(r"(?:Scale\.)?(layer[56])\.conv2d_list\.0\.weight", key))}
    if not found:
        raise WeightsError(f"{source}: DeepLab-v2's ImageNet init file (no classifier): start a training from it, "
                           f"model.pretrained_backbone={source} (in Python build_model('deeplabv2', num_classes=N, "
                           "pretrained_backbone=path))")  # fmt: skip
    prefix = "Scale." if any(key.startswith("Scale.") for key in state) else ""
    main = max(found)  # the port's multi-level model: layer5 reads layer3 (the aux head), layer6 layer4
    count = classes(state, f"{prefix}{main}.conv2d_list.0.weight")
    return PRESETS["deeplabv2_resnet101_caffe"].with_overrides(num_classes=count, aux=len(found) == 2), []


CAFFE = [Format("deeplabv2_caffe", lambda state, source: all(key.startswith("Scale.") for key in state), _translate,
                _describe, CAFFE_BGR)]  # fmt: skip
PORT = [Format("deeplabv2_port", lambda state, source: any(re.match(r"layer[56]\.conv2d_list\.", key) for key in state),
               _translate, _describe, CAFFE_BGR)]  # fmt: skip

# The Caffe file first: its keys are the port's with a "Scale." prefix.
FORMATS = [*CAFFE, *PORT]
