"""atrous's own files: keys as the model's, the spec beside them (``checkpoint.model_checkpoint``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..models.spec import ModelSpec
from .format import Format, Undescribed


def _recognise(state, source) -> bool:
    keys = list(state)
    return any(key.startswith(("head.", "aux_head.")) for key in keys) or all(key.startswith("backbone.") for key in keys)


def _describe(state, contents, source):
    spec = contents.get("spec") if isinstance(contents, Mapping) else None
    if isinstance(spec, Mapping):
        # The architecture only: where starting weights come from (pretrained_backbone, weights) is a choice made
        # when a model is built for training, never taken from a file (it would have this one download or open
        # whatever its author named). atrous writes them cleared; a file that has them was written otherwise.
        return ModelSpec.from_dict(dict(spec), source=source).architecture(), []
    if spec is not None:  # written by hand or by another tool: say what is there rather than "no description"
        raise Undescribed(f"{source}: its 'spec' is {type(spec).__name__} {str(spec)[:60]!r}, not the mapping of "
                          "ModelSpec fields atrous writes: pass --preset NAME, or --model, --backbone and "
                          "--num-classes to say which architecture the weights are for")  # fmt: skip
    raise Undescribed(f"{source} holds no model description (a bare state dict): pass --preset NAME, or --model, "
                      "--backbone and --num-classes to say which architecture the weights are for")  # fmt: skip


def _translate(state, model):
    backbone_only = all(key.startswith("backbone.") for key in state)  # a backbone file fills the backbone alone
    return dict(state), "backbone." if backbone_only else ""


# Trained at one output stride, a DeepLab runs at another with its rates scaled (the papers train at 16 and evaluate
# at 8): the command line's --output-stride and --atrous-rates change an atrous checkpoint's on purpose.
FORMATS = [Format("atrous", _recognise, _translate, _describe, free_fields=("output_stride", "atrous_rates"))]
