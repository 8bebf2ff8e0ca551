"""jfzhang95/pytorch-deeplab-xception: torchvision's ResNet names under ``backbone.``; ASPP aspp1 (1x1) / aspp2-4
(atrous) with atrous_conv + bn, global_avg_pool (pool, conv, BN, ReLU), conv1 + bn1 (projection); decoder conv1 + bn1
(48), last_conv (conv, BN, ReLU, dropout, conv, BN, ReLU, dropout, classifier)."""

from __future__ import annotations

from ...errors import WeightsError
from ..normalization import IMAGENET_RGB
from ..spec import ModelSpec
from . import Format
from .common import classes, rename_all, resnet

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
]  # fmt: skip


def _recognise(state, source) -> bool:
    if not ("aspp.aspp1.atrous_conv.weight" in state and "decoder.last_conv.8.weight" in state):
        return False
    if "backbone.layer1.0.conv1.weight" not in state:
        raise WeightsError(f"{source}: jfzhang95's DeepLabV3+ with a backbone atrous does not read yet (it reads its "
                           "ResNet-101)")  # fmt: skip
    return True


def _describe(state, contents, source):
    """DeepLabV3+ on ResNet-101: every block of a dilated stage dilated, multi-grid (1, 2, 4) on layer4,
    align_corners=True; its README models ran at output stride 16 (not recorded in the file)."""
    spec = ModelSpec(name="deeplabv3plus", backbone=resnet(state), output_stride=16, multi_grid=(1, 2, 4),
                     first_block_dilation="stage", align_corners=True,
                     num_classes=classes(state, "decoder.last_conv.8.weight"))  # fmt: skip
    return spec, [("output_stride", "output stride 16, its released models' (the file does not record it)")]


def _translate(state, model):
    return rename_all(state, _KEYS), ""


FORMATS = [Format("jfzhang95_deeplabv3plus", _recognise, _translate, _describe, IMAGENET_RGB)]
