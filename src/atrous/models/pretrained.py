"""``from_pretrained``: a model built from what a weights file says about itself.

Each DeepLab format the weights module recognises gets a *describe* step here: the ``ModelSpec`` its keys, shapes
and embedded description imply, and what had to be assumed because the file cannot tell.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from . import PRESETS, build_model
from .segmenter import Segmenter
from .spec import ModelSpec
from .weights import detect_format, load_weights, read_weights_file, unwrap_state_dict

log = logging.getLogger(__name__)

# torchvision ResNets by the number of blocks in layer3 (ResNet-18/34 have 2/6 BasicBlocks: no conv3).
_RESNET_BY_LAYER3 = {(6, True): "resnet50", (23, True): "resnet101", (36, True): "resnet152", (2, False): "resnet18",
                     (6, False): "resnet34"}  # fmt: skip


def _resnet(state: Mapping[str, torch.Tensor], prefix: str = "backbone.") -> str:
    blocks = {int(m[1]) for key in state if (m := re.match(rf"{re.escape(prefix)}layer3\.(\d+)\.", key))}
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    name = _RESNET_BY_LAYER3.get((len(blocks), bottleneck))
    if name is None:
        raise WeightsError(f"a ResNet with {len(blocks)} blocks in layer3 is not one atrous builds (ResNet-18 to 152)")
    return name


def _classes(state: Mapping[str, torch.Tensor], key: str) -> int:
    return state[key].shape[0]


def _from_filename(source: str, pattern: str) -> str | None:
    match = re.search(pattern, Path(source).name)
    return match[1] if match else None


# (the spec, [(the field it assumed, what and why)]).
Description = tuple[ModelSpec, list[tuple[str, str]]]
_TORCHVISION_ASSUMED = [
    ("output_stride", ("torchvision's output stride and ASPP rates (12, 24, 36): the file does not record them"))
]


def _atrous(state, contents, source) -> Description:
    if isinstance(contents, Mapping) and isinstance(contents.get("spec"), Mapping):
        return ModelSpec.from_dict(dict(contents["spec"]), source=source), []
    raise WeightsError(f"{source} holds no model description (a bare state dict): pass --preset NAME, or --model, "
                       "--backbone and --num-classes to say which architecture the weights are for")  # fmt: skip


def _torchvision_resnet(state, contents, source) -> Description:
    backbone = _resnet(state)
    base = PRESETS.get(f"deeplabv3_{backbone}") or ModelSpec(name="deeplabv3", backbone=backbone, output_stride=8,
                                                              atrous_rates=(12, 24, 36))  # fmt: skip
    aux = any(key.startswith("aux_classifier.") for key in state)
    return base.with_overrides(num_classes=_classes(state, "classifier.4.weight"), aux=aux), _TORCHVISION_ASSUMED


def _torchvision_mobilenet(state, contents, source) -> Description:
    aux = any(key.startswith("aux_classifier.") for key in state)
    preset = PRESETS["deeplabv3_mobilenet_v3_large"]
    return preset.with_overrides(num_classes=_classes(state, "classifier.4.weight"), aux=aux), _TORCHVISION_ASSUMED


def _vainf_deeplabv3(state, contents, source) -> Description:
    stride, assumed = _from_filename(source, r"_os(8|16)\b"), []
    if stride is None:
        stride = "16"
        assumed.append(("output_stride", "output stride 16, VainF's default (its file names say _os8 or _os16)"))
    backbone = "mobilenet_v2_vainf" if "backbone.low_level_features.0.0.weight" in state else _resnet(state)
    spec = ModelSpec(name="deeplabv3", backbone=backbone, output_stride=int(stride),
                     num_classes=_classes(state, "classifier.classifier.4.weight"))  # fmt: skip
    return spec, assumed  # VainF's rates are atrous's defaults: (6, 12, 18) at OS16, doubled at OS8


def _vainf_deeplabv3plus(state, contents, source) -> Description:
    spec, assumed = _vainf_deeplabv3(
        {**state, "classifier.classifier.4.weight": state["classifier.classifier.3.weight"]}, contents, source
    )
    separable = "classifier.classifier.0.body.0.weight" in state  # its --separable_conv
    return dataclasses.replace(spec, name="deeplabv3plus_vainf", separable=separable), assumed


def _deeplabv2(state, contents, source) -> Description:
    found = {m[1] for key in state if (m := re.match(r"(?:Scale\.)?(layer[56])\.conv2d_list\.0\.weight", key))}
    if not found:
        raise WeightsError(f"{source}: DeepLab-v2's ImageNet init file (no classifier): pass it as "
                           "pretrained_backbone, e.g. build_model('deeplabv2', num_classes=N, pretrained_backbone=path)")  # fmt: skip
    prefix = "Scale." if any(key.startswith("Scale.") for key in state) else ""
    main = max(found)  # the port's multi-level model: layer5 reads layer3 (the aux head), layer6 layer4
    classes = _classes(state, f"{prefix}{main}.conv2d_list.0.weight")
    return PRESETS["deeplabv2_resnet101_caffe"].with_overrides(num_classes=classes, aux=len(found) == 2), []


def _kazuto_deeplabv2(state, contents, source) -> Description:
    prefix = "base." if any(key.startswith("base.") for key in state) else ""
    rates = sorted(int(m[1]) for key in state if (m := re.match(rf"{re.escape(prefix)}aspp\.c(\d)\.weight$", key)))
    classes = _classes(state, f"{prefix}aspp.c0.weight")
    guess = (f"rates (6, 12, 18, 24) of DeepLabV2 (DeepLabV2S uses (3, 6, 9, 12)); the file does not record them "
             f"({len(rates)} branches)")  # fmt: skip
    return PRESETS["deeplabv2_resnet101_caffe"].with_overrides(num_classes=classes), [("atrous_rates", guess)]


def _kazuto_deeplabv3(state, contents, source) -> Description:
    """Its DeepLabV3 / V3+ (published without weights): the Caffe ResNet-101; its factories build output stride 16
    with multi-grid (1, 2, 4) on the last stage, neither recorded in the file."""
    prefix = "base." if any(key.startswith("base.") for key in state) else ""
    plus = f"{prefix}reduce.conv.weight" in state
    classifier = f"{prefix}fc2.conv3.weight" if plus else f"{prefix}fc2.weight"
    spec = ModelSpec(name="deeplabv3plus" if plus else "deeplabv3_kazuto", backbone="resnet101_caffe", output_stride=16,
                     multi_grid=(1, 2, 4), num_classes=_classes(state, classifier))  # fmt: skip
    return spec, [("output_stride", "output stride 16 and multi-grid (1, 2, 4), its factories' (the file records neither)")]


def _jfzhang95(state, contents, source) -> Description:
    """jfzhang95's DeepLabV3+ on ResNet-101: every block of a dilated stage dilated, multi-grid (1, 2, 4) on layer4,
    align_corners=True; its README models ran at output stride 16 (not recorded in the file)."""
    spec = ModelSpec(name="deeplabv3plus", backbone=_resnet(state), output_stride=16, multi_grid=(1, 2, 4),
                     first_block_dilation="stage", align_corners=True,
                     num_classes=_classes(state, "decoder.last_conv.8.weight"))  # fmt: skip
    return spec, [("output_stride", "output stride 16, its released models' (the file does not record it)")]


def _smp(state, contents, source) -> Description:
    """segmentation_models_pytorch: its config.json (``save_pretrained`` folders) says everything; a bare state dict
    leaves its defaults to assume. Its ResNet encoder dilates every block of a dilated stage, and it upsamples with
    align_corners=True."""
    plus = "decoder.block1.0.weight" in state
    config = contents.get("smp_config") or {} if isinstance(contents, Mapping) else {}
    aspp = "decoder.aspp.0." if plus else "decoder.aspp."
    separable = f"{aspp}convs.1.0.0.weight" in state
    if separable and not plus:
        raise WeightsError(f"{source}: smp DeepLabV3 with decoder_aspp_separable=True does not read yet (its "
                           "DeepLabV3+ does)")  # fmt: skip
    assumed = []
    stride = config.get("encoder_output_stride")
    if stride is None:
        stride = 16 if plus else 8
        assumed.append(("output_stride", f"output stride {stride}, smp's default (its config.json records it)"))
    rates = tuple(config.get("decoder_atrous_rates") or (12, 24, 36))
    if "decoder_atrous_rates" not in config:
        assumed.append(("atrous_rates", "rates (12, 24, 36), smp's default (its config.json records them)"))
    spec = ModelSpec(
        name="deeplabv3plus_smp" if plus else "deeplabv3", backbone=_resnet(state, "encoder."), output_stride=stride,
        num_classes=_classes(state, "segmentation_head.0.weight"), atrous_rates=rates, separable=separable,
        first_block_dilation="stage", align_corners=True,
    )  # fmt: skip
    return spec, assumed


def _mmseg_meta(contents) -> dict:
    meta = contents.get("meta") if isinstance(contents, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _mmseg(state, contents, source) -> Description:
    """mmsegmentation: its files carry their config text (``meta["cfg"]`` in 1.x runs, ``meta["config"]`` in 0.x):
    the backbone strides give the output stride, the decode head's dilations the rates."""
    text = _mmseg_meta(contents).get("cfg") or _mmseg_meta(contents).get("config") or ""
    if "multi_grid" in text:
        raise WeightsError(f"{source}: mmsegmentation's multi-grid (layer4 dilations set, not multiplied) does not read yet")
    tuples = [tuple(int(v) for v in found.split(",") if v.strip()) for found in re.findall(r"\(([\d,\s]+)\)", text)]
    assumed = []
    strides = next((t for t in re.findall(r"strides=\(([\d,\s]+)\)", text)), None)
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
    spec = ModelSpec(
        name="deeplabv3plus_mmseg" if "decode_head.c1_bottleneck.conv.weight" in state else "deeplabv3_mmseg",
        backbone=f"{_resnet(state)}_v1c", output_stride=stride, atrous_rates=rates,
        num_classes=_classes(state, "decode_head.conv_seg.weight"),
        aux=any(key.startswith("auxiliary_head.") for key in state),
    )  # fmt: skip
    return spec, assumed


