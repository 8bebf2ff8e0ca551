"""kazuto1011/deeplab-pytorch: its ResNet (layer1 = stem conv1 (conv + bn); layer2-5 = stages of block1.. with
reduce (1x1, strided) / conv3x3 / increase / shortcut, each conv + bn); DeepLabV2's summed classifier aspp.c0-c3, or
DeepLabV3's aspp.stages (c0 1x1, c1-c3 atrous, imagepool) + fc1 (projection) + fc2 (classifier; V3+: conv1, conv2
(3x3), conv3 (1x1)) with reduce (48-channel projection of layer2), or its "DeepLabV1" (DeepLab-v2's COCO init model:
one 1x1 classifier ``fc``). Released files are the MSC wrapper's state dict (prefix "base."); the converted COCO init
file has none."""

from __future__ import annotations

import re

from ...models.normalization import CAFFE_BGR
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import classes, rename

_BLOCK = re.compile(r"^(?:base\.)?layer[2-5]\.block\d+\.(?:reduce|conv3x3|increase|shortcut)\.")
_PARTS = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
          "shortcut": ("downsample.0", "downsample.1")}  # fmt: skip
_V3_KEYS = [
    (r"^aspp\.stages\.c0\.(conv|bn)\.", r"head.aspp.branch1x1.\1."),
    (r"^aspp\.stages\.c([123])\.(conv|bn)\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}.{m[2]}."),
    (r"^aspp\.stages\.imagepool\.conv\.(conv|bn)\.", r"head.aspp.pooling.\1."),
    (r"^fc1\.(conv|bn)\.", r"head.aspp.project.\1."),
    (r"^reduce\.(conv|bn)\.", r"head.low_project.\1."),
    (r"^fc2\.conv([12])\.(conv|bn)\.", r"head.fuse\1.\2."),
    (r"^fc2\.conv3\.", "head.classifier."),
    (r"^fc2\.", "head.classifier."),
]  # fmt: skip


def _key(key: str) -> str:
    key = key.removeprefix("base.")
    if match := re.match(r"layer1\.conv1\.(conv|bn)\.(.+)$", key):
        return f"backbone.{'conv1' if match[1] == 'conv' else 'bn1'}.{match[2]}"
    if match := re.match(r"layer([2-5])\.block(\d+)\.(\w+)\.(conv|bn)\.(.+)$", key):
        layer, block, part, kind, rest = match.groups()
        conv, bn = _PARTS[part]
        return f"backbone.layer{int(layer) - 1}.{int(block) - 1}.{conv if kind == 'conv' else bn}.{rest}"
    if match := re.match(r"fc\.(weight|bias)$", key):
        return f"head.classifier.{match[1]}"
    if match := re.match(r"aspp\.c(\d)\.(weight|bias)$", key):
        return f"head.classifiers.{match[1]}.{match[2]}"
    return rename(key, _V3_KEYS)  # anything it does not name is reported as unexpected


def _translate(state, model):
    return {_key(key): value for key, value in state.items()}, ""


def _has(state, pattern: str) -> bool:
    return any(_BLOCK.match(key) for key in state) and any(re.match(rf"^(?:base\.)?{pattern}$", key) for key in state)


def _prefix(state) -> str:
    return "base." if any(key.startswith("base.") for key in state) else ""


def _describe_v2(state, contents, source):
    count = classes(state, f"{_prefix(state)}aspp.c0.weight")
    guess = "rates (6, 12, 18, 24) of DeepLabV2 (its DeepLabV2S uses (3, 6, 9, 12)); the file does not record them"
    return ModelSpec(name="deeplabv2", backbone="resnet101_caffe", num_classes=count), [("atrous_rates", guess)]


def _describe_v1(state, contents, source):
    """DeepLab-v2's COCO init model as its convert.py writes it (no "base." prefix; 91 COCO classes)."""
    spec = ModelSpec(name="deeplabv1_kazuto", num_classes=classes(state, f"{_prefix(state)}fc.weight"))
    return spec, []


def _describe_v3(state, contents, source):
    """Its DeepLabV3 / V3+ (published without weights): the Caffe ResNet-101; its factories build output stride 16
    with multi-grid (1, 2, 4) on the last stage, neither recorded in the file."""
    plus = f"{_prefix(state)}reduce.conv.weight" in state
    classifier = f"{_prefix(state)}fc2.conv3.weight" if plus else f"{_prefix(state)}fc2.weight"
    spec = ModelSpec(name="deeplabv3plus" if plus else "deeplabv3_kazuto", backbone="resnet101_caffe", output_stride=16,
                     multi_grid=(1, 2, 4), num_classes=classes(state, classifier))  # fmt: skip
    return spec, [("output_stride", "output stride 16 and multi-grid (1, 2, 4), its factories' (the file records neither)")]


FORMATS = [
    Format("kazuto_deeplabv2", lambda state, source: _has(state, r"aspp\.c\d\.weight"), _translate, _describe_v2,
           CAFFE_BGR),
    Format("kazuto_deeplabv3plus", lambda state, source: _has(state, r"reduce\.conv\.weight"), _translate,
           _describe_v3, CAFFE_BGR),
    Format("kazuto_deeplabv3", lambda state, source: _has(state, r"fc2\.weight"), _translate, _describe_v3, CAFFE_BGR),
    Format("kazuto_deeplabv1", lambda state, source: _has(state, r"fc\.weight"), _translate, _describe_v1, CAFFE_BGR),
]  # fmt: skip
