"""``build_model``: a DeepLab model from a ``ModelSpec`` (or its fields), its starting weights loaded when the spec
names them. The network comes from ``atrous.registry.build_network``; the weights through ``atrous.weights.load``."""

from __future__ import annotations

import logging

from .models.segmenter import Segmenter
from .models.spec import ModelSpec
from .registry import build_network, make_spec
from .weights.load import load_pretrained_backbone, load_weights

log = logging.getLogger(__name__)


def build_model(spec: ModelSpec | str | None = None, /, **fields) -> Segmenter:
    """Build a DeepLab model from a ``ModelSpec``, or from its fields.

        build_model("deeplabv3plus", backbone="resnet18", num_classes=7)
        build_model(PRESETS["deeplabv3_resnet50"], num_classes=19)

    The fields and their defaults are ``ModelSpec``'s. The returned model's ``spec`` is the architecture with
    every default written in and the init fields (``pretrained_backbone``, ``weights``) cleared.
    """
    spec = make_spec(spec, **fields)
    model = build_network(spec)
    if spec.pretrained_backbone is not None:
        log.info("%s", load_pretrained_backbone(model, spec.pretrained_backbone))
    if spec.weights is not None:
        log.info("%s", load_weights(model, spec.weights))
    return model