def _labels_in(contents) -> tuple[list | None, list | None]:
    """Class names and palette a file carries: atrous's keys, or mmseg's meta (CLASSES/PALETTE, or dataset_meta)."""
    if not isinstance(contents, Mapping):
        return None, None
    if contents.get("class_names") is not None:
        return contents.get("class_names"), contents.get("palette")
    meta = _mmseg_meta(contents)
    dataset = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    names = meta.get("CLASSES") or dataset.get("classes")
    palette = meta.get("PALETTE") or dataset.get("palette")
    return (list(names) if names is not None else None), palette


DESCRIBE: dict[str, Callable[..., Description]] = {
    "atrous": _atrous,
    "torchvision_deeplabv3_resnet": _torchvision_resnet,
    "torchvision_deeplabv3_mobilenet_v3_large": _torchvision_mobilenet,
    "vainf_deeplabv3": _vainf_deeplabv3,
    "vainf_deeplabv3plus": _vainf_deeplabv3plus,
    "deeplabv2_caffe": _deeplabv2,
    "deeplabv2_port": _deeplabv2,
    "kazuto_deeplabv2": _kazuto_deeplabv2,
    "kazuto_deeplabv3": _kazuto_deeplabv3,
    "kazuto_deeplabv3plus": _kazuto_deeplabv3,
    "jfzhang95_deeplabv3plus": _jfzhang95,
    "smp_deeplabv3": _smp,
    "mmseg_deeplabv3": _mmseg,
    "mmseg_deeplabv3plus": _mmseg,
    "smp_deeplabv3plus": _smp,
}


