"""Bare ImageNet backbone files, in the layouts the backbone registry declares (``BackboneEntry.imagenet_format``):
they fill the backbone only, and describe no segmentation model."""

from __future__ import annotations

from collections.abc import Mapping

from ..models.backbones.base import BackboneEntry
from .format import Format

BACKBONE_SCOPE = "backbone."


def formats(backbones: Mapping[str, BackboneEntry]) -> list[Format]:
    """One format per ImageNet key layout the ``backbones`` declare."""
    found = {}
    for entry in backbones.values():
        layout = entry.imagenet_format
        if layout is not None and layout.name not in found:
            found[layout.name] = Format(
                layout.name, lambda state, source, layout=layout: layout.recognise(state),
                lambda state, model, layout=layout: ({f"{BACKBONE_SCOPE}{k}": v for k, v in layout.translate(state).items()},
                                                     BACKBONE_SCOPE),
                describe=None, normalization=entry.normalization,
            )  # fmt: skip
    return list(found.values())
