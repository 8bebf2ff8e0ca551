"""``from_pretrained``: a model built from what a weights file says about itself (each format's ``describe``, in
``atrous.models.formats``), with the weights loaded and the labels the file carries."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import verify_checksum
from ..errors import WeightsError
from . import build_model
from .formats import find
from .segmenter import Segmenter
from .spec import ModelSpec
from .weights import detect_format, load_weights, read_weights_file, unwrap_state_dict
from .zoo import zoo, zoo_file

log = logging.getLogger(__name__)


def _labels_in(contents, fmt) -> tuple[list | None, list | None]:
    """Class names and palette a file carries: atrous's keys, or what its format reads from it (mmseg's meta)."""
    if not isinstance(contents, Mapping):
        return None, None
    if contents.get("class_names") is not None:
        return contents.get("class_names"), contents.get("palette")
    return fmt.labels(contents) if fmt is not None and fmt.labels is not None else (None, None)


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


def _other_classes_asked(name: str, theirs: int, asked: int, *, weights: str | Path) -> str:
    return (
        f"{name}'s classifier predicts {theirs} classes; {asked} were asked (num_classes={asked}, --num-classes "
        f"{asked}): drop num_classes to use it as trained, or fine-tune it with model.weights={weights}"
    )


def from_pretrained(
    source: str | Path | Mapping, *, spec: ModelSpec | None = None, new_classifier_ok: bool = False, **overrides
) -> Segmenter:
    """A model in eval mode with the weights of ``source`` (a zoo name (``atrous models --pretrained``), a weights
    file, an smp ``save_pretrained`` folder, a state dict or a training-run dict),
    built as the file describes itself, with its class names and palette when it has them.

    The architecture is read from the keys, the shapes and any description the file carries, or is ``spec`` when
    given; ``overrides`` are ``ModelSpec`` fields for what a file cannot tell (e.g. ``output_stride=8``; None values
    change nothing). What was recognised and assumed is logged at INFO level with the loading report.
    new_classifier_ok: False (the model predicts as the file trained it) raises ``WeightsError`` when the file's
    classifier has another class count than the model's, or the file has none; True starts the model from the file
    with a fresh classifier, for fine-tuning (see ``load_weights``).
    """
    asked = overrides.get("num_classes")
    if isinstance(source, str) and source in zoo() and not Path(source).exists():
        entry = zoo()[source]
        if entry.kind == "backbone_init":
            raise WeightsError(f"{source} is the ImageNet init of the {entry.spec.backbone} backbone, not a segmentation "
                               f"model: build_model({entry.spec.name!r}, pretrained_backbone={source!r}, num_classes=N)")  # fmt: skip
        if not new_classifier_ok and spec is None and asked not in (None, entry.spec.num_classes):
            # Said before the download: the file would not be usable as asked anyway.
            cached = Path(torch.hub.get_dir()) / "checkpoints" / entry.filename  # where zoo_file puts it
            raise WeightsError(_other_classes_asked(source, entry.spec.num_classes, asked,
                                                    weights=f"{cached} (the zoo's download of it)"))  # fmt: skip
        model = from_pretrained(zoo_file(entry), spec=spec or entry.spec, new_classifier_ok=new_classifier_ok,
                                **overrides)  # fmt: skip
        if model.num_classes == entry.spec.num_classes:
            model.set_labels(*entry.class_names_and_palette())
        return model
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        contents, inert = _read_folder(Path(source))
    else:
        contents, inert = read_weights_file(source) if isinstance(source, (str, Path)) else (source, [])
    if isinstance(contents, Mapping):
        verify_checksum(contents, name)
    assumed: list[tuple[str, str]] = []
    state = unwrap_state_dict(contents, source=name)
    fmt = find(detect_format(state, source=name))
    described = "the given spec"
    if spec is None:
        if fmt.describe is None:
            raise WeightsError(f"{name}: {fmt.name} weights hold a backbone only, not a segmentation model: pass the "
                               "file as build_model(..., pretrained_backbone=path)")  # fmt: skip
        spec, assumed = fmt.describe(state, contents, name)
        described = fmt.name
        if not new_classifier_ok and asked not in (None, spec.num_classes):
            raise WeightsError(_other_classes_asked(name, spec.num_classes, asked, weights=name))
    model = build_model(spec.with_overrides(**overrides))
    report = load_weights(model, state, name=name, inert=inert, new_classifier_ok=new_classifier_ok)
    report.messages.append(f"architecture from {described}: {model.spec}")
    report.messages += [f"assumed {text}; pass {field}=... if it was trained otherwise" for field, text in assumed
                        if overrides.get(field) is None]  # fmt: skip
    log.info("%s", report)
    names, palette = _labels_in(contents, fmt)
    if names is not None and len(names) != model.num_classes:
        names = None  # the classifier was replaced: the file's names describe other classes
    if palette is not None and len(palette) < model.num_classes:
        palette = None
    model.set_labels(names, np.asarray(palette, dtype=np.uint8) if palette is not None else None)
    return model.eval()