def _read_folder(folder: Path) -> tuple[dict, list[str]]:
    """An smp ``save_pretrained`` folder: ``model.safetensors`` (or ``pytorch_model.bin``) beside ``config.json``."""
    import json

    weights = next((folder / name for name in ("model.safetensors", "pytorch_model.bin") if (folder / name).is_file()), None)
    if weights is None:
        raise WeightsError(f"{folder}: a folder needs model.safetensors (or pytorch_model.bin), as save_pretrained "
                           "writes it")  # fmt: skip
    tensors, inert = read_weights_file(weights)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return {"state_dict": unwrap_state_dict(tensors, source=str(weights)), "smp_config": config}, inert


def from_pretrained(source: str | Path | Mapping, *, spec: ModelSpec | None = None, **overrides) -> Segmenter:
    """A model in eval mode with the weights of ``source`` (a zoo name (``atrous models --pretrained``), a weights
    file, an smp ``save_pretrained`` folder, a state dict or a training-run dict),
    built as the file describes itself, with its class names and palette when it has them.

    The architecture is read from the keys, the shapes and any description the file carries, or is ``spec`` when
    given; ``overrides`` are ``ModelSpec`` fields for what a file cannot tell (e.g. ``output_stride=8``; None values
    change nothing). What was recognised and assumed is logged at INFO level with the loading report.
    """
    from .zoo import zoo, zoo_file

    if isinstance(source, str) and source in zoo() and not Path(source).exists():
        entry = zoo()[source]
        model = from_pretrained(zoo_file(entry), spec=spec or entry.spec, **overrides)
        if model.num_classes == entry.spec.num_classes:
            model.set_labels(*entry.class_names_and_palette())
        return model
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        contents, inert = _read_folder(Path(source))
    else:
        contents, inert = read_weights_file(source) if isinstance(source, (str, Path)) else (source, [])
    assumed: list[tuple[str, str]] = []
    fmt = "the given spec"
    if spec is None:
        fmt = detect_format(unwrap_state_dict(contents, source=name), source=name)
        if fmt not in DESCRIBE:
            raise WeightsError(f"{name}: {fmt} weights hold a backbone only, not a segmentation model: pass the file "
                               "as build_model(..., pretrained_backbone=path)")  # fmt: skip
        spec, assumed = DESCRIBE[fmt](unwrap_state_dict(contents, source=name), contents, name)
    model = build_model(spec.with_overrides(**overrides))
    report = load_weights(model, contents, name=name, inert=inert)
    report.messages.append(f"architecture from {fmt}: {model.spec}")
    report.messages += [f"assumed {text}; pass {field}=... if it was trained otherwise" for field, text in assumed
                        if overrides.get(field) is None]  # fmt: skip
    log.info("%s", report)
    names, palette = _labels_in(contents)
    if names is not None and len(names) != model.num_classes:
        names = None  # the classifier was replaced: the file's names describe other classes
    if palette is not None and len(palette) < model.num_classes:
        palette = None
    model.set_labels(names, np.asarray(palette, dtype=np.uint8) if palette is not None else None)
    return model.eval()
