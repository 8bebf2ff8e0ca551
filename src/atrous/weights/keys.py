"""Helpers the publishers' format readers share: key renaming tables, and reading a network's size from its keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError

# A rename table: (pattern, replacement) pairs, the first that matches a key wins; a replacement is a string with
# group references or a function of the match.
Table = list[tuple[str, object]]


def rename(key: str, table: Table) -> str:
    for pattern, replacement in table:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key


def rename_all(state: Mapping[str, torch.Tensor], *tables: Table) -> dict[str, torch.Tensor]:
    """Every key through each table in turn."""
    renamed = dict(state)
    for table in tables:
        renamed = {rename(key, table): value for key, value in renamed.items()}
    return renamed


def aspp_keys(depthwise: str, pointwise: str) -> Table:
    """torchvision's ASPP branch layout (convs.0 1x1, convs.1-3 atrous, convs.4 pooling, project), as torchvision, smp
    and VainF keep it, with a publisher's spelling of a separable branch's depthwise and pointwise convs."""
    return [
        (r"convs\.0\.0\.", "branch1x1.conv."), (r"convs\.0\.1\.", "branch1x1.bn."),
        (rf"convs\.([123])\.0\.{depthwise}\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.conv.depthwise."),
        (rf"convs\.([123])\.0\.{pointwise}\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.conv.pointwise."),
        (r"convs\.([123])\.0\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.conv."),
        (r"convs\.([123])\.1\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.bn."),
        (r"convs\.4\.1\.", "pooling.conv."), (r"convs\.4\.2\.", "pooling.bn."),
        (r"project\.0\.", "project.conv."), (r"project\.1\.", "project.bn."),
    ]  # fmt: skip


def under(prefix: str, table: Table, target: str) -> Table:
    """``table`` with ``prefix`` before each pattern and ``target`` before each replacement."""
    return [(prefix + pattern, lambda m, r=replacement: target + (r(m) if callable(r) else r)) for pattern, replacement in table]


# torchvision's DeepLabHead / FCNHead (positional Sequentials) and its MobileNetV3 IntermediateLayerGetter, which
# VainF's DeepLabV3 keeps one level deeper.
TORCHVISION_HEAD_KEYS = [
    *under(r"^classifier\.0\.", aspp_keys(r"0", r"1"), "head.aspp."),
    (r"^classifier\.1\.", "head.conv.conv."), (r"^classifier\.2\.", "head.conv.bn."), (r"^classifier\.4\.", "head.classifier."),
    (r"^aux_classifier\.0\.", "aux_head.conv.conv."), (r"^aux_classifier\.1\.", "aux_head.conv.bn."),
    (r"^aux_classifier\.4\.", "aux_head.classifier."),
    (r"^backbone\.(\d+)\.", r"backbone.features.\1."),  # MobileNetV3: IntermediateLayerGetter over `features`
]  # fmt: skip


# torchvision ResNets by the number of blocks in layer3 (ResNet-18/34 have 2/6 BasicBlocks: no conv3).
_RESNET_BY_LAYER3 = {(6, True): "resnet50", (23, True): "resnet101", (36, True): "resnet152", (2, False): "resnet18",
                     (6, False): "resnet34"}  # fmt: skip


def resnet(state: Mapping[str, torch.Tensor], prefix: str = "backbone.") -> str:
    """The torchvision ResNet name whose layer3 block count and block type the keys under ``prefix`` show."""
    blocks = {int(m[1]) for key in state if (m := re.match(rf"{re.escape(prefix)}layer3\.(\d+)\.", key))}
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    name = _RESNET_BY_LAYER3.get((len(blocks), bottleneck))
    if name is None:
        raise WeightsError(f"a ResNet with {len(blocks)} blocks in layer3 is not one atrous builds (ResNet-18 to 152)")
    return name


def classes(state: Mapping[str, torch.Tensor], key: str) -> int:
    return state[key].shape[0]


def from_filename(source: str, pattern: str) -> str | None:
    match = re.search(pattern, Path(source).name)
    return match[1] if match else None

