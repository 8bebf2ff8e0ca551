"""VainF/DeepLabV3Plus-Pytorch: torchvision's backbones (its MobileNetV2 split into low_level_features 0-3 and
high_level_features 4-17, indices kept); DeepLabV3 = torchvision's head one level deeper (classifier.classifier.N);
DeepLabV3+ = project (48) / aspp (torchvision's branch layout) / classifier (3x3, BN, ReLU, 1x1), its
--separable_conv turning each 3x3 into body.0 (depthwise) + body.1 (pointwise)."""

from __future__ import annotations

import dataclasses

from ...errors import WeightsError
from ...models.normalization import IMAGENET_RGB
from ...models.spec import ModelSpec
from ...weights.format import Format
from ...weights.keys import TORCHVISION_HEAD_KEYS, aspp_keys, classes, from_filename, rename_all, resnet, under


def _xception_unit(match) -> str:
    # VainF's Xception blocks keep (ReLU, separable conv, BN) triples in one `rep` Sequential; block1 has no leading ReLU,
    # so its indices start one lower.
    unit = (int(match[2]) - (match[1] != "1")) // 3
    part = {"conv1.": "conv.depthwise.", "pointwise.": "conv.pointwise."}.get(match[3], "bn.")
    return f"backbone.block{match[1]}.units.{unit}.{part}"


_XCEPTION_KEYS = [
    (r"^backbone\.block(\d+)\.rep\.(\d+)\.(conv1\.|pointwise\.)?", _xception_unit),
    (r"^backbone\.block(\d+)\.skip\.", r"backbone.block\1.shortcut.conv."),
    (r"^backbone\.block(\d+)\.skipbn\.", r"backbone.block\1.shortcut.bn."),
    (r"^backbone\.conv([34])\.conv1\.", r"backbone.conv\1.depthwise."),
]  # fmt: skip


def _hrnet(state) -> str:
    width = state["backbone.transition1.0.0.weight"].shape[0]  # the stride-4 branch's channels
    if width not in (32, 48):
        raise WeightsError(f"VainF's HRNetV2 of width {width}: atrous builds W32 and W48 (hrnetv2_32, hrnetv2_48)")
    return f"hrnetv2_w{width}"


# VainF's _segm_hrnet ignores --output_stride (main.py still writes _os16/_os8 into the file name): HRNet keeps its
# stride 4, and its ASPP rates are (12, 24, 36).
_FIXED = {name: {"output_stride": 4, "atrous_rates": (12, 24, 36)} for name in ("hrnetv2_w32", "hrnetv2_w48")}

# Each backbone it builds: (a key only that backbone's layout has, its atrous name, its keys -> atrous's).
_BACKBONES = [
    ("backbone.transition1.0.0.weight", _hrnet, []),  # before the ResNets': HRNet has a layer1 too
    ("backbone.layer1.0.conv1.weight", resnet, []),
    ("backbone.low_level_features.0.0.weight", lambda state: "mobilenet_v2_vainf",
     [(r"^backbone\.(?:low|high)_level_features\.", "backbone.features.")]),
    ("backbone.conv4.pointwise.weight", lambda state: "xception_vainf", _XCEPTION_KEYS),
]  # fmt: skip
_BACKBONE_KEYS = [pair for _, _, table in _BACKBONES for pair in table]
_PLUS_KEYS = [
    *under(r"^classifier\.aspp\.", aspp_keys(r"body\.0", r"body\.1"), "head.aspp."),
    (r"^classifier\.project\.0\.", "head.low_project.conv."), (r"^classifier\.project\.1\.", "head.low_project.bn."),
    (r"^classifier\.classifier\.0\.body\.0\.", "head.fuse.conv.depthwise."),
    (r"^classifier\.classifier\.0\.body\.1\.", "head.fuse.conv.pointwise."),
    (r"^classifier\.classifier\.0\.", "head.fuse.conv."), (r"^classifier\.classifier\.1\.", "head.fuse.bn."),
    (r"^classifier\.classifier\.3\.", "head.classifier."),
]  # fmt: skip


def _backbone(state) -> str | None:
    return next((name(state) for key, name, _ in _BACKBONES if key in state), None)


def _recognise_plus(state, source) -> bool:
    if not ("classifier.project.0.weight" in state and "classifier.aspp.convs.0.0.weight" in state):
        return False
    if _backbone(state) is None:
        raise WeightsError(f"{source}: VainF's DeepLabV3+ with a backbone atrous does not read yet (it reads the "
                           "ResNets, MobileNetV2, Xception and HRNetV2-W32/W48)")  # fmt: skip
    return True


def _describe(state, contents, source):
    backbone, assumed = _backbone(state), []
    fields = _FIXED.get(backbone)
    if fields is None:
        stride = from_filename(source, r"_os(8|16)\b")
        if stride is None:
            stride = "16"
            assumed.append(("output_stride", "output stride 16, VainF's default (its file names say _os8 or _os16)"))
        # VainF's rates are atrous's defaults: (6, 12, 18) at OS16, doubled at OS8.
        fields = {"output_stride": int(stride)}
    plus = "classifier.project.0.weight" in state
    classifier = "classifier.classifier.3.weight" if plus else "classifier.classifier.4.weight"
    spec = ModelSpec(name="deeplabv3", backbone=backbone, num_classes=classes(state, classifier), **fields)
    if plus:
        separable = "classifier.classifier.0.body.0.weight" in state  # its --separable_conv
        spec = dataclasses.replace(spec, name="deeplabv3plus_vainf", separable=separable)
    return spec, assumed


def _translate_v3(state, model):
    unwrapped = {key.replace("classifier.classifier.", "classifier.", 1): value for key, value in state.items()}
    return rename_all(unwrapped, TORCHVISION_HEAD_KEYS, _BACKBONE_KEYS), ""


def _translate_plus(state, model):
    return rename_all(state, _PLUS_KEYS, _BACKBONE_KEYS), ""


FORMATS = [
    Format("vainf_deeplabv3plus", _recognise_plus, _translate_plus, _describe, IMAGENET_RGB),
    Format("vainf_deeplabv3", lambda state, source: any(key.startswith("classifier.classifier.0.convs.") for key in state),
           _translate_v3, _describe, IMAGENET_RGB),
]  # fmt: skip
