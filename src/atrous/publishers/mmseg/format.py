"""mmsegmentation (0.x and 1.x files): ResNetV1c's stem as a Sequential; ConvModules (conv, bn); ASPPHead's
image_pool / aspp_modules / bottleneck / conv_seg; DepthwiseSeparableASPPHead's depthwise_conv / pointwise_conv,
c1_bottleneck, sep_bottleneck; FCNHead's convs.0 / conv_seg. Its files carry their config text and often the class
names and palette (``meta``)."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ...errors import WeightsError
from ...models.normalization import IMAGENET_RGB
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import classes, rename_all, resnet

_KEYS = [
    *[(rf"^backbone\.stem\.{index}\.", f"backbone.stem.{name}.") for index, name in
      ((0, "conv1"), (1, "bn1"), (3, "conv2"), (4, "bn2"), (6, "conv3"), (7, "bn3"))],
    (r"^decode_head\.image_pool\.1\.(conv|bn)\.", r"head.aspp.pooling.\1."),
    (r"^decode_head\.aspp_modules\.0\.(conv|bn)\.", r"head.aspp.branch1x1.\1."),
    (r"^decode_head\.aspp_modules\.(\d)\.(depthwise|pointwise)_conv\.(conv|bn)\.",
     lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}.{m[2]}.{m[3]}."),
    (r"^decode_head\.aspp_modules\.(\d)\.(conv|bn)\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}.{m[2]}."),
    (r"^decode_head\.bottleneck\.(conv|bn)\.", r"head.aspp.bottleneck.\1."),
    (r"^decode_head\.c1_bottleneck\.(conv|bn)\.", r"head.low_project.\1."),
    (r"^decode_head\.sep_bottleneck\.(\d)\.(depthwise|pointwise)_conv\.(conv|bn)\.",
     lambda m: f"head.fuse{int(m[1]) + 1}.{m[2]}.{m[3]}."),
    (r"^decode_head\.conv_seg\.", "head.classifier."),
    (r"^auxiliary_head\.convs\.0\.(conv|bn)\.", r"aux_head.conv.\1."),
    (r"^auxiliary_head\.conv_seg\.", "aux_head.classifier."),
]  # fmt: skip


def _mmseg(state, source) -> bool:
    if not ("decode_head.conv_seg.weight" in state and "decode_head.aspp_modules.0.conv.weight" in state):
        return False
    if "backbone.stem.0.weight" not in state:
        raise WeightsError(f"{source}: an mmsegmentation file with a backbone atrous does not read yet (it reads "
                           "ResNetV1c, the deep-stem ResNet of its DeepLab models)")  # fmt: skip
    return True


def _meta(contents) -> dict:
    meta = contents.get("meta") if isinstance(contents, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _describe(state, contents, source):
    """The config text (``meta["cfg"]`` in 1.x runs, ``meta["config"]`` in 0.x): the backbone strides give the output
    stride, the decode head's dilations the rates."""
    text = _meta(contents).get("cfg") or _meta(contents).get("config") or ""
    tuples = [tuple(int(v) for v in found.split(",") if v.strip()) for found in re.findall(r"\(([\d,\s]+)\)", text)]
    assumed = []
    strides = next(iter(re.findall(r"strides=\(([\d,\s]+)\)", text)), None)
    if strides:
        values = [int(v) for v in strides.split(",") if v.strip()]  # pretty_text spreads tuples over lines
        stride = 4 * values[1] * values[2] * values[3]
    else:
        stride = 8
        assumed.append(("output_stride", "output stride 8, the d8 of every mmseg DeepLab in its zoo (no config text)"))
    rates = next((t[1:] for t in tuples if len(t) == 4 and t[0] == 1 and max(t) > 4), None)
    if rates is None:
        rates = (12, 24, 36)
        assumed.append(("atrous_rates", "rates (12, 24, 36), mmseg's (no config text)"))
    # Its multi-grid ("d16-mg124") sets layer4's dilations outright.
    grid = re.search(r"multi_grid=\(([\d,\s]+)\)", text)
    multi_grid = (
        {"multi_grid": tuple(int(v) for v in grid[1].split(",") if v.strip()), "multi_grid_absolute": True} if grid else {}
    )
    spec = ModelSpec(
        **multi_grid,
        name="deeplabv3plus_mmseg" if "decode_head.c1_bottleneck.conv.weight" in state else "deeplabv3_mmseg",
        backbone=f"{resnet(state)}_v1c", output_stride=stride, atrous_rates=rates,
        num_classes=classes(state, "decode_head.conv_seg.weight"),
        aux=any(key.startswith("auxiliary_head.") for key in state),
    )  # fmt: skip
    return spec, assumed


def _labels(contents) -> tuple:
    """CLASSES/PALETTE (0.x) or dataset_meta (1.x) in ``meta``."""
    meta = _meta(contents)
    dataset = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    names = meta.get("CLASSES") or dataset.get("classes")
    palette = meta.get("PALETTE") or dataset.get("palette")
    return (list(names) if names is not None else None), palette


def _translate(state, model):
    return rename_all(state, _KEYS), ""


FORMATS = [
    Format("mmseg_deeplabv3plus", lambda state, source: _mmseg(state, source) and
           "decode_head.c1_bottleneck.conv.weight" in state, _translate, _describe, IMAGENET_RGB, labels=_labels),
    Format("mmseg_deeplabv3", _mmseg, _translate, _describe, IMAGENET_RGB, labels=_labels),
]  # fmt: skip
