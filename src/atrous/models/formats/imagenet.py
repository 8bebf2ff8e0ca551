"""Bare ImageNet backbone files, in the layouts the backbone registry declares (``BackboneEntry.imagenet_format``):
they fill the backbone only, and describe no segmentation model."""

from __future__ import annotations

from . import Format

BACKBONE_SCOPE = "backbone."


def formats() -> list[Format]:
    from ..backbones import BACKBONES

    found = {}
    for entry in BACKBONES.values():
        layout = entry.imagenet_format
        if layout is not None and layout.name not in found:
            found[layout.name] = Format(
                layout.name, lambda state, source, layout=layout: layout.recognise(state),
                lambda state, model, layout=layout: ({f"{BACKBONE_SCOPE}{k}": v for k, v in layout.translate(state).items()},
                                                     BACKBONE_SCOPE),
                describe=None, normalization=entry.normalization,
            )  # fmt: skip
    return list(found.values())
