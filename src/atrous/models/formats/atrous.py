"""atrous's own files: keys as the model's, the spec beside them (``checkpoint.model_checkpoint``)."""

from __future__ import annotations

from collections.abc import Mapping

from ...errors import WeightsError
from ..spec import ModelSpec
from . import Format


def _recognise(state, source) -> bool:
    keys = list(state)
    return any(key.startswith(("head.", "aux_head.")) for key in keys) or all(key.startswith("backbone.") for key in keys)


def _describe(state, contents, source):
    spec = contents.get("spec") if isinstance(contents, Mapping) else None
    if isinstance(spec, Mapping):
        return ModelSpec.from_dict(dict(spec), source=source), []
    if spec is not None:  # written by hand or by another tool: say what is there rather than "no description"
        raise WeightsError(f"{source}: its 'spec' is {type(spec).__name__} {str(spec)[:60]!r}, not the mapping of "
                           "ModelSpec fields atrous writes: pass --preset NAME, or --model, --backbone and "
                           "--num-classes to say which architecture the weights are for")  # fmt: skip
    raise WeightsError(f"{source} holds no model description (a bare state dict): pass --preset NAME, or --model, "
                       "--backbone and --num-classes to say which architecture the weights are for")  # fmt: skip


def _translate(state, model):
    return dict(state), ""


FORMATS = [Format("atrous", _recognise, _translate, _describe)]
