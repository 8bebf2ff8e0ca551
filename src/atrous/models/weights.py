"""Reading weights from every format DeepLab users hold, recognised by their keys.

This is the one place that knows foreign DeepLab layouts: torchvision's DeepLabV3 models, the Caffe-converted
DeepLab-v2 ResNet-101 file (keys prefixed ``Scale.``), checkpoints of the DeepLab-v2 PyTorch port
(``layer5``/``layer6`` classifiers) and atrous's own files. ImageNet backbone files are each backbone's own fact:
their layouts come from ``atrous.models.backbones.BACKBONES``.
"""

from __future__ import annotations

import re
import urllib.error
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingFileError, WeightsError
from .backbones import BACKBONES, ImageNetFormat, backbone_entry
from .normalization import CAFFE_BGR, IMAGENET_RGB, InputNormalization
from .safe_load import module_state_dict, read_checkpoint
from .segmenter import Segmenter

BACKBONE_SCOPE = "backbone."
_FIRST_KEYS_SHOWN = 5


@dataclass
class WeightsReport:
    """What ``load_weights`` did. Keys are the model's (atrous) names."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        summary = (
            f"weights from {self.source} (format {self.format}): {len(self.loaded)} tensors loaded, "
            f"{len(self.skipped)} skipped, {len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} shape-mismatched"
        )
        lines = [summary]
        lines += [f"  {message}" for message in self.messages]
        if self.missing:
            lines.append(f"  missing: {_first(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected: {_first(self.unexpected)}")
        if self.mismatched:
            shown = [f"{key} file {list(src)} vs model {list(dst)}" for key, src, dst in self.mismatched]
            lines.append(f"  shape-mismatched: {_first(shown)}")
        return "\n".join(lines)


def _first(items: list[str]) -> str:
    more = f" ... and {len(items) - _FIRST_KEYS_SHOWN} more" if len(items) > _FIRST_KEYS_SHOWN else ""
    return ", ".join(items[:_FIRST_KEYS_SHOWN]) + more


# ---------------------------------------------------------------------------------------------- reading


def read_weights_file(path: str | Path) -> tuple[object, list[str]]:
    """(what a ``.pt``/``.pth``/``.pth.tar``/``.bin`` or ``.safetensors`` file holds, the names in it that were read as
    inert placeholders). Never runs code from the file (see ``atrous.models.safe_load``)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_checkpoint(path)
    if not path.is_file():
        raise MissingFileError(f"weights file not found: {path}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path)), []
    except Exception as error:  # safetensors raises its own types for damaged files
        raise WeightsError(f"{path}: cannot read weights (truncated or corrupt file?): {error}") from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors in a weights file, unwrapped as ``unwrap_state_dict`` says."""
    return unwrap_state_dict(read_weights_file(path)[0], source=str(path))


# The keys training runs keep the model under: atrous/detectron2 ("model"), mmseg/jfzhang95/Lightning
# ("state_dict"), VainF ("model_state").
CONTAINERS = ("model", "state_dict", "model_state")


def _count_tensors(value: object) -> int:
    return sum(isinstance(item, torch.Tensor) for item in value.values()) if isinstance(value, Mapping) else 0


def unwrap_state_dict(state: object, *, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: ``state[c]`` for the first container key ``c`` of ``CONTAINERS`` that
    holds one, the state dict of a whole pickled model, or ``state`` itself; without DDP's ``module.`` prefix."""
    if isinstance(state, Mapping):
        for container in CONTAINERS:
            if isinstance(state.get(container), Mapping) or module_state_dict(state.get(container)):
                state = state[container]
                break
    if module_state_dict(state):
        state = module_state_dict(state)
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"{source}: expected a non-empty mapping of parameter names to tensors")
    tensors = {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        nested = {key: _count_tensors(value) for key, value in state.items() if _count_tensors(value)}
        hint = ""
        if nested:
            key = max(nested, key=nested.get)
            hint = f"; its tensors are under [{key!r}] ({nested[key]} of them): pass ckpt[{key!r}]"
        raise WeightsError(f"{source}: holds no tensors at the top level; first keys: {_first([str(k) for k in state])}"
                           f"{hint}")  # fmt: skip
    if all(key.startswith("module.") for key in tensors):
        tensors = {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


# ------------------------------------------------------------------------------------------ recognising

DEEPLAB_FORMATS = ("atrous", "torchvision_deeplabv3_resnet", "torchvision_deeplabv3_mobilenet_v3_large",
                   "vainf_deeplabv3", "vainf_deeplabv3plus", "deeplabv2_caffe", "deeplabv2_port", "kazuto_deeplabv2", "kazuto_deeplabv3",
                   "kazuto_deeplabv3plus", "smp_deeplabv3",
                   "smp_deeplabv3plus", "mmseg_deeplabv3", "mmseg_deeplabv3plus", "jfzhang95_deeplabv3plus")  # fmt: skip
_KAZUTO_BLOCK = re.compile(r"^(?:base\.)?layer[2-5]\.block\d+\.(?:reduce|conv3x3|increase|shortcut)\.")


def imagenet_formats() -> dict[str, tuple[ImageNetFormat, InputNormalization]]:
    """The ImageNet backbone layouts the registry's backbones declare, with the input their weights expect."""
    return {e.imagenet_format.name: (e.imagenet_format, e.normalization) for e in BACKBONES.values() if e.imagenet_format}


def formats() -> list[str]:
    return [*DEEPLAB_FORMATS, *imagenet_formats()]


def detect_format(state: Mapping[str, torch.Tensor], *, source: str = "<state dict>") -> str:
    """Name the layout of a state dict from its keys; see ``formats()``."""
    keys = list(state)
    if all(key.startswith("Scale.") for key in keys):
        return "deeplabv2_caffe"
    if "decode_head.conv_seg.weight" in state and "decode_head.aspp_modules.0.conv.weight" in state:
        if "backbone.stem.0.weight" not in state:
            raise WeightsError(f"{source}: an mmsegmentation file with a backbone atrous does not read yet (it reads "
                               "ResNetV1c, the deep-stem ResNet of its DeepLab models)")  # fmt: skip
        return "mmseg_deeplabv3plus" if "decode_head.c1_bottleneck.conv.weight" in state else "mmseg_deeplabv3"
    if "aspp.aspp1.atrous_conv.weight" in state and "decoder.last_conv.8.weight" in state:
        if "backbone.layer1.0.conv1.weight" not in state:
            raise WeightsError(f"{source}: jfzhang95's DeepLabV3+ with a backbone atrous does not read yet (it reads "
                               "its ResNet-101)")  # fmt: skip
        return "jfzhang95_deeplabv3plus"
    if "segmentation_head.0.weight" in state and any(key.startswith("decoder.") for key in keys):
        if not any(key.startswith("encoder.layer1.") for key in keys):
            raise WeightsError(f"{source}: a segmentation_models_pytorch file with an encoder atrous does not read yet "
                               f"(it reads the ResNet encoders); first keys: {_first(keys)}")  # fmt: skip
        if "decoder.block1.0.weight" in state:
            return "smp_deeplabv3plus"
        if "decoder.conv.weight" in state or "decoder.1.weight" in state:  # decoder.1: smp before 0.4
            return "smp_deeplabv3"
    if any(_KAZUTO_BLOCK.match(key) for key in keys):
        if any(re.match(r"^(?:base\.)?aspp\.c\d\.weight$", key) for key in keys):
            return "kazuto_deeplabv2"
        if any(re.match(r"^(?:base\.)?reduce\.conv\.weight$", key) for key in keys):
            return "kazuto_deeplabv3plus"
        if any(re.match(r"^(?:base\.)?fc2\.weight$", key) for key in keys):
            return "kazuto_deeplabv3"
    if any(re.match(r"layer[56]\.conv2d_list\.", key) for key in keys):
        return "deeplabv2_port"
    if "classifier.project.0.weight" in state and "classifier.aspp.convs.0.0.weight" in state:
        if "backbone.layer1.0.conv1.weight" not in state and "backbone.low_level_features.0.0.weight" not in state:
            raise WeightsError(f"{source}: VainF's DeepLabV3+ with a backbone atrous does not read yet (it reads the "
                               "ResNets and MobileNetV2)")  # fmt: skip
        return "vainf_deeplabv3plus"
    if any(key.startswith("classifier.classifier.0.convs.") for key in keys):
        return "vainf_deeplabv3"  # VainF/DeepLabV3Plus-Pytorch: torchvision's head kept one level deeper
    if any(key.startswith("classifier.0.convs.") for key in keys):
        if "backbone.conv1.weight" in state:
            return "torchvision_deeplabv3_resnet"
        return "torchvision_deeplabv3_mobilenet_v3_large"
    if any(key.startswith(("head.", "aux_head.")) for key in keys) or all(key.startswith("backbone.") for key in keys):
        return "atrous"
    for name, (imagenet, _) in imagenet_formats().items():
        if imagenet.recognise(state):
            return name
    raise WeightsError(f"{source}: unrecognised weights layout (first keys: {_first(keys)}){_nearest(state)}; atrous "
                       f"reads {formats()}")  # fmt: skip


def _nearest(state: Mapping[str, torch.Tensor]) -> str:
    """A true hint for an unrecognised layout: a prefix on every key that hides a known format."""
    prefixes = {key.split(".", 1)[0] for key in state}
    if len(prefixes) == 1 and all("." in key for key in state):
        prefix = f"{prefixes.pop()}."
        stripped = {key[len(prefix):]: value for key, value in state.items()}
        try:
            fmt = detect_format(stripped)
        except WeightsError:
            return ""
        return f"; without the prefix {prefix!r} on every key it is {fmt}: pass {{k.removeprefix({prefix!r}): v}}"
    return ""


# ----------------------------------------------------------------------------------------- translating

# torchvision DeepLabHead / FCNHead (positional nn.Sequential) -> atrous's named submodules.
_TORCHVISION_HEAD_KEYS = [
    (r"^classifier\.0\.convs\.0\.0\.", "head.aspp.branch1x1.conv."),
    (r"^classifier\.0\.convs\.0\.1\.", "head.aspp.branch1x1.bn."),
    (r"^classifier\.0\.convs\.([123])\.0\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}.conv."),
    (r"^classifier\.0\.convs\.([123])\.1\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}.bn."),
    (r"^classifier\.0\.convs\.4\.1\.", "head.aspp.pooling.conv."),
    (r"^classifier\.0\.convs\.4\.2\.", "head.aspp.pooling.bn."),
    (r"^classifier\.0\.project\.0\.", "head.aspp.project.conv."),
    (r"^classifier\.0\.project\.1\.", "head.aspp.project.bn."),
    (r"^classifier\.1\.", "head.conv.conv."),
    (r"^classifier\.2\.", "head.conv.bn."),
    (r"^classifier\.4\.", "head.classifier."),
    (r"^aux_classifier\.0\.", "aux_head.conv.conv."),
    (r"^aux_classifier\.1\.", "aux_head.conv.bn."),
    (r"^aux_classifier\.4\.", "aux_head.classifier."),
    (r"^backbone\.(\d+)\.", r"backbone.features.\1."),  # MobileNetV3: IntermediateLayerGetter over `features`
]


def _rename(key: str, table) -> str:
    for pattern, replacement in table:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return key


def _port_classifier_targets(state: Mapping[str, torch.Tensor], model: Segmenter) -> dict[str, str]:
    """Which of the port's ``layer5``/``layer6`` classifiers is the main head and which the aux head.

    Decided by input channels: the Caffe file's ``layer5`` reads layer4 (2048 ch), the port's multi-level
    ``layer5`` reads layer3 (1024 ch) and its ``layer6`` layer4.
    """
    targets = {}
    for layer in ("layer5", "layer6"):
        weight = state.get(f"{layer}.conv2d_list.0.weight")
        if weight is not None:
            reads_aux = weight.shape[1] == model.backbone.channels["aux"] != model.backbone.channels["out"]
            targets[layer] = "aux_head" if reads_aux else "head"
    return targets


def translate(state: Mapping[str, torch.Tensor], fmt: str, model: Segmenter) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a state dict of format ``fmt`` to atrous keys. Returns (state, scope prefix of required keys)."""
    if fmt == "atrous":
        return dict(state), ""
    if fmt in ("torchvision_deeplabv3_resnet", "torchvision_deeplabv3_mobilenet_v3_large"):
        return {_rename(key, _TORCHVISION_HEAD_KEYS): value for key, value in state.items()}, ""
    if fmt == "vainf_deeplabv3":
        unwrapped = {key.replace("classifier.classifier.", "classifier.", 1): value for key, value in state.items()}
        renamed = {_rename(key, _TORCHVISION_HEAD_KEYS): value for key, value in unwrapped.items()}
        return {_rename(key, _VAINF_MOBILENET_KEYS): value for key, value in renamed.items()}, ""
    if fmt in imagenet_formats():
        imagenet, _ = imagenet_formats()[fmt]
        return {f"{BACKBONE_SCOPE}{key}": value for key, value in imagenet.translate(state).items()}, BACKBONE_SCOPE
    if fmt in ("deeplabv2_caffe", "deeplabv2_port"):
        state = {key.removeprefix("Scale."): value for key, value in state.items()}
        targets = _port_classifier_targets(state, model)
        translated = {}
        for key, value in state.items():
            match = re.match(r"(layer[56])\.conv2d_list\.(.+)$", key)
            if match:
                translated[f"{targets.get(match[1], 'head')}.classifiers.{match[2]}"] = value
            else:
                translated[f"backbone.{key}"] = value
        # A file with classifiers fills the heads; the bare ImageNet init file only the backbone.
        has_head = any(key.startswith("head.") for key in translated)
        return translated, ("" if has_head else BACKBONE_SCOPE)
    if fmt in ("kazuto_deeplabv2", "kazuto_deeplabv3", "kazuto_deeplabv3plus"):
        return {_kazuto_key(key): value for key, value in state.items()}, ""
    if fmt == "vainf_deeplabv3plus":
        renamed = {_rename(key, _VAINF_PLUS_KEYS): value for key, value in state.items()}
        return {_rename(key, _VAINF_MOBILENET_KEYS): value for key, value in renamed.items()}, ""
    if fmt == "jfzhang95_deeplabv3plus":
        return {_rename(key, _JFZHANG95_KEYS): value for key, value in state.items()}, ""
    if fmt in ("mmseg_deeplabv3", "mmseg_deeplabv3plus"):
        return {_rename(key, _MMSEG_KEYS): value for key, value in state.items()}, ""
    if fmt in ("smp_deeplabv3", "smp_deeplabv3plus"):
        kept = {key: value for key, value in state.items() if not key.startswith("classification_head.")}
        return {_rename(_rename(key, _SMP_OLD_KEYS), _SMP_KEYS): value for key, value in kept.items()}, ""
    raise WeightsError(f"unknown format {fmt!r}; choose from {formats()}")


# kazuto1011/deeplab-pytorch's ResNet: layer1 is the stem (conv1 = conv + bn), layer2-5 are the stages with blocks
# block1.. of reduce (1x1, strided) / conv3x3 / increase / shortcut, each a conv + bn; the summed classifier
# aspp.c0-c3 (V2), or aspp.stages (c0 1x1, c1-c3 atrous, imagepool) + fc1 (projection) + fc2 (classifier; V3+: a
# Sequential conv1, conv2 (3x3), conv3 (1x1)) with reduce (48-channel projection of layer2, V3+). Its released files
# are the MSC wrapper's state dict (prefix "base.").
_KAZUTO_PARTS = {"reduce": ("conv1", "bn1"), "conv3x3": ("conv2", "bn2"), "increase": ("conv3", "bn3"),
                 "shortcut": ("downsample.0", "downsample.1")}  # fmt: skip


def _kazuto_key(key: str) -> str:
    key = key.removeprefix("base.")
    if match := re.match(r"layer1\.conv1\.(conv|bn)\.(.+)$", key):
        return f"backbone.{'conv1' if match[1] == 'conv' else 'bn1'}.{match[2]}"
    if match := re.match(r"layer([2-5])\.block(\d+)\.(\w+)\.(conv|bn)\.(.+)$", key):
        layer, block, part, kind, rest = match.groups()
        conv, bn = _KAZUTO_PARTS[part]
        return f"backbone.layer{int(layer) - 1}.{int(block) - 1}.{conv if kind == 'conv' else bn}.{rest}"
    if match := re.match(r"aspp\.c(\d)\.(weight|bias)$", key):
        return f"head.classifiers.{match[1]}.{match[2]}"
    return _rename(key, _KAZUTO_V3_KEYS)  # anything it does not name is reported as unexpected


_KAZUTO_V3_KEYS = [
    (r"^aspp\.stages\.c0\.(conv|bn)\.", r"head.aspp.branch1x1.\1."),
    (r"^aspp\.stages\.c([123])\.(conv|bn)\.", lambda m: f"head.aspp.atrous_branches.{int(m[1]) - 1}.{m[2]}."),
    (r"^aspp\.stages\.imagepool\.conv\.(conv|bn)\.", r"head.aspp.pooling.\1."),
    (r"^fc1\.(conv|bn)\.", r"head.aspp.project.\1."),
    (r"^reduce\.(conv|bn)\.", r"head.low_project.\1."),
    (r"^fc2\.conv([12])\.(conv|bn)\.", r"head.fuse\1.\2."),
    (r"^fc2\.conv3\.", "head.classifier."),
    (r"^fc2\.", "head.classifier."),
]  # fmt: skip


# segmentation_models_pytorch (0.4-0.6): encoder = torchvision's ResNet names; DeepLabV3 decoder = aspp (torchvision's
# branch layout; separable branches as a depthwise-pointwise pair "0.0"/"0.1") + conv + bn; DeepLabV3+ decoder =
# aspp.0 (ASPP), aspp.1/2 (separable conv, BN), block1 (48-channel projection), block2 (separable conv, BN).
def _aspp_keys(depthwise: str, pointwise: str) -> list[tuple[str, object]]:
    """torchvision's ASPP branch layout (convs.0 1x1, convs.1-3 atrous, convs.4 pooling, project), as smp and VainF
    keep it, with their spelling of a separable branch's depthwise and pointwise convs."""
    return [
        (r"convs\.0\.0\.", "branch1x1.conv."), (r"convs\.0\.1\.", "branch1x1.bn."),
        (rf"convs\.([123])\.0\.{depthwise}\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.conv.depthwise."),
        (rf"convs\.([123])\.0\.{pointwise}\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.conv.pointwise."),
        (r"convs\.([123])\.0\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.conv."),
        (r"convs\.([123])\.1\.", lambda m: f"atrous_branches.{int(m[1]) - 1}.bn."),
        (r"convs\.4\.1\.", "pooling.conv."), (r"convs\.4\.2\.", "pooling.bn."),
        (r"project\.0\.", "project.conv."), (r"project\.1\.", "project.bn."),
    ]  # fmt: skip


def _under(prefix: str, table: list[tuple[str, object]], target: str) -> list[tuple[str, object]]:
    """``table`` with ``prefix`` before each pattern and ``target`` before each replacement."""
    return [(prefix + pattern, lambda m, r=replacement: target + (r(m) if callable(r) else r)) for pattern, replacement in table]


_SMP_ASPP = _aspp_keys(r"0", r"1")
_SMP_KEYS = [
    (r"^encoder\.", "backbone."),
    *_under(r"^decoder\.aspp\.0\.", _SMP_ASPP, "head.aspp."),
    *_under(r"^decoder\.aspp\.", _SMP_ASPP, "head.aspp."),
    (r"^decoder\.aspp\.1\.0\.", "head.aspp_conv.conv.depthwise."), (r"^decoder\.aspp\.1\.1\.", "head.aspp_conv.conv.pointwise."),
    (r"^decoder\.aspp\.2\.", "head.aspp_conv.bn."),
    (r"^decoder\.block1\.0\.", "head.low_project.conv."), (r"^decoder\.block1\.1\.", "head.low_project.bn."),
    (r"^decoder\.block2\.0\.0\.", "head.fuse.conv.depthwise."), (r"^decoder\.block2\.0\.1\.", "head.fuse.conv.pointwise."),
    (r"^decoder\.block2\.1\.", "head.fuse.bn."),
    (r"^decoder\.conv\.", "head.conv.conv."), (r"^decoder\.bn\.", "head.conv.bn."),
    (r"^segmentation_head\.0\.", "head.classifier."),
]  # fmt: skip
# VainF's DeepLabV3+ head: project (48) / aspp (torchvision's branch layout) / classifier (3x3, BN, ReLU, 1x1);
# its --separable_conv turns each 3x3 into body.0 (depthwise) + body.1 (pointwise).
# VainF's MobileNetV2 split into low_level_features (0-3) and high_level_features (4-17), indices kept.
_VAINF_MOBILENET_KEYS = [(r"^backbone\.(?:low|high)_level_features\.", "backbone.features.")]
_VAINF_PLUS_KEYS = [
    *_under(r"^classifier\.aspp\.", _aspp_keys(r"body\.0", r"body\.1"), "head.aspp."),
    (r"^classifier\.project\.0\.", "head.low_project.conv."), (r"^classifier\.project\.1\.", "head.low_project.bn."),
    (r"^classifier\.classifier\.0\.body\.0\.", "head.fuse.conv.depthwise."),
    (r"^classifier\.classifier\.0\.body\.1\.", "head.fuse.conv.pointwise."),
    (r"^classifier\.classifier\.0\.", "head.fuse.conv."), (r"^classifier\.classifier\.1\.", "head.fuse.bn."),
    (r"^classifier\.classifier\.3\.", "head.classifier."),
]  # fmt: skip
# mmsegmentation (0.x and 1.x files): ResNetV1c's stem as a Sequential; ConvModules (conv, bn); ASPPHead's image_pool
# / aspp_modules / bottleneck / conv_seg; DepthwiseSeparableASPPHead's depthwise_conv / pointwise_conv, c1_bottleneck,
# sep_bottleneck; FCNHead's convs.0 / conv_seg.
_MMSEG_KEYS = [
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
# jfzhang95/pytorch-deeplab-xception: ASPP aspp1 (1x1) / aspp2-4 (atrous) with atrous_conv + bn, global_avg_pool
# (pool, conv, BN, ReLU), conv1 + bn1 (projection); decoder conv1 + bn1 (48), last_conv (conv, BN, ReLU, dropout,
# conv, BN, ReLU, dropout, classifier).
_JFZHANG95_KEYS = [
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
_SMP_OLD_KEYS = [(r"^decoder\.0\.", "decoder.aspp."), (r"^decoder\.1\.", "decoder.conv."), (r"^decoder\.2\.", "decoder.bn.")]


_EXPECTED_NORMALIZATION = {
    "deeplabv2_caffe": CAFFE_BGR,
    "deeplabv2_port": CAFFE_BGR,
    "kazuto_deeplabv2": CAFFE_BGR,
    "kazuto_deeplabv3": CAFFE_BGR,
    "kazuto_deeplabv3plus": CAFFE_BGR,
    "torchvision_deeplabv3_resnet": IMAGENET_RGB,
    "torchvision_deeplabv3_mobilenet_v3_large": IMAGENET_RGB,
    "vainf_deeplabv3": IMAGENET_RGB,
    "vainf_deeplabv3plus": IMAGENET_RGB,
    "smp_deeplabv3": IMAGENET_RGB,
    "mmseg_deeplabv3": IMAGENET_RGB,
    "jfzhang95_deeplabv3plus": IMAGENET_RGB,
    "mmseg_deeplabv3plus": IMAGENET_RGB,
    "smp_deeplabv3plus": IMAGENET_RGB,
}


def _architecture_problem(fmt: str, model: Segmenter) -> str | None:
    """Mismatches that keys and shapes cannot show (a Caffe ResNet and torchvision's have identical shapes)."""
    expected = _EXPECTED_NORMALIZATION.get(fmt) or imagenet_formats().get(fmt, (None, None))[1]
    if expected is not None and model.normalization != expected:
        fitting = sorted(name for name, entry in BACKBONES.items() if entry.normalization == expected)
        wanted = f"one of {fitting}"
        return (
            f"the file is {fmt} (weights for {expected.name} input) but the model's backbone expects "
            f"{model.normalization.name} input; build the model with backbone {wanted}"
        )
    return None


# --------------------------------------------------------------------------------------------- loading


def _is_classifier(key: str) -> bool:
    return any(part in ("classifier", "classifiers") for part in key.split("."))


def _head_of(key: str) -> str:
    """``head.aspp.project.conv.weight`` -> ``head``; ``aux_head.classifier.bias`` -> ``aux_head``."""
    return key.split(".", 1)[0]


def load_weights(
    model: Segmenter,
    source: str | Path | Mapping[str, torch.Tensor],
    *,
    strict: bool = True,
    name: str | None = None,
    inert: list[str] | tuple[str, ...] = (),
) -> WeightsReport:
    """Load weights of any supported format into ``model`` and report what happened.

    source: a weights file path (``read_weights_file``), or what one holds (a state dict or a training-run dict);
    ``name`` and ``inert`` then say, for the report, where it was read and which of its objects were placeholders.
    The format is recognised by its keys.
    A classifier whose class count differs from the model's is skipped (keeps its fresh init), as are aux-head
    weights when the model has no aux head (and vice versa). Anything else missing, unexpected or
    shape-mismatched raises ``WeightsError`` naming the first offending keys, unless ``strict=False``.
    """
    if isinstance(source, (str, Path)):
        name, (source, inert) = str(source), read_weights_file(source)
    name = name or "<state dict>"
    state = unwrap_state_dict(source, source=name)
    fmt = detect_format(state, source=name)
    report = WeightsReport(source=name, format=fmt)
    if inert:
        report.messages.append(f"other objects in the file were read as inert placeholders, nothing of them ran: "
                               f"{_first(sorted(set(inert)))}")  # fmt: skip
    problem = _architecture_problem(fmt, model)
    if problem is not None:
        if strict:
            raise WeightsError(f"{name}: wrong architecture: {problem} (strict=False loads it anyway)")
        report.messages.append(f"warning: {problem}")

    translated, scope = translate(state, fmt, model)
    model_state = model.state_dict()
    to_load: dict[str, torch.Tensor] = {}
    skipped_classifiers: dict[str, tuple[int, int]] = {}
    for key, value in translated.items():
        if key not in model_state:
            if _head_of(key) == "aux_head" and model.aux_head is None:
                report.skipped.append(key)
            else:
                report.unexpected.append(key)
        elif value.shape != model_state[key].shape:
            if _is_classifier(key) and value.shape[0] != model_state[key].shape[0]:
                report.skipped.append(key)
                skipped_classifiers[key.rsplit(".", 1)[0]] = (value.shape[0], model_state[key].shape[0])
            else:
                report.mismatched.append((key, tuple(value.shape), tuple(model_state[key].shape)))
        else:
            to_load[key] = value
    # A classifier is skipped whole: never its bias without its weight.
    for key in list(to_load):
        if key.rsplit(".", 1)[0] in skipped_classifiers:
            report.skipped.append(key)
            del to_load[key]
    for module, (theirs, ours) in skipped_classifiers.items():
        report.messages.append(f"{module}: the file has {theirs} classes, the model {ours}; it keeps its fresh init")

    for key in model_state:
        if key in translated or not key.startswith(scope) or key.endswith("num_batches_tracked"):
            continue
        if _head_of(key) == "aux_head" and not any(_head_of(k) == "aux_head" for k in translated):
            continue
        report.missing.append(key)
    if model.aux_head is not None and not any(_head_of(k) == "aux_head" for k in translated) and scope == "":
        report.messages.append("the file has no aux head; the model's aux head keeps its fresh init")
    if model.aux_head is None and any(_head_of(k) == "aux_head" for k in report.skipped):
        report.messages.append("aux-head weights in the file are ignored: the model was built with aux=False")
    report.messages += _rate_hints(fmt, model)

    if strict and not report.ok:
        raise WeightsError(f"{name}: does not fit the model (strict=False loads what fits):\n{report}")
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report


def _rate_hints(fmt: str, model: Segmenter) -> list[str]:
    """torchvision's DeepLabV3 weights carry no dilation: say when the model will not reproduce its outputs."""
    aspp = getattr(model.head, "aspp", None)
    if not fmt.startswith("torchvision_deeplabv3") or aspp is None:
        return []
    rates = tuple(
        branch.conv.dilation[0] for branch in aspp.atrous_branches if isinstance(getattr(branch, "conv", None), nn.Conv2d)
    )
    torchvision_stride = 8 if fmt == "torchvision_deeplabv3_resnet" else 16
    if rates == (12, 24, 36) and model.output_stride == torchvision_stride:
        return []
    hint = (
        f"torchvision's model runs at output stride {torchvision_stride} with ASPP rates (12, 24, 36); this one at "
        f"{model.output_stride} with {rates}, so its outputs differ from torchvision's (build it from the preset of "
        "the same name, atrous.models.PRESETS or --preset, to reproduce them)"
    )
    return [hint]


# ------------------------------------------------------------------------------------ ImageNet backbones


def imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights the registry names for ``backbone``, through torchvision's weights API (torch hub cache,
    then download). For torchvision's backbones these are the ones its own DeepLabV3 models start from."""
    entry = backbone_entry(backbone)
    if entry.imagenet_weights is None:
        raise WeightsError(f"backbone {backbone!r}: {entry.imagenet_hint}")
    import torchvision

    weights = torchvision.models.get_weight(entry.imagenet_weights)
    filename = weights.url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as error:
        raise WeightsError(
            f"could not download {weights.url} ({error}). Offline? Put the file {filename} at {cached} "
            f"(the torch hub cache; set TORCH_HOME to move it), or pass pretrained_backbone=<path to the file>"
        ) from error


def load_pretrained_backbone(model: Segmenter, source: str | Path) -> WeightsReport:
    """``source``: "imagenet" (the published weights of the model's backbone) or a path to a weights file."""
    if source == "imagenet":
        return load_weights(model, imagenet_state_dict(model.spec.backbone))
    return load_weights(model, source)
