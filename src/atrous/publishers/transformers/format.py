"""transformers' semantic segmentation files (``save_pretrained`` folders and Hub repositories: ``model.safetensors``
or ``pytorch_model.bin`` beside ``config.json``): each model type's keys recognised, described from its config.json
(or, for a bare state dict, its keys with what they cannot say assumed), renamed to atrous's. The labels are the
config's ``id2label``."""

from __future__ import annotations

from collections.abc import Mapping

from ...data.labels import voc_palette
from ...errors import WeightsError
from ...weights.format import Format
from . import mobilenet_v2, mobilevit
from .layers import HF_BGR_UNIT

# Each model type's module: recognise(state), describe(state, config, source), translate(state), set_aside(state).
_MODELS = {"mobilenet_v2": mobilenet_v2, "mobilevit": mobilevit.V1, "mobilevitv2": mobilevit.V2}


def _config(contents) -> Mapping:
    config = contents.get("config") if isinstance(contents, Mapping) else None
    return config if isinstance(config, Mapping) else {}


def _model(state):
    return next((module for module in _MODELS.values() if module.recognise(state)), None)


def _labels(contents):
    """The names config.json's ``id2label`` gives, in channel order (VOC's colours for VOC's 21)."""
    names = _config(contents).get("id2label")
    if not isinstance(names, Mapping):
        return None, None
    try:
        ordered = [names[key] for key in sorted(names, key=int)]
    except (TypeError, ValueError):
        return None, None
    if sorted(int(key) for key in names) != list(range(len(names))):
        return None, None
    return ordered, voc_palette() if len(ordered) == 21 else None


def _describe(state, contents, source):
    model = _model(state)
    config = _config(contents)
    declared = config.get("model_type")
    if declared is not None and _MODELS.get(declared) is not model:
        raise WeightsError(f"{source}: config.json says model_type {declared!r}, but the weights are another model's")
    return model.describe(state, config, source)


def _set_aside(state):
    return _model(state).set_aside(state)


def _translate(state, model):
    return _model(state).translate(state), ""


def _recognise(state, source) -> bool:
    return _model(state) is not None


FORMATS = [
    Format("transformers_mobilenet_v2", lambda state, source: mobilenet_v2.recognise(state), _translate, _describe,
           labels=_labels, aside=_set_aside, free_fields=("output_stride",)),
    Format("transformers_mobilevit", lambda state, source: mobilevit.V1.recognise(state) or mobilevit.V2.recognise(state),
           _translate, _describe, HF_BGR_UNIT, labels=_labels, aside=_set_aside, free_fields=("output_stride",)),
]  # fmt: skip
