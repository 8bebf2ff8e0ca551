"""jfzhang95/pytorch-deeplab-xception: torchvision's ResNet names under ``backbone.``; ASPP aspp1 (1x1) / aspp2-4
(atrous) with atrous_conv + bn, global_avg_pool (pool, conv, BN, ReLU), conv1 + bn1 (projection); decoder conv1 + bn1
(48), last_conv (conv, BN, ReLU, dropout, conv, BN, ReLU, dropout, classifier)."""

from __future__ import annotations

import re

from ...errors import WeightsError
from ...models.normalization import IMAGENET_RGB
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import classes, rename_all, resnet

_KEYS = [
    (r"^aspp\.aspp1\.atrous_conv\.", "head.aspp.branch1x1.conv."), (r"^aspp\.aspp1\.bn\.", "head.aspp.branch1x1.bn."),
    (r"^aspp\.aspp([234])\.atrous_conv\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 2}.conv."),
    (r"^aspp\.aspp([234])\.bn\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 2}.bn."),
    (r"^aspp\.global_avg_pool\.1\.", "head.aspp.pooling.conv."), (r"^aspp\.global_avg_pool\.2\.", "head.aspp.pooling.bn."),
    (r"^aspp\.conv1\.", "head.aspp.project.conv."), (r"^aspp\.bn1\.", "head.aspp.project.bn."),
    (r"^decoder\.conv1\.", "head.low_project.conv."), (r"^decoder\.bn1\.", "head.low_project.bn."),
    (r"^decoder\.last_conv\.0\.", "head.fuse1.conv."), (r"^decoder\.last_conv\.1\.", "head.fuse1.bn."),
    (r"^decoder\.last_conv\.4\.", "head.fuse2.conv."), (r"^decoder\.last_conv\.5\.", "head.fuse2.bn."),
    (r"^decoder\.last_conv\.8\.", "head.classifier."),
    # DRN's single-conv layers (0-2, 7, 8) are positional Sequentials, conv 0 and BN 1 (no ResNet key ends so).
    (r"^backbone\.layer([01278])\.0\.weight$", r"backbone.layer\1.conv.weight"),
    (r"^backbone\.layer([01278])\.1\.(\w+)$", r"backbone.layer\1.bn.\2"),
    # Xception: a block's `rep` repeats (ReLU, separable conv, BN) three times, the first ReLU dropped in blocks 1-2,
    # so index // 3 is the unit either way; its separable conv's depthwise conv is `conv1`.
    (r"^backbone\.(block\d+)\.rep\.(\d+)\.(conv1|bn|pointwise)\.",
     lambda m: f"backbone.{m[1]}.sepconv{int(m[2]) // 3 + 1}.{'depthwise' if m[3] == 'conv1' else m[3]}."),
    (r"^backbone\.(block\d+)\.rep\.(\d+)\.", lambda m: f"backbone.{m[1]}.bn{int(m[2]) // 3 + 1}."),
    (r"^backbone\.(block\d+)\.skipbn\.", r"backbone.\1.skip_bn."),
    (r"^backbone\.(conv[345])\.conv1\.", r"backbone.\1.depthwise."),
]  # fmt: skip


# Each backbone it builds: (a key only that backbone's layout has, the spec fields it implies). On ResNet every
# block of a dilated stage is dilated and layer4 has multi-grid (1, 2, 4).
_BACKBONES = [
    ("backbone.layer1.0.conv1.weight",
     lambda state: {"backbone": resnet(state), "multi_grid": (1, 2, 4), "first_block_dilation": "stage"}),
    ("backbone.low_level_features.0.0.weight", lambda state: {"backbone": "mobilenet_v2_jfzhang95"}),
    ("backbone.layer8.0.weight", lambda state: {"backbone": "drn_d_54", "output_stride": 8}),  # DeepLab() fixes 8
    ("backbone.block2.rep.0.conv1.weight", lambda state: {"backbone": "xception65_jfzhang95"}),  # since b7cbf5a
]  # fmt: skip


def _backbone(state) -> dict | None:
    return next((fields(state) for key, fields in _BACKBONES if key in state), None)


def _recognise(state, source) -> bool:
    if not ("aspp.aspp1.atrous_conv.weight" in state and "decoder.last_conv.8.weight" in state):
        return False
    if _backbone(state) is None:
        raise WeightsError(f"{source}: jfzhang95's DeepLabV3+ with a backbone atrous does not read yet (it reads its "
                           "ResNet-101, MobileNetV2, DRN and Xception)")  # fmt: skip
    return True


def _describe(state, contents, source):
    """DeepLabV3+ with align_corners=True; its README models ran at output stride 16 (not recorded in the file),
    unless its code fixes the backbone's (DRN: 8, in ``_BACKBONES``)."""
    backbone = _backbone(state)
    spec = ModelSpec(name="deeplabv3plus", align_corners=True, num_classes=classes(state, "decoder.last_conv.8.weight"),
                     **{"output_stride": 16, **backbone})  # fmt: skip
    if "output_stride" in backbone:  # fixed by its code: nothing assumed
        return spec, []
    return spec, [("output_stride", "output stride 16, its released models' (the file does not record it)")]


# Its MobileNetV2 blocks are one flat Sequential: expansion (conv 0, BN 1), depthwise (3, 4), projection (6, 7); blocks
# without expansion: depthwise (0, 1), projection (3, 4). atrous nests conv + BN + ReLU6 (conv.0.0, conv.0.1, ...).
_EXPANDED = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
_UNEXPANDED = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}


def _mobilenet_key(key: str, state) -> str:
    match = re.match(r"^backbone\.features\.(\d+)\.conv\.(\d)\.(.+)$", key)
    if match is None:
        return key
    block, index, rest = match.groups()
    table = _EXPANDED if f"backbone.features.{block}.conv.7.weight" in state else _UNEXPANDED
    return f"backbone.features.{block}.conv.{table[index]}.{rest}"


def _translate(state, model):
    # Its low_level_features / high_level_features are views of `features`: the same tensors under a second name.
    kept = {key: value for key, value in state.items() if not key.startswith(("backbone.low_level_features.",
                                                                               "backbone.high_level_features."))}  # fmt: skip
    return rename_all({_mobilenet_key(key, kept): value for key, value in kept.items()}, _KEYS), ""


FORMATS = [Format("jfzhang95_deeplabv3plus", _recognise, _translate, _describe, IMAGENET_RGB)]
